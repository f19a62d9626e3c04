//! The S3 API as the webdav role will store recordings in it (issue 22): request signing
//! (`sigv4`) first; the client and the store over it follow.

pub mod sigv4;
