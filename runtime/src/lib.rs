//! kruntimes runtime: the content-addressed store (CAS), the warm executor
//! that runs a job's steps, and the HTTP server (`krt runtime serve`) that
//! puts the executor in a Pod.

pub mod cas;
pub mod digest;
pub mod exec;
pub mod server;

pub use digest::Digest;
