//! `krt get workflows|runs|pools`: list kruntimes resources of a cluster.

use clap::ValueEnum;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kruntimes_crds::{Run, RuntimePool, Workflow};
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::Exit;
use super::store::{error, runtime};
use crate::cluster::client::{self, ClusterArgs};

/// List Workflows, Runs or RuntimePools of a cluster, newest first.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  krt get workflows
  krt get runs --workflow ci-x7k2p
  krt get pools -A
  krt get wf ci-x7k2p -o yaml")]
pub struct Args {
    /// What to list.
    #[arg(value_enum)]
    pub kind: Kind,
    /// Only this object.
    pub name: Option<String>,
    /// Runs of this Workflow only.
    #[arg(long, short = 'w', value_name = "WORKFLOW")]
    pub workflow: Option<String>,
    /// Every namespace.
    #[arg(long, short = 'A')]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table)]
    pub output: Format,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// A kruntimes resource kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// Workflow executions.
    #[value(alias = "workflow", alias = "wf")]
    Workflows,
    /// Runs: one job (matrix cell) each.
    #[value(alias = "run")]
    Runs,
    /// RuntimePools: warm runtime Deployments.
    #[value(alias = "pool", alias = "runtimepools")]
    Pools,
}

/// `-o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Columns for people.
    Table,
    /// The objects as JSON.
    Json,
    /// The objects as YAML.
    Yaml,
}

fn age(t: Option<&Time>) -> String {
    let Some(t) = t else { return "-".into() };
    let s = (k8s_openapi::jiff::Timestamp::now().as_second() - t.0.as_second()).max(0);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn table(rows: Vec<Vec<String>>) -> String {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, v)| {
                if i + 1 == cols {
                    v.clone()
                } else {
                    format!("{v:<w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

fn api<K>(client: kube::Client, ns: &str, all: bool) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    if all {
        Api::all(client)
    } else {
        Api::namespaced(client, ns)
    }
}

async fn list<K>(api: Api<K>, name: Option<&str>, lp: &ListParams) -> Result<Vec<K>, String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut items = match name {
        Some(n) => vec![api.get(n).await.map_err(|e| match &e {
            kube::Error::Api(s) if s.code == 404 => format!("not found: {n}"),
            _ => e.to_string(),
        })?],
        None => {
            api.list(lp)
                .await
                .map_err(|e| format!("{e}{}", super::submit::hint(&e)))?
                .items
        }
    };
    items.sort_by(|a, b| {
        b.meta()
            .creation_timestamp
            .cmp(&a.meta().creation_timestamp)
            .then_with(|| a.meta().name.cmp(&b.meta().name))
    });
    Ok(items)
}

fn print<T: serde::Serialize>(items: &[T], format: Format) -> Result<(), String> {
    let text = match format {
        Format::Json => serde_json::to_string_pretty(items).map_err(|e| e.to_string())?,
        Format::Yaml => serde_yaml::to_string(items).map_err(|e| e.to_string())?,
        Format::Table => unreachable!("tables are printed by the caller"),
    };
    println!("{}", text.trim_end());
    Ok(())
}

pub fn run(args: Args) -> Exit {
    let rt = match runtime() {
        Ok(r) => r,
        Err(e) => {
            error(e);
            return Exit::Internal;
        }
    };
    let result = rt.block_on(async {
        let target = client::connect(&args.cluster).await?;
        let all = args.all_namespaces;
        let name = args.name.as_deref();
        let mut lp = ListParams::default();
        match args.kind {
            Kind::Workflows => {
                let items: Vec<Workflow> =
                    list(api(target.client, &target.namespace, all), name, &lp).await?;
                if args.output != Format::Table {
                    return print(&items, args.output);
                }
                let mut rows = vec![head(all, &["NAME", "PHASE", "PROGRESS", "AGE", "MESSAGE"])];
                for w in &items {
                    let s = w.status.clone().unwrap_or_default();
                    rows.push(row(
                        all,
                        w.namespace(),
                        vec![
                            w.name_any(),
                            s.phase.map_or("Pending".into(), |p| format!("{p:?}")),
                            s.progress.unwrap_or_else(|| "-".into()),
                            age(w.metadata.creation_timestamp.as_ref()),
                            s.message.unwrap_or_default(),
                        ],
                    ));
                }
                print!("{}", table(rows));
            }
            Kind::Runs => {
                if let Some(wf) = &args.workflow {
                    lp = lp.labels(&format!("{}={wf}", crate::cluster::WORKFLOW_LABEL));
                }
                let items: Vec<Run> =
                    list(api(target.client, &target.namespace, all), name, &lp).await?;
                if args.output != Format::Table {
                    return print(&items, args.output);
                }
                let mut rows = vec![head(
                    all,
                    &["NAME", "JOB", "PHASE", "POOL", "POD", "ATTEMPT", "AGE"],
                )];
                for r in &items {
                    let s = r.status.clone().unwrap_or_default();
                    rows.push(row(
                        all,
                        r.namespace(),
                        vec![
                            r.name_any(),
                            r.spec
                                .display_name
                                .clone()
                                .unwrap_or_else(|| r.spec.job.clone()),
                            s.phase.map_or("Pending".into(), |p| format!("{p:?}")),
                            r.spec.pool.clone(),
                            s.pod.unwrap_or_else(|| "-".into()),
                            s.attempt.map_or("-".into(), |a| a.to_string()),
                            age(r.metadata.creation_timestamp.as_ref()),
                        ],
                    ));
                }
                print!("{}", table(rows));
            }
            Kind::Pools => {
                let items: Vec<RuntimePool> =
                    list(api(target.client, &target.namespace, all), name, &lp).await?;
                if args.output != Format::Table {
                    return print(&items, args.output);
                }
                let mut rows = vec![head(
                    all,
                    &["NAME", "IMAGE", "READY", "SLOTS", "BUSY", "AGE"],
                )];
                for p in &items {
                    let s = p.status.clone().unwrap_or_default();
                    rows.push(row(
                        all,
                        p.namespace(),
                        vec![
                            p.name_any(),
                            p.spec.image.clone(),
                            format!("{}/{}", s.ready_replicas, p.spec.replicas),
                            s.total_slots.to_string(),
                            s.busy_slots.to_string(),
                            age(p.metadata.creation_timestamp.as_ref()),
                        ],
                    ));
                }
                print!("{}", table(rows));
            }
        }
        Ok::<(), String>(())
    });
    match result {
        Ok(()) => Exit::Success,
        Err(e) => {
            error(e);
            Exit::Internal
        }
    }
}

fn head(all: bool, cols: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    if all {
        v.push("NAMESPACE".into());
    }
    v.extend(cols.iter().map(|c| c.to_string()));
    v
}

fn row(all: bool, ns: Option<String>, cols: Vec<String>) -> Vec<String> {
    let mut v = Vec::new();
    if all {
        v.push(ns.unwrap_or_default());
    }
    v.extend(cols);
    v
}
