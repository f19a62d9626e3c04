//! One integration-test binary: every test runs the real `exec-allinone` on loopback, port 0.

mod support;

mod alerts;
mod cli;
mod cloud;
mod dav_client;
mod excp;
mod exrp;
mod hostile;
mod lb;
mod lb_parity;
mod s3;
mod status_page;
mod webdav;
mod webdav_protocol;
mod webdav_s3;
