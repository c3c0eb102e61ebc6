//! What every engine benchmark shares: one no-op resource and one manager
//! type implementing wharf's, deadpool's and bb8's traits, so that no pool
//! gets a cheaper (or costlier) resource than the others.

use std::convert::Infallible;

/// What the pools hold. Trivial on purpose: the benchmarks are about the
/// pools' own bookkeeping, so creating, checking and dropping a connection
/// must cost nothing.
#[derive(Debug)]
pub struct Conn(pub u64);

/// The manager of [`Conn`]s for all three pools.
pub struct Noop;

impl wharf::Manager for Noop {
    type Connection = Conn;
    type Error = Infallible;

    async fn connect(&self) -> Result<Conn, Infallible> {
        Ok(Conn(0))
    }

    async fn check(&self, _conn: &mut Conn) -> Result<(), Infallible> {
        Ok(())
    }
}

impl deadpool::managed::Manager for Noop {
    type Type = Conn;
    type Error = Infallible;

    async fn create(&self) -> Result<Conn, Infallible> {
        Ok(Conn(0))
    }

    // deadpool has no switch to skip recycling: it runs on every checkout. An
    // empty body makes it as cheap as the checks the other pools skip.
    async fn recycle(
        &self,
        _conn: &mut Conn,
        _metrics: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<Infallible> {
        Ok(())
    }
}

impl bb8::ManageConnection for Noop {
    type Connection = Conn;
    type Error = Infallible;

    async fn connect(&self) -> Result<Conn, Infallible> {
        Ok(Conn(0))
    }

    async fn is_valid(&self, _conn: &mut Conn) -> Result<(), Infallible> {
        Ok(())
    }

    fn has_broken(&self, _conn: &mut Conn) -> bool {
        false
    }
}
