//! Embedded mode: `krt run` on one machine. The driver runs the shared
//! scheduler core with the in-process executor; jobs are served from the
//! step cache when their action is unchanged; every run is recorded for
//! `krt runs`, `krt logs`, `krt explain` and `krt replay`.

pub mod cache;
pub mod driver;
pub mod explain;
pub mod record;
pub mod replay;
pub mod source;

pub use driver::{EngineError, NodeReport, RunOptions, RunReport, Ui, run};
