//! kruntimes engine: the planner, the scheduler core, the embedded driver,
//! the Kubernetes controller and the `krt` CLI.

pub mod cli;
pub mod cluster;
pub mod embedded;
pub mod plan;
pub mod scheduler;
