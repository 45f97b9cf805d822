//! The test cluster harness is a working Kubernetes cluster, without the krt
//! controller: a Deployment shaped like a RuntimePool's goes through the real
//! controller manager (Deployment -> ReplicaSet -> Pods), and the test node
//! binds, runs, probes, restarts and deletes its pods.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kruntimes_tests::cluster::{Cluster, KRT_IMAGE, POOL_LABEL};
use kruntimes_tests::http::{Response, request};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const TOKEN: &str = "cluster-harness-token-0123456789";

/// The pod template of a RuntimePool's Deployment: krt installed by an init
/// container from the krt image, run by the runtime image.
fn deployment(cluster: &Cluster, replicas: i32) -> Deployment {
    let mut env = vec![
        json!({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}),
        json!({"name": "KRT_LISTEN", "value": "$(POD_IP):7070"}),
        json!({"name": "KRT_TOKEN_FILE", "value": "/var/run/kruntimes/token/token"}),
        json!({"name": "KRT_WORK_DIR", "value": "/var/lib/kruntimes/work"}),
        json!({"name": "KRT_SLOTS", "value": "2"}),
        json!({"name": "KRT_STORE", "value": cluster.store_url()}),
    ];
    env.extend(
        cluster
            .store_env()
            .into_iter()
            .map(|(k, v)| json!({"name": k, "value": v})),
    );
    serde_json::from_value(json!({
        "metadata": {"name": "p"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {POOL_LABEL: "p"}},
            "template": {
                "metadata": {"labels": {POOL_LABEL: "p"}},
                "spec": {
                    "volumes": [
                        {"name": "krt-bin", "emptyDir": {}},
                        {"name": "krt-token", "secret": {"secretName": "tok"}},
                        {"name": "work", "emptyDir": {}},
                    ],
                    "initContainers": [{
                        "name": "install-krt",
                        "image": KRT_IMAGE,
                        "command": ["/krt", "self-install", "/opt/kruntimes/bin/krt"],
                        "volumeMounts": [{"name": "krt-bin", "mountPath": "/opt/kruntimes/bin"}],
                    }],
                    "containers": [{
                        "name": "runtime",
                        "image": "debian:bookworm",
                        "command": ["/opt/kruntimes/bin/krt", "runtime", "serve"],
                        "env": env,
                        "ports": [{"name": "http", "containerPort": 7070}],
                        "readinessProbe": {
                            "httpGet": {"path": "/v1/health", "port": "http"},
                            "periodSeconds": 1,
                        },
                        "volumeMounts": [
                            {"name": "krt-bin", "mountPath": "/opt/kruntimes/bin"},
                            {"name": "krt-token", "mountPath": "/var/run/kruntimes/token"},
                            {"name": "work", "mountPath": "/var/lib/kruntimes/work"},
                        ],
                    }],
                },
            },
        },
    }))
    .expect("a Deployment")
}

/// Polls `check` every 100 ms until it returns `Some`, for at most 60 s;
/// then panics naming `what`, with the namespace's pod logs.
async fn eventually<T>(
    cluster: &Cluster,
    ns: &str,
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}\n\nkubectl get pods:\n{}\n{}",
                kruntimes_tests::stdout(&cluster.kubectl(&["get", "pods", "-n", ns, "-o", "wide"])),
                cluster.namespace_logs(ns)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn live_pods(pods: &Api<Pod>) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("{POOL_LABEL}=p")))
        .await
        .expect("list pods")
        .items
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn restart_count(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map_or(0, |c| c.restart_count)
}

fn name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

/// Whether `pid` is a live process; a zombie (killed, not yet reaped by
/// whoever inherited it) is not.
fn process_exists(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .next()?
                .to_owned();
            Some(state != "Z")
        })
        .unwrap_or(false)
}

async fn get(ip: Ipv4Addr, path: &'static str, token: Option<&'static str>) -> Response {
    let addr = SocketAddr::from((ip, 7070));
    tokio::task::spawn_blocking(move || request(addr, "GET", path, token, None))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_deployment_runs_restarts_scales_and_is_collected() {
    let cluster = Cluster::shared();
    let client = cluster.client();
    let ns = cluster.namespace("harness").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);

    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "tok"}, "stringData": {"token": TOKEN}}),
    )
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    deployments
        .create(&PostParams::default(), &deployment(cluster, 2))
        .await
        .unwrap();

    eventually(
        cluster,
        &ns,
        "the Deployment to have 2 ready replicas",
        async || {
            let d = deployments.get("p").await.ok()?;
            let s = d.status?;
            (s.ready_replicas == Some(2) && s.updated_replicas == Some(2)).then_some(())
        },
    )
    .await;
    let running = live_pods(&pods).await;
    assert_eq!(running.len(), 2, "two pods for two replicas");
    let mut ips = Vec::new();
    for pod in &running {
        let status = pod.status.as_ref().unwrap();
        let ip: Ipv4Addr = status.pod_ip.as_deref().unwrap().parse().unwrap();
        assert!(
            ip.is_loopback() && ip.octets()[1] != 0,
            "pod IP {ip} is on loopback, off 127.0.0.x (the control plane's)"
        );
        assert_eq!(cluster.pod_ip(&ns, &name(pod)), Some(ip));
        assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(
            pod.spec.as_ref().unwrap().node_name.as_deref(),
            Some("krt-node-0")
        );
        let init = &status.init_container_statuses.as_ref().unwrap()[0];
        assert!(
            init.state
                .as_ref()
                .unwrap()
                .terminated
                .as_ref()
                .is_some_and(|t| t.exit_code == 0),
            "the init container installed krt: {init:?}"
        );
        ips.push(ip);

        assert_eq!(get(ip, "/v1/health", None).await.status, 200);
        assert_eq!(get(ip, "/v1/capacity", None).await.status, 401);
        // The token is the Secret's, mounted as a file.
        let capacity = get(ip, "/v1/capacity", Some(TOKEN)).await;
        assert_eq!(capacity.status, 200, "{}", capacity.body);
    }
    assert_ne!(ips[0], ips[1], "pods have distinct IPs");

    // A crashed runtime is restarted and becomes ready again.
    let victim = name(&running[0]);
    let old_pid = cluster
        .runtime_pid(&ns, &victim)
        .expect("the runtime's pid");
    assert!(cluster.kill_container(&ns, &victim));
    let restarted = eventually(
        cluster,
        &ns,
        "the killed runtime to restart and be ready",
        async || {
            let pod = pods.get(&victim).await.ok()?;
            (restart_count(&pod) == 1 && is_ready(&pod)).then_some(pod)
        },
    )
    .await;
    let new_pid = cluster
        .runtime_pid(&ns, &victim)
        .expect("the restarted runtime's pid");
    assert_ne!(new_pid, old_pid);
    assert!(
        !process_exists(old_pid),
        "the killed runtime {old_pid} is gone"
    );
    let last = restarted.status.unwrap().container_statuses.unwrap()[0].clone();
    assert!(
        last.last_state.and_then(|s| s.terminated).is_some(),
        "the restarted container reports how the last one ended"
    );
    let ip = cluster.pod_ip(&ns, &victim).unwrap();
    assert_eq!(get(ip, "/v1/health", None).await.status, 200);

    // Scaling down deletes a pod, and the node stops its process.
    let pids: Vec<(String, u32)> = running
        .iter()
        .map(|p| (name(p), cluster.runtime_pid(&ns, &name(p)).unwrap()))
        .collect();
    deployments
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .unwrap();
    let left = eventually(
        cluster,
        &ns,
        "one pod to be left after scaling to 1",
        async || {
            let pods = live_pods(&pods).await;
            (pods.len() == 1).then(|| name(&pods[0]))
        },
    )
    .await;
    for (pod, pid) in &pids {
        if *pod == left {
            assert!(process_exists(*pid), "the remaining pod's runtime runs");
        } else {
            assert!(
                !process_exists(*pid),
                "the deleted pod's runtime {pid} exited"
            );
            assert_eq!(cluster.runtime_pid(&ns, pod), None);
        }
    }

    let kubectl = cluster.kubectl(&["get", "pods", "-n", &ns]);
    let out = kruntimes_tests::stdout(&kubectl);
    assert!(
        kubectl.status.success(),
        "{}",
        kruntimes_tests::stderr(&kubectl)
    );
    assert!(
        out.contains(&left) && out.contains("Running") && out.contains("1/1"),
        "{out}"
    );

    // Deleting the Deployment cascades through the garbage collector.
    deployments
        .delete("p", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        cluster,
        &ns,
        "the garbage collector to delete the ReplicaSet and pods",
        async || {
            let rs = replica_sets.list(&ListParams::default()).await.ok()?;
            (rs.items.is_empty() && live_pods(&pods).await.is_empty()).then_some(())
        },
    )
    .await;
    for (_, pid) in &pids {
        assert!(!process_exists(*pid), "runtime {pid} exited with its pod");
    }
    assert!(!process_exists(new_pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_waits_for_its_secret_and_sees_env_volumes_and_probes_like_under_a_kubelet() {
    let cluster = Cluster::shared();
    let client = cluster.client();
    let ns = cluster.namespace("harness-env").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let cm = serde_json::from_value(
        json!({"metadata": {"name": "cm"}, "data": {"a": "from-configmap"}}),
    )
    .unwrap();
    config_maps
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    // Container paths inside a script are not translated, only whole values
    // and arguments that start with a mount path: the script goes through
    // variables.
    let script = r#"printenv | sort; printf 'file:'; cat "$CFG"; echo
perl -e 'setpgrp(0, 0); sleep 3600' & echo "child:$!"
printenv > "$DATA/env"; exec sleep 3600"#;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "envpod", "labels": {POOL_LABEL: "env"}},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "volumes": [
                {"name": "data", "emptyDir": {}},
                {"name": "cfg", "configMap": {"name": "cm", "items": [{"key": "a", "path": "sub/a.txt"}]}},
            ],
            "containers": [{
                "name": "c",
                "image": "debian:bookworm",
                "command": ["sh", "-c", script],
                "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
                "env": [
                    {"name": "TOK", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "token"}}},
                    {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": true}}},
                    {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "GREETING", "value": "hi-$(NAME)-$$(NAME)"},
                    {"name": "DATA", "value": "/data"},
                    {"name": "CFG", "value": "/etc/krt-cfg/sub/a.txt"},
                ],
                "volumeMounts": [
                    {"name": "data", "mountPath": "/data"},
                    {"name": "cfg", "mountPath": "/etc/krt-cfg"},
                ],
                "readinessProbe": {"exec": {"command": ["test", "-s", "/data/env"]}, "periodSeconds": 1},
            }],
        },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();

    let waiting = eventually(
        cluster,
        &ns,
        "CreateContainerConfigError for the missing Secret",
        async || {
            let pod = pods.get("envpod").await.ok()?;
            let status = pod
                .status
                .as_ref()?
                .container_statuses
                .as_ref()?
                .first()?
                .clone();
            let waiting = status.state?.waiting?;
            (waiting.reason.as_deref() == Some("CreateContainerConfigError"))
                .then_some((waiting, pod))
        },
    )
    .await;
    assert_eq!(
        waiting.0.message.as_deref(),
        Some("secret \"tok\" not found")
    );
    assert!(!is_ready(&waiting.1));

    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "tok"}, "stringData": {"token": "s3cret"}}),
    )
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    eventually(
        cluster,
        &ns,
        "the pod to be Ready once its Secret exists",
        async || is_ready(&pods.get("envpod").await.ok()?).then_some(()),
    )
    .await;
    let log = cluster.pod_log(&ns, "envpod");
    for line in [
        "TOK=s3cret",
        "NAME=envpod",
        "GREETING=hi-envpod-$(NAME)",
        "CM_a=from-configmap",
        "file:from-configmap",
    ] {
        assert!(
            log.lines().any(|l| l == line),
            "{line:?} in the pod log:\n{log}"
        );
    }
    assert!(
        !log.contains("OPT="),
        "an optional missing key leaves OPT unset:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.starts_with("DATA=/") && l != "DATA=/data" && l.ends_with("/data")),
        "a value under a mount path is a host path:\n{log}"
    );
    // cargo sets CARGO_* for the test process; containers get none of it.
    assert!(
        !log.lines().any(|l| l.starts_with("CARGO")),
        "the container's env is clean:\n{log}"
    );

    // A process the container started in a process group of its own.
    let child: u32 = log
        .lines()
        .find_map(|l| l.strip_prefix("child:"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the child's pid in the pod log:\n{log}"));
    let pid = cluster.runtime_pid(&ns, "envpod").unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap();
    let pgrp: u32 = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(pgrp, pid, "the child has its own process group");

    pods.delete("envpod", &DeleteParams::default())
        .await
        .unwrap();
    eventually(cluster, &ns, "the deleted pod to be gone", async || {
        pods.get_opt("envpod").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(!process_exists(pid), "the pod's process {pid} exited");
    assert!(
        !process_exists(child),
        "the container's other process {child} was killed with it"
    );
}
