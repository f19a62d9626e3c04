//! The S3 API as the webdav role will store recordings in it (issue 22): request signing
//! (`sigv4`) and the object calls a store needs (`client`); the store over them follows.

pub mod client;
pub mod sigv4;
