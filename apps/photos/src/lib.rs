//! Photos: the seed article's upload pipeline as a real service on oxwork (the binary in
//! `main.rs` declares its workers). The library holds its parts, so that the tests and the
//! benchmark harness run the very code the service runs.

pub mod app;
pub mod imaging;
pub mod job;
pub mod samples;
pub mod store;
pub mod thumbs;
pub mod web;
