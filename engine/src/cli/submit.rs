//! `krt submit FILE`: run a workflow on a Kubernetes cluster.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use kruntimes_crds::{Workflow, WorkflowSpec};
use kube::api::{ObjectMeta, PostParams};

use super::run::{Output, out, quiet_ui, summary, text_ui};
use super::store::{error, parse_param, runtime};
use super::{Color, Exit};
use crate::cluster::client::{self, ClusterArgs, Target};
use crate::embedded;
use crate::plan::render::resolve_params;

/// Run a workflow on a Kubernetes cluster: plan and validate it here,
/// snapshot the source tree into the cluster's store (uploading only the
/// blobs the store lacks), and create a `Workflow` resource; the cluster's
/// `krt controller` runs its jobs in warm RuntimePool pods.
///
/// The cluster is the kubeconfig's current context (as for kubectl); the
/// store URL comes from the cluster's `kruntimes-store` ConfigMap (in
/// `kruntimes-system`) unless `--store` names one. Store credentials come
/// from this environment.
///
/// Prints the Workflow's name on stdout. With `--wait`, follows it like
/// `krt run`: each job's start, its log when it ends, its result, and the
/// summary, with `krt run`'s exit codes.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  krt submit ci.yaml
  krt submit ci.yaml -p profile=debug --wait
  krt submit ci.yaml --context prod -n ci --wait --quiet
  krt get workflows;  krt logs NAME build;  krt replay NAME build

Exit codes (with --wait): 0 succeeded, 1 a job failed, 3 invalid workflow,
4 cluster or store error, 130 cancelled (the workflow was cancelled, or
Ctrl-C stopped the waiting; the workflow goes on in the cluster).")]
pub struct Args {
    /// Workflow file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Parameter value (repeatable).
    #[arg(short = 'p', long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// Follow the workflow until it ends and exit with its result.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up waiting after this long (e.g. 10m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Source tree to snapshot [default: the enclosing git repository, else
    /// the current directory].
    #[arg(long, env = "KRT_SOURCE", value_name = "DIR")]
    pub source: Option<PathBuf>,
    /// Prefix of the Workflow's name [default: the workflow's name]; a
    /// random suffix makes it unique.
    #[arg(long, value_name = "PREFIX")]
    pub name: Option<String>,
    /// Delete the Workflow (and its Runs) this many seconds after it ends.
    #[arg(long, value_name = "SECONDS")]
    pub ttl: Option<i64>,
    /// The cluster's store URL [default: from the cluster's configuration].
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// With --wait: print no job logs, only results and the summary.
    #[arg(long, short)]
    pub quiet: bool,
    /// Output format of --wait's summary.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// Parses `90s`, `10m`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    kruntimes_crds::duration::parse_duration(s)
}

pub fn run(args: Args, color: Color) -> Exit {
    let plan = match super::load_plan(&args.file, color) {
        Ok(p) => p,
        Err(exit) => return exit,
    };
    if let Err(errors) = resolve_params(&plan, &args.params) {
        for e in errors {
            error(e);
        }
        return Exit::Usage;
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            error(e);
            return Exit::Internal;
        }
    };
    rt.block_on(async move {
        let target = match client::connect(&args.cluster).await {
            Ok(t) => t,
            Err(e) => {
                error(e);
                return Exit::Internal;
            }
        };
        let store = match client::cluster_store(&target, args.store.as_deref()).await {
            Ok(s) => s,
            Err(e) => {
                error(e);
                return Exit::Internal;
            }
        };
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let root = args
            .source
            .clone()
            .unwrap_or_else(|| embedded::source::default_root(&cwd));
        let before = store.stats();
        let source = match embedded::source::snapshot(&store, &root).await {
            Ok(d) => d,
            Err(e) => {
                error(format!("failed to snapshot {}: {e}", root.display()));
                return Exit::Internal;
            }
        };
        let up = store.stats().since(&before);
        let name = match create(&target, &plan, &args, source).await {
            Ok(n) => n,
            Err(e) => {
                error(e);
                return Exit::Internal;
            }
        };
        eprintln!(
            "krt: submitted workflow {}/{name} ({} jobs; source {source}: {})",
            target.namespace,
            plan.nodes.len(),
            upload_note(&up)
        );
        if !(args.wait && args.output == Output::Json) {
            out(&name);
        }
        if !args.wait {
            return Exit::Success;
        }
        follow_and_report(
            &target,
            &name,
            Some(&store),
            &plan_order(&plan),
            args.output,
            args.quiet,
            color,
            plan_width(&plan),
            args.timeout,
        )
        .await
    })
}

fn upload_note(up: &kruntimes_runtime::cas::UploadStats) -> String {
    format!(
        "uploaded {} blobs ({} bytes), {} already in the store",
        up.blobs_uploaded, up.bytes_uploaded, up.blobs_skipped
    )
}

async fn create(
    target: &Target,
    plan: &crate::plan::Plan,
    args: &Args,
    source: kruntimes_runtime::Digest,
) -> Result<String, String> {
    let arguments: BTreeMap<String, serde_json::Value> = args
        .params
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let prefix = args.name.clone().unwrap_or_else(|| plan.name.clone());
    let mut prefix: String = prefix.chars().take(50).collect();
    if !prefix.ends_with('-') {
        prefix.push('-');
    }
    let wf = Workflow {
        metadata: ObjectMeta {
            generate_name: Some(prefix),
            namespace: Some(target.namespace.clone()),
            labels: Some(BTreeMap::from([(
                "kruntimes.io/workflow-name".to_string(),
                plan.name.clone(),
            )])),
            annotations: Some(BTreeMap::from([(
                "kruntimes.io/file".to_string(),
                args.file.display().to_string(),
            )])),
            ..ObjectMeta::default()
        },
        spec: WorkflowSpec {
            workflow: plan.ast.to_spec(),
            arguments,
            source: Some(source.to_string()),
            cancel: false,
            ttl_seconds_after_finished: args.ttl,
        },
        status: None,
    };
    let created = target
        .workflows()
        .create(&PostParams::default(), &wf)
        .await
        .map_err(|e| {
            format!(
                "failed to create the Workflow in namespace {}: {e}{}",
                target.namespace,
                hint(&e)
            )
        })?;
    Ok(kube::ResourceExt::name_any(&created))
}

/// A hint for common API errors.
pub(crate) fn hint(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(s) if s.code == 404 => {
            " (hint: are the kruntimes CRDs installed? `krt crds | kubectl apply -f -`)"
        }
        kube::Error::Api(s) if s.code == 403 => {
            " (hint: your user may not create Workflows here; check RBAC or pass -n)"
        }
        _ => "",
    }
}

pub(crate) fn plan_order(plan: &crate::plan::Plan) -> Vec<String> {
    plan.nodes.iter().map(|n| n.name.clone()).collect()
}

fn plan_width(plan: &crate::plan::Plan) -> usize {
    plan.nodes
        .iter()
        .map(|n| n.display.len())
        .max()
        .unwrap_or(0)
}

/// Shared by `krt submit --wait` and `krt wait`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn follow_and_report(
    target: &Target,
    name: &str,
    store: Option<&kruntimes_runtime::cas::Store>,
    order: &[String],
    output: Output,
    quiet: bool,
    color: Color,
    width: usize,
    timeout: Option<Duration>,
) -> Exit {
    let mut ui = if output == Output::Json {
        quiet_ui()
    } else {
        text_ui(color, quiet, width.max(8))
    };
    let followed = tokio::select! {
        r = client::follow(target, name, store, ui.as_mut(), timeout) => r,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("krt: stopped waiting; workflow {name} goes on in the cluster (`krt cancel {name}` stops it)");
            return Exit::Cancelled;
        }
    };
    let wf = match followed {
        Ok(Some(wf)) => wf,
        Ok(None) => {
            error(format!(
                "workflow {name} did not finish within the timeout; it goes on in the cluster"
            ));
            return Exit::Internal;
        }
        Err(e) => {
            error(e);
            return Exit::Internal;
        }
    };
    drop(ui);
    let report = client::workflow_report(&wf, order);
    match output {
        Output::Json => out(&serde_json::to_string_pretty(&report).unwrap_or_default()),
        Output::Text => {
            out(summary(&report).trim_end());
            let status = wf.status.clone().unwrap_or_default();
            let invalid = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Valid" && c.status == "False");
            if let Some(c) = invalid {
                eprintln!("{}", c.message);
                return Exit::Invalid;
            }
        }
    }
    match report.result {
        crate::scheduler::WorkflowResult::Succeeded => Exit::Success,
        crate::scheduler::WorkflowResult::Failed => Exit::WorkflowFailed,
        crate::scheduler::WorkflowResult::Cancelled => Exit::Cancelled,
    }
}
