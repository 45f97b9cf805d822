//! `krt graph FILE`: show the planned DAG as text, Graphviz DOT or Mermaid.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::ValueEnum;

use super::{Color, Exit};
use crate::plan::Plan;

/// Show the planned DAG: one node per job (one per matrix cell), grouped by
/// level, with needs and `if:` conditions.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  krt graph ci.yaml
  krt graph ci.yaml --format dot | dot -Tsvg > ci.svg
  krt graph ci.yaml --format mermaid     paste into a Markdown ```mermaid block")]
pub struct Args {
    /// Workflow file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// Output format of `krt graph`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Levels and needs, readable in a terminal.
    Text,
    /// Graphviz DOT (`dot -Tsvg`).
    Dot,
    /// Mermaid flowchart.
    Mermaid,
}

pub fn run(args: Args, color: Color) -> Exit {
    let p = match super::load_plan(&args.file, color) {
        Ok(p) => p,
        Err(exit) => return exit,
    };
    let out = match args.format {
        Format::Text => text(&p),
        Format::Dot => dot(&p),
        Format::Mermaid => mermaid(&p),
    };
    print!("{out}");
    Exit::Success
}

/// Needs of a node, by job (a matrix need is one entry, not one per cell).
fn needs_of(p: &Plan, node: usize) -> Vec<&str> {
    p.jobs[p.nodes[node].job]
        .needs
        .iter()
        .map(|&j| p.jobs[j].key.as_str())
        .collect()
}

/// The text form: levels, each node with its needs and condition.
pub fn text(p: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "workflow {}: {} jobs, {} runs, critical path {} levels",
        p.name,
        p.jobs.len(),
        p.nodes.len(),
        p.critical_path
    );
    let width = p.nodes.iter().map(|n| n.display.len()).max().unwrap_or(0);
    let mut level = usize::MAX;
    for (id, n) in p.nodes.iter().enumerate() {
        if n.level != level {
            level = n.level;
            let _ = writeln!(out, "\nlevel {}", level + 1);
        }
        let mut line = format!("  {:width$}", n.display);
        let needs = needs_of(p, id);
        if !needs.is_empty() {
            let _ = write!(line, "  <- {}", needs.join(", "));
        }
        if let Some(cond) = &p.ast.jobs[n.job].if_ {
            let _ = write!(line, "  if: {}", cond.value.trim());
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Graphviz DOT, one node per run, edges from a need to its dependents.
pub fn dot(p: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", dot_escape(&p.name));
    let _ = writeln!(out, "  rankdir=LR;");
    let _ = writeln!(
        out,
        "  node [shape=box, style=rounded, fontname=\"Helvetica\"];"
    );
    for n in &p.nodes {
        let mut label = dot_escape(&n.display);
        if let Some(cond) = &p.ast.jobs[n.job].if_ {
            let _ = write!(label, "\\nif: {}", dot_escape(cond.value.trim()));
        }
        let _ = writeln!(out, "  \"{}\" [label=\"{label}\"];", n.name);
    }
    for n in &p.nodes {
        for &d in &n.needs {
            let _ = writeln!(out, "  \"{}\" -> \"{}\";", p.nodes[d].name, n.name);
        }
    }
    out.push_str("}\n");
    out
}

fn mermaid_escape(s: &str) -> String {
    s.replace('"', "#quot;").replace('\n', " ")
}

/// A Mermaid flowchart.
pub fn mermaid(p: &Plan) -> String {
    let mut out = String::from("flowchart LR\n");
    for (id, n) in p.nodes.iter().enumerate() {
        let _ = writeln!(out, "  n{id}[\"{}\"]", mermaid_escape(&n.display));
    }
    for (id, n) in p.nodes.iter().enumerate() {
        for &d in &n.needs {
            let _ = writeln!(out, "  n{d} --> n{id}");
        }
    }
    out
}
