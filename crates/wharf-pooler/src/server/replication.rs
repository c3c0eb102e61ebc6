//! A replication connection (`replication=true` or `database`): a server
//! of the client's pool made over into a walsender for that one client, as
//! PgBouncer 1.23 does. It keeps the pool place it was handed out with, so
//! replication clients count against the pool's limits and wait in its
//! queue, and it is closed, never pooled, when the client leaves.

use std::sync::Arc;

use super::login::open_stream;
use super::{ServerConn, ServerError, ServerParams};
use crate::cancel::ServerCancels;
use crate::prepared::ServerStatements;
use crate::proto::{CancelKey, Replication};

/// How long the session being replaced gets to take its Terminate.
const GOODBYE: std::time::Duration = std::time::Duration::from_secs(2);

impl ServerConn {
    /// Logs in anew on the same host as a `mode` replication connection,
    /// with the client's own startup parameters (`client_params`, which
    /// may hold `options`) after the target's, and ends the regular
    /// session it had. From now on it is broken for the pool: it closes
    /// when released. A server that refuses the login (no `replication`
    /// line in pg_hba.conf, a role without REPLICATION) fails it with the
    /// server's own error.
    pub async fn start_replication(
        &mut self,
        mode: Replication,
        client_params: &[(String, String)],
    ) -> Result<(), ServerError> {
        self.broken = true;
        let Some(value) = mode.param_value() else {
            return Ok(());
        };
        let fresh = open_stream(&self.target, &self.host).await?;
        if let Some(mut old) = self.stream.replace(fresh) {
            let _ = tokio::time::timeout(GOODBYE, old.write_all(&[b'X', 0, 0, 0, 4])).await;
        }
        self.rbuf.clear();
        self.params = ServerParams::default();
        self.statements = ServerStatements::default();
        self.key = CancelKey { pid: 0, secret: 0 };
        self.cancels = Arc::new(ServerCancels::new(
            self.host.clone(),
            self.target.tls.clone(),
        ));
        let mut extra: Vec<(&str, &str)> = client_params
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "user" | "database" | "replication"))
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        extra.push(("replication", value));
        self.log_in(&extra).await?;
        self.entry
            .as_ref()
            .expect(super::conn::OPEN)
            .entry
            .set_replication(mode);
        Ok(())
    }

    /// The bytes the server sent after its login and nobody read yet.
    pub fn take_unread(&mut self) -> bytes::BytesMut {
        self.rbuf.split()
    }
}
