//! TEMP STUB (replaced by the real module)
pub mod basic;
pub mod command;
pub mod htpasswd;
