//! `krt crds`: print the CustomResourceDefinitions.

use super::Exit;

/// Print the CustomResourceDefinitions of Workflow, Run and RuntimePool as YAML.
///
/// The output is what `crds/generated/crds.yaml` holds; apply it with
/// `krt crds | kubectl apply -f -`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  krt crds | kubectl apply -f -")]
pub struct Args {}

pub fn run(_args: Args) -> Exit {
    print!("{}", kruntimes_crds::crds_yaml());
    Exit::Success
}
