//! A minimal tokio-postgres manager, shared by the example and the
//! PostgreSQL integration tests. The full adapter (TLS, transactions,
//! statement cache) is the `wharf-postgres` crate's job.

use tokio_postgres::{Client, Config, NoTls};

/// Opens plain-TCP tokio-postgres clients.
pub struct PgManager {
    pub config: Config,
}

impl PgManager {
    pub fn new(url: &str) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            config: url.parse()?,
        })
    }
}

impl wharf::Manager for PgManager {
    type Connection = Client;
    type Error = tokio_postgres::Error;

    async fn connect(&self) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(NoTls).await?;
        // tokio-postgres splits a connection into the client and the socket
        // driver; the driver must run for the client to work.
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "postgres connection ended");
            }
        });
        Ok(client)
    }

    async fn check(&self, client: &mut Client) -> Result<(), tokio_postgres::Error> {
        client.simple_query("").await.map(drop)
    }

    fn has_broken(&self, client: &mut Client) -> bool {
        client.is_closed()
    }
}
