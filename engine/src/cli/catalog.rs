//! `krt catalog list|show`: the reusable steps a workflow names with `uses:`.

use clap::ValueEnum;

use super::{Color, Exit};
use crate::plan::Diagnostics;
use crate::plan::catalog::resolve::{Location, Reference, ResolveError};
use crate::plan::catalog::{Resolver, show};

/// The step catalog: versioned step templates a workflow uses with
/// `uses: NAME@vMAJOR` and `with: {...}`. Built-in entries are part of krt;
/// `KRT_CATALOG_PATH` (`:`-separated directories of `NAME/vMAJOR.yaml`) adds
/// more.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  krt catalog list
  krt catalog show cargo-test            the newest version
  krt catalog show cargo-test@v1
  krt catalog show ./ci/steps/lint.yaml  an entry file of your own
  KRT_CATALOG_PATH=ci/catalog krt catalog list

In a workflow:
  jobs:
    test:
      uses: cargo-test@v1
      with: {nextest: true}")]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// List the entries: name, versions and a one-line description.
    List(ListArgs),
    /// Show an entry: its parameters with their defaults, its steps rendered
    /// with the defaults, and an example.
    Show(ShowArgs),
}

#[derive(Debug, clap::Args)]
struct ListArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = ListFormat::Text)]
    format: ListFormat,
}

/// Output format of `krt catalog list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ListFormat {
    /// A table for a terminal.
    Text,
    /// The Markdown table of the README's "Step catalog" section.
    Markdown,
}

#[derive(Debug, clap::Args)]
struct ShowArgs {
    /// `NAME` (the newest version), `NAME@vMAJOR`, or a path to an entry file.
    #[arg(value_name = "NAME[@VERSION]")]
    entry: String,
}

pub fn run(args: Args, color: Color) -> Exit {
    let cwd = std::env::current_dir().ok();
    let resolver = Resolver::from_env(cwd);
    match args.command {
        Command::List(a) => list(&resolver, a, color),
        Command::Show(a) => show(&resolver, &a.entry, color),
    }
}

fn print_diags(diags: Vec<crate::plan::Diagnostic>, color: Color) {
    let source = diags
        .iter()
        .find_map(|d| d.file.as_deref().cloned())
        .unwrap_or_else(|| crate::plan::Source::new("catalog", ""));
    eprint!("{}", Diagnostics::new(source, diags).render(color.stderr()));
}

fn list(resolver: &Resolver, args: ListArgs, color: Color) -> Exit {
    match args.format {
        ListFormat::Text => {
            let (text, problems) = show::list_text(resolver);
            print!("{text}");
            if problems.is_empty() {
                Exit::Success
            } else {
                print_diags(problems, color);
                Exit::Invalid
            }
        }
        ListFormat::Markdown => match show::markdown_table(resolver) {
            Ok(table) => {
                print!("{table}");
                Exit::Success
            }
            Err(d) => {
                print_diags(d, color);
                Exit::Invalid
            }
        },
    }
}

fn show(resolver: &Resolver, reference: &str, color: Color) -> Exit {
    // `NAME` alone shows the newest major version.
    let reference = match Reference::parse(reference) {
        Reference::Named {
            name,
            version: None,
        } => match resolver.versions(&name).last() {
            Some(major) => format!("{name}@v{major}"),
            None => name,
        },
        _ => reference.to_string(),
    };
    let entry = match resolver.resolve(&reference) {
        Ok(e) => e,
        Err(ResolveError::Invalid { diags, .. }) => {
            print_diags(diags, color);
            eprintln!("invalid: catalog entry `{reference}`");
            return Exit::Invalid;
        }
        Err(e) => {
            eprintln!("error: {e}");
            if let Some(h) = e.hint() {
                eprintln!("  (hint: {h})");
            }
            return Exit::Usage;
        }
    };
    let location = resolver
        .list()
        .into_iter()
        .find(|l| l.name == entry.name && l.major == entry.major)
        .filter(|l| match &l.location {
            Location::Builtin(rel) => entry.source.name == format!("catalog/{rel}"),
            Location::File(p) => entry.source.name == p.display().to_string(),
        })
        .map_or_else(|| entry.source.name.clone(), |l| l.location.to_string());
    match show::show_text(&entry, &location) {
        Ok(text) => {
            print!("{text}");
            Exit::Success
        }
        Err(d) => {
            print_diags(vec![d], color);
            Exit::Invalid
        }
    }
}
