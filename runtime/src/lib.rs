//! kruntimes runtime: the warm executor, its HTTP server and the
//! content-addressed store (CAS) client used by the engine and by runtime
//! pods. This milestone holds the digest helpers every other part shares.

pub mod digest;
