//! The step catalog: reusable, versioned step templates that a workflow names
//! with `uses: cargo-test@v1` and fills with `with: {...}`.
//!
//! ```text
//!  uses: NAME@vN ──resolve──> built-in catalog/NAME/vN.yaml   (embedded in krt)
//!                             $KRT_CATALOG_PATH/NAME/vN.yaml   (each directory in turn)
//!  uses: ./x.yaml ──────────> the file, relative to the workflow file
//!                                 │
//!                        read + check the entry (diagnostics in its own file)
//!                                 │
//!  parse ──expand──> the entry's steps, each with an origin: `from` (NAME@VERSION)
//!                    and `with` (every parameter, given or defaulted)
//! ```
//!
//! Expansion happens while the workflow is read, so validation, `krt graph`,
//! the cache key and replay all see ordinary steps. A step's templates read
//! the parameters as `with.<name>`; they are rendered at ready time like any
//! other template, so a value is passed to the shell in a variable and never
//! becomes code. `WorkflowAst::to_spec` writes expanded steps with `from:` and
//! `with:`, which re-plan to the same steps without the catalog: the
//! controller never resolves `uses:`.

pub mod builtin;
pub mod entry;
pub mod resolve;
pub mod show;
mod uses;

#[cfg(test)]
mod tests;

pub use entry::{Entry, EntryParam};
pub use resolve::{Reference, ResolveError, Resolver};
