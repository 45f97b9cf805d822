//! What a container runs, as the kubelet would compute it, but on the host:
//! environment (`env`, `envFrom`, `valueFrom`, `$(VAR)` expansion), command
//! and arguments, and the "filesystem namespace": container paths under a
//! volume mount become host paths, `/krt` in the krt image is the built
//! binary, and every other path is the host's own (images are the host root).
//!
//! Pure and synchronous: the node fetches the Secrets and ConfigMaps first
//! ([`Sources`]), so this module is unit-tested without a cluster.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};

/// A volume as a container sees it.
#[derive(Debug, Clone)]
pub(crate) struct Mount {
    /// `mountPath`, without a trailing slash.
    pub container_path: String,
    /// The host directory (volume directory plus `subPath`).
    pub host_path: PathBuf,
}

/// The container's view of the filesystem.
#[derive(Debug, Clone)]
pub(crate) struct Fs {
    /// Longest mount path first, so nested mounts win.
    mounts: Vec<Mount>,
    /// The krt binary when the container's image is the krt image.
    krt_bin: Option<PathBuf>,
}

impl Fs {
    pub(crate) fn new(mut mounts: Vec<Mount>, krt_bin: Option<PathBuf>) -> Self {
        for m in &mut mounts {
            while m.container_path.len() > 1 && m.container_path.ends_with('/') {
                m.container_path.pop();
            }
        }
        mounts.sort_by_key(|m| std::cmp::Reverse(m.container_path.len()));
        Self { mounts, krt_bin }
    }

    /// The host path of the container path `p`, if it is not the same path.
    pub(crate) fn host_path(&self, p: &str) -> Option<PathBuf> {
        for m in &self.mounts {
            let rest = if m.container_path == "/" {
                p.strip_prefix('/')
            } else {
                p.strip_prefix(m.container_path.as_str())
                    .filter(|r| r.is_empty() || r.starts_with('/'))
                    .map(|r| r.trim_start_matches('/'))
            };
            if let Some(rest) = rest {
                return Some(if rest.is_empty() {
                    m.host_path.clone()
                } else {
                    m.host_path.join(rest)
                });
            }
        }
        match &self.krt_bin {
            Some(bin) if p == "/krt" => Some(bin.clone()),
            _ => None,
        }
    }

    /// `value` with a leading container path replaced by its host path.
    pub(crate) fn rewrite(&self, value: String) -> String {
        match self.host_path(&value) {
            Some(p) => p.display().to_string(),
            None => value,
        }
    }
}

/// Data of the Secrets and ConfigMaps a container refers to, by name;
/// `None` means the object does not exist.
#[derive(Debug, Default, Clone)]
pub(crate) struct Sources {
    pub secrets: HashMap<String, Option<BTreeMap<String, Vec<u8>>>>,
    pub config_maps: HashMap<String, Option<BTreeMap<String, Vec<u8>>>>,
}

/// Names of the Secrets and ConfigMaps `c`'s environment refers to.
pub(crate) fn referenced_sources(c: &Container) -> (Vec<String>, Vec<String>) {
    let (mut secrets, mut config_maps) = (Vec::new(), Vec::new());
    for f in c.env_from.iter().flatten() {
        if let Some(s) = &f.secret_ref {
            secrets.push(s.name.clone());
        }
        if let Some(m) = &f.config_map_ref {
            config_maps.push(m.name.clone());
        }
    }
    for e in c.env.iter().flatten() {
        let Some(from) = &e.value_from else { continue };
        if let Some(s) = &from.secret_key_ref {
            secrets.push(s.name.clone());
        }
        if let Some(m) = &from.config_map_key_ref {
            config_maps.push(m.name.clone());
        }
    }
    secrets.sort();
    secrets.dedup();
    config_maps.sort();
    config_maps.dedup();
    (secrets, config_maps)
}

/// A container ready to spawn.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Resolved {
    /// Host path of the executable, or a bare name for a `PATH` lookup.
    pub program: String,
    /// False if the image is the krt image and the program is not in it
    /// (nor under a volume mount).
    pub program_in_image: bool,
    pub args: Vec<String>,
    /// The container's environment, in definition order, paths rewritten.
    pub env: Vec<(String, String)>,
    /// `workingDir` on the host, if the container sets one.
    pub working_dir: Option<PathBuf>,
}

/// Everything about the pod that env resolution needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PodFacts<'a> {
    pub pod: &'a Pod,
    pub pod_ip: Ipv4Addr,
    pub host_ip: Ipv4Addr,
    pub node_name: &'a str,
}

/// Resolves `c`'s command, arguments and environment. The error is the
/// message the kubelet would show with `CreateContainerConfigError`.
pub(crate) fn resolve(
    facts: PodFacts<'_>,
    c: &Container,
    fs: &Fs,
    sources: &Sources,
) -> Result<Resolved, String> {
    let env = environment(facts, c, sources)?;
    let lookup: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let lookup = |name: &str| lookup.get(name).map(|v| (*v).to_owned());

    let command: Vec<String> = c
        .command
        .iter()
        .flatten()
        .map(|s| expand(s, lookup))
        .collect();
    let Some((program, rest)) = command.split_first() else {
        return Err(format!(
            "container {:?} has no command, and image {:?} has no entrypoint on the krt test node",
            c.name,
            c.image.as_deref().unwrap_or("")
        ));
    };
    let args = rest
        .iter()
        .cloned()
        .chain(c.args.iter().flatten().map(|s| expand(s, lookup)))
        .map(|a| fs.rewrite(a))
        .collect();
    Ok(Resolved {
        program_in_image: fs.krt_bin.is_none() || fs.host_path(program).is_some(),
        program: fs.rewrite(program.clone()),
        args,
        env: env.into_iter().map(|(k, v)| (k, fs.rewrite(v))).collect(),
        working_dir: c
            .working_dir
            .as_ref()
            .map(|d| fs.host_path(d).unwrap_or_else(|| PathBuf::from(d))),
    })
}

/// `envFrom` first, then `env` in order, each value expanded against the
/// variables defined before it; a later definition replaces an earlier one in
/// place.
fn environment(
    facts: PodFacts<'_>,
    c: &Container,
    sources: &Sources,
) -> Result<Vec<(String, String)>, String> {
    let ns = facts.pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| match env
        .iter_mut()
        .find(|(name, _)| *name == k)
    {
        Some(slot) => slot.1 = v,
        None => env.push((k, v)),
    };

    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or("");
        let (data, kind, name, optional) = if let Some(s) = &from.secret_ref {
            (sources.secrets.get(&s.name), "secret", &s.name, s.optional)
        } else if let Some(m) = &from.config_map_ref {
            (
                sources.config_maps.get(&m.name),
                "configmap",
                &m.name,
                m.optional,
            )
        } else {
            continue;
        };
        match data.and_then(Option::as_ref) {
            Some(data) => {
                for (k, v) in data {
                    let key = format!("{prefix}{k}");
                    if is_env_var_name(&key) {
                        set(&mut env, key, String::from_utf8_lossy(v).into_owned());
                    }
                }
            }
            None if optional == Some(true) => {}
            None => return Err(format!("{kind} {name:?} not found")),
        }
    }

    for e in c.env.iter().flatten() {
        if let Some(v) = env_value(facts, ns, e, &env, sources)? {
            set(&mut env, e.name.clone(), v);
        }
    }
    Ok(env)
}

/// The value of one `env` entry; `None` leaves the variable unset (an
/// optional reference to something missing).
fn env_value(
    facts: PodFacts<'_>,
    ns: &str,
    e: &EnvVar,
    so_far: &[(String, String)],
    sources: &Sources,
) -> Result<Option<String>, String> {
    let Some(from) = &e.value_from else {
        let raw = e.value.as_deref().unwrap_or("");
        return Ok(Some(expand(raw, |name| {
            so_far
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })));
    };
    let key_of = |data: Option<&Option<BTreeMap<String, Vec<u8>>>>,
                  kind: &str,
                  name: &str,
                  key: &str,
                  optional: Option<bool>|
     -> Result<Option<String>, String> {
        let optional = optional == Some(true);
        match data.and_then(Option::as_ref) {
            None if optional => Ok(None),
            None => Err(format!("{} {name:?} not found", kind.to_lowercase())),
            Some(data) => match data.get(key) {
                Some(v) => Ok(Some(String::from_utf8_lossy(v).into_owned())),
                None if optional => Ok(None),
                None => Err(format!("couldn't find key {key} in {kind} {ns}/{name}")),
            },
        }
    };
    if let Some(r) = &from.secret_key_ref {
        return key_of(
            sources.secrets.get(&r.name),
            "Secret",
            &r.name,
            &r.key,
            r.optional,
        );
    }
    if let Some(r) = &from.config_map_key_ref {
        return key_of(
            sources.config_maps.get(&r.name),
            "ConfigMap",
            &r.name,
            &r.key,
            r.optional,
        );
    }
    if let Some(r) = &from.field_ref {
        return field(facts, &r.field_path).map(Some);
    }
    Err(format!(
        "env {:?}: only value, secretKeyRef, configMapKeyRef and fieldRef are supported by the krt test node",
        e.name
    ))
}

/// A `fieldRef` path, as the downward API resolves it.
fn field(facts: PodFacts<'_>, path: &str) -> Result<String, String> {
    let meta = &facts.pod.metadata;
    let bracketed = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("['"))
            .and_then(|r| r.strip_suffix("']"))
            .map(str::to_owned)
    };
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => facts.node_name.to_owned(),
        "spec.serviceAccountName" => facts
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => facts.pod_ip.to_string(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.to_string(),
        _ => {
            if let Some(k) = bracketed("metadata.labels") {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(&k))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(k) = bracketed("metadata.annotations") {
                meta.annotations
                    .as_ref()
                    .and_then(|l| l.get(&k))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return Err(format!("unsupported fieldRef fieldPath {path:?}"));
            }
        }
    };
    Ok(value)
}

/// Kubernetes' `$(VAR)` expansion: a defined variable is replaced, an
/// undefined one is left as written, `$$` is a literal `$`.
pub(crate) fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('(') {
            match r.find(')') {
                Some(end) => {
                    let name = &r[..end];
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &r[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = r;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Kubernetes 1.20's rule for environment variable names.
fn is_env_var_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, '-' | '.' | '_'))
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p-1", "namespace": "ns", "uid": "u-1",
                         "labels": {"app": "a"}},
            "spec": {"containers": []}
        }))
        .unwrap()
    }

    fn container(v: serde_json::Value) -> Container {
        serde_json::from_value(v).unwrap()
    }

    fn facts(pod: &Pod) -> PodFacts<'_> {
        PodFacts {
            pod,
            pod_ip: Ipv4Addr::new(127, 0, 0, 10),
            host_ip: Ipv4Addr::LOCALHOST,
            node_name: "krt-node-0",
        }
    }

    fn fs() -> Fs {
        Fs::new(
            vec![
                Mount {
                    container_path: "/opt/kruntimes/bin/".into(),
                    host_path: "/h/bin".into(),
                },
                Mount {
                    container_path: "/var/run/kruntimes/token".into(),
                    host_path: "/h/tok".into(),
                },
                Mount {
                    container_path: "/var/run".into(),
                    host_path: "/h/run".into(),
                },
            ],
            None,
        )
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let lookup = |n: &str| (n == "A").then(|| "x".to_owned());
        assert_eq!(expand("$(A):1", lookup), "x:1");
        assert_eq!(expand("$(B)-$(A)", lookup), "$(B)-x");
        assert_eq!(expand("$$(A) $$ $x $", lookup), "$(A) $ $x $");
        assert_eq!(expand("$(A", lookup), "$(A");
    }

    #[test]
    fn container_paths_under_a_mount_become_host_paths() {
        let fs = fs();
        assert_eq!(
            fs.host_path("/var/run/kruntimes/token/token"),
            Some("/h/tok/token".into())
        );
        assert_eq!(fs.host_path("/var/run/x"), Some("/h/run/x".into()));
        assert_eq!(fs.host_path("/opt/kruntimes/bin"), Some("/h/bin".into()));
        assert_eq!(fs.host_path("/var/runner"), None);
        assert_eq!(fs.host_path("/krt"), None);
        let krt = Fs::new(vec![], Some("/target/krt".into()));
        assert_eq!(krt.host_path("/krt"), Some("/target/krt".into()));
    }

    #[test]
    fn environment_resolves_references_then_expands_command_and_paths() {
        let pod = pod();
        let c = container(json!({
            "name": "runtime",
            "image": "debian:bookworm",
            "command": ["/opt/kruntimes/bin/krt", "runtime", "serve"],
            "args": ["--listen=$(KRT_LISTEN)", "/var/run/kruntimes/token/token"],
            "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
            "env": [
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "KRT_LISTEN", "value": "$(POD_IP):7070"},
                {"name": "TOK", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "token"}}},
                {"name": "GONE", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": true}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "FILE", "value": "/var/run/kruntimes/token/token"},
                {"name": "CM_a", "value": "over"}
            ]
        }));
        let mut sources = Sources::default();
        sources.secrets.insert(
            "tok".into(),
            Some([("token".into(), b"s3cret".to_vec())].into()),
        );
        sources.secrets.insert("nope".into(), None);
        sources.config_maps.insert(
            "cm".into(),
            Some([("a".into(), b"1".to_vec()), ("b c".into(), b"2".to_vec())].into()),
        );
        let r = resolve(facts(&pod), &c, &fs(), &sources).unwrap();
        assert_eq!(r.program, "/h/bin/krt");
        assert_eq!(
            r.args,
            [
                "runtime",
                "serve",
                "--listen=127.0.0.10:7070",
                "/h/tok/token"
            ]
        );
        let env: Vec<(&str, &str)> = r
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            env,
            [
                ("CM_a", "over"),
                ("POD_IP", "127.0.0.10"),
                ("KRT_LISTEN", "127.0.0.10:7070"),
                ("TOK", "s3cret"),
                ("APP", "a"),
                ("FILE", "/h/tok/token"),
            ]
        );
    }

    #[test]
    fn a_missing_required_reference_is_a_config_error() {
        let pod = pod();
        let c = container(json!({
            "name": "c", "command": ["true"],
            "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "token"}}}]
        }));
        let mut sources = Sources::default();
        sources.secrets.insert("tok".into(), None);
        assert_eq!(
            resolve(facts(&pod), &c, &fs(), &sources).unwrap_err(),
            "secret \"tok\" not found"
        );
        sources
            .secrets
            .insert("tok".into(), Some([("other".into(), b"x".to_vec())].into()));
        assert_eq!(
            resolve(facts(&pod), &c, &fs(), &sources).unwrap_err(),
            "couldn't find key token in Secret ns/tok"
        );
    }
}
