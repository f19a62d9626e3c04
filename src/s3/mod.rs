//! The S3 API as the webdav role will store recordings in it (issue 22): request signing
//! (`sigv4`), the object calls a store needs (`client`), and the store's promises on a bucket
//! (`store`); the webdav role serving from it follows.

pub mod client;
pub mod records;
pub mod sigv4;
pub mod store;
