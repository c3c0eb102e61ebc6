//! One server connection: opened and logged in ([`login`]), its parameters
//! ([`params`]), what it was opened for ([`target`]), and the narrow API the
//! client side uses while a client holds it ([`ServerConn`]).

mod conn;
mod error;
mod login;
pub mod params;
mod replication;
mod role;
mod target;

pub use conn::ServerConn;
pub use error::ServerError;
pub use params::{ParamSets, Params, ServerParams};
pub use target::{Balance, Role, ServerTarget, SessionAttrs};
