//! Authentication, both ways: the pooler checks clients' passwords against
//! the auth file (trust, plain, md5, SCRAM-SHA-256), picks the method from
//! the hba rules when `auth_type = hba`, and logs in to servers with the
//! configured password (cleartext, md5, SCRAM-SHA-256) or, for SCRAM
//! secrets, with the key a client's SCRAM login revealed.

mod client;
mod hba;
mod passthrough;
mod secrets;
mod server;

pub use client::{authenticate_client, ClientAuthError};
pub use hba::{find_rule, os_user_name, ClientOrigin, HbaClient};
pub use passthrough::ClientKey;
pub use server::{ServerAuth, ServerAuthError, ServerLogin};
