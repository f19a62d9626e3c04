//! HTTP authentication for the WebDAV role: Apache `htpasswd` files, HTTP Basic, and the
//! `htpasswd` subcommand.

pub mod basic;
pub mod command;
pub mod htpasswd;

pub use basic::{AuthFailure, BasicAuth};
pub use htpasswd::{PasswordFile, Scheme};
