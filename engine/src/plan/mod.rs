//! The planner: workflow file text -> validated, expanded DAG.
//!
//! ```text
//!  text ──yaml::load──> located tree ──parse──> WorkflowAst ──validate──> diagnostics
//!                                      │              │
//!                 `uses:` ──catalog────┘              └─expand──> Plan (jobs, nodes by level)
//!  Plan + context (params, needs' outputs) ──render──> rendered steps, at ready time
//! ```
//!
//! Pure and synchronous: no async, and no I/O beyond what the caller read
//! except catalog entries a `uses:` names outside the binary (`catalog`
//! resolver), so a 10,000-job workflow plans without a runtime.

pub mod ast;
pub mod catalog;
pub mod dag;
pub mod diag;
pub mod expand;
pub mod model;
pub mod parse;
pub mod render;
pub mod shell;
pub mod template;
pub mod validate;
pub mod yaml;

#[cfg(test)]
mod tests;

pub use diag::{Diagnostic, Diagnostics, Severity, Source, Span};
pub use model::{Job, JobId, Node, NodeId, Plan};

use diag::Severity as Sev;

/// Plans a workflow from its text. `name` is what diagnostics call the file;
/// its stem names the workflow when the file does not. `uses:` resolves to
/// built-in catalog entries only (see [`plan_str_with`]).
pub fn plan_str(name: &str, text: &str) -> Result<Plan, Diagnostics> {
    plan_str_with(name, text, &catalog::Resolver::builtin())
}

/// Plans a workflow from its text, resolving `uses:` with `catalog`.
pub fn plan_str_with(
    name: &str,
    text: &str,
    catalog: &catalog::Resolver,
) -> Result<Plan, Diagnostics> {
    let source = Source::new(name, text);
    let (root, mut diags) = match yaml::load(text) {
        Ok(x) => x,
        Err(fatal) => return Err(Diagnostics::new(source, vec![fatal])),
    };
    let stem = std::path::Path::new(name)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("workflow");
    let default_name = validate::to_dns_label(stem);
    let default_name = if default_name.is_empty() {
        "workflow".to_string()
    } else {
        default_name
    };
    let ast = parse::Reader {
        diags: &mut diags,
        catalog: Some(catalog),
        file: None,
    }
    .workflow(&root, &default_name);
    let mut v = validate::Validator::new(&source, &ast);
    v.run();
    let needs = std::mem::take(&mut v.needs);
    diags.extend(v.diags);
    let has_errors = |d: &[Diagnostic]| d.iter().any(|d| d.severity == Sev::Error);
    if has_errors(&diags) {
        return Err(Diagnostics::new(source, diags));
    }
    let (jobs, nodes, critical_path) = expand::expand(&ast, &needs, &mut diags);
    if has_errors(&diags) {
        return Err(Diagnostics::new(source.clone(), diags));
    }
    let warnings = Diagnostics::new(source.clone(), diags).items;
    Ok(Plan {
        name: ast.name.clone(),
        source,
        ast,
        jobs,
        nodes,
        critical_path,
        warnings,
    })
}

/// Reads and plans a workflow file. A file that cannot be read is reported
/// as a diagnostic on that file. `uses:` resolves to built-in entries, then
/// `$KRT_CATALOG_PATH`, then paths relative to the file's directory.
pub fn plan_file(path: &std::path::Path) -> Result<Plan, Diagnostics> {
    let name = path.display().to_string();
    let base = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                p
            }
        })
        .map(std::path::Path::to_path_buf);
    match std::fs::read_to_string(path) {
        Ok(text) => plan_str_with(&name, &text, &catalog::Resolver::from_env(base)),
        Err(e) => Err(Diagnostics::new(
            Source::new(name, ""),
            vec![Diagnostic::error(
                format!("cannot read the file: {e}"),
                None,
            )],
        )),
    }
}
