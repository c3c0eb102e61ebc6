//! Unix signals, as in PgBouncer 1.23 and later:
//!
//! | signal  | effect                                              |
//! |---------|-----------------------------------------------------|
//! | SIGHUP  | RELOAD                                              |
//! | SIGTERM | SHUTDOWN WAIT_FOR_CLIENTS (again: immediate)        |
//! | SIGINT  | SHUTDOWN WAIT_FOR_SERVERS (again: immediate)        |
//! | SIGQUIT | immediate shutdown                                  |
//! | SIGUSR1 | PAUSE                                               |
//! | SIGUSR2 | RESUME                                              |

use std::sync::Weak;

use crate::lifecycle::ShutdownMode;
use crate::state::PoolerState;

/// The signal handlers, installed: from then on the signals no longer
/// have their default effect (SIGTERM no longer kills the process), so a
/// service manager told "ready" after this can signal at once.
pub struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers. Must run inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// A handler cannot be installed.
    pub fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
            usr1: signal(SignalKind::user_defined1())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }

    /// Turns the signals into RELOAD, SHUTDOWN, PAUSE and RESUME (see the
    /// module documentation) until the pooler is gone.
    pub async fn handle(self, state: Weak<PoolerState>) {
        let Signals {
            mut hup,
            mut term,
            mut int,
            mut quit,
            mut usr1,
            mut usr2,
        } = self;
        enum Got {
            Hup,
            Term,
            Int,
            Quit,
            Usr1,
            Usr2,
        }
        loop {
            let got = tokio::select! {
                _ = hup.recv() => Got::Hup,
                _ = term.recv() => Got::Term,
                _ = int.recv() => Got::Int,
                _ = quit.recv() => Got::Quit,
                _ = usr1.recv() => Got::Usr1,
                _ = usr2.recv() => Got::Usr2,
            };
            let Some(state) = state.upgrade() else {
                return;
            };
            let lifecycle = state.lifecycle();
            // A second SIGTERM or SIGINT means "now", as in PgBouncer.
            let graceful = |mode| {
                if lifecycle.is_shutting_down() {
                    ShutdownMode::Immediate
                } else {
                    mode
                }
            };
            match got {
                Got::Hup => {
                    tracing::info!("got SIGHUP: reloading the configuration");
                    let _ = state.reload().await;
                }
                Got::Term => {
                    tracing::info!("got SIGTERM: shutting down after the last client");
                    state.shutdown(graceful(ShutdownMode::WaitForClients));
                }
                Got::Int => {
                    tracing::info!("got SIGINT: shutting down once servers are released");
                    state.shutdown(graceful(ShutdownMode::WaitForServers));
                }
                Got::Quit => {
                    tracing::info!("got SIGQUIT: shutting down now");
                    state.shutdown(ShutdownMode::Immediate);
                }
                Got::Usr1 => {
                    tracing::info!("got SIGUSR1: pausing");
                    // PAUSE returns once every server is released: meanwhile
                    // the other signals (RESUME, SHUTDOWN) must still work.
                    let state = state.clone();
                    tokio::spawn(async move { state.router().pause(None).await });
                }
                Got::Usr2 => {
                    tracing::info!("got SIGUSR2: resuming");
                    state.router().resume(None);
                }
            }
        }
    }
}

/// Turns Unix signals into RELOAD, SHUTDOWN, PAUSE and RESUME (see the
/// module documentation) until the pooler is gone. Fails only if the
/// signal handlers cannot be installed.
pub async fn handle_signals(state: Weak<PoolerState>) -> std::io::Result<()> {
    Signals::install()?.handle(state).await;
    Ok(())
}
