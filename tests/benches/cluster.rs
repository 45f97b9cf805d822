//! Cluster-mode dispatch on the real test cluster (etcd, kube-apiserver and
//! kube-controller-manager 1.20, the test node, `krt controller`, runtimes).
//!
//! Run it:   cargo bench -p kruntimes-tests --bench cluster
//!
//! A RuntimePool of 2 pods x 8 slots; after a warm-up of 16 Runs, two
//! passes of 200 Runs of `true`: one submitter creating Runs one after the
//! other (as a CI pipeline or the Workflow controller does), then 8
//! submitters at once (the API server's create latency then grows with its
//! queue, and counts toward dispatch). For each Run:
//! - dispatch latency: `status.startTime` (the runtime's timestamp of the
//!   step's process start, microseconds) minus the moment just before its
//!   create request was sent;
//! - completion latency: `status.completionTime` minus the same moment.
//!
//! Throughput is Runs / (last completion - first create). The controller's
//! own share (first seen -> process start) comes from its metrics.
//!
//! Baseline in the same run: the same 200 Runs POSTed straight to the two
//! runtimes over HTTP (no Kubernetes, 16 in flight), which is the floor the
//! controller adds to. For reference, the earlier Go kruntimes published
//! p50 dispatch 207 ms, p50 completion 580 ms and 11.3 Runs/s on kind.
//!
//! Without `--bench` (as under `cargo test --benches`) each pass has 20 Runs.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kruntimes_crds::{Run, RunPhase, RuntimePool};
use kruntimes_tests::cluster::{Cluster, KRT_IMAGE};
use kruntimes_tests::http;
use kube::api::{ListParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;

static CREATE_US: std::sync::Mutex<Vec<i64>> = std::sync::Mutex::new(Vec::new());

/// The median of a Prometheus histogram, from its cumulative buckets.
fn histogram_p50(text: &str, name: &str) -> Option<f64> {
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{name}_bucket{{le=\"")))
        .filter_map(|l| {
            let (le, n) = l.split_once("\"} ")?;
            Some((le.parse().unwrap_or(f64::INFINITY), n.parse().ok()?))
        })
        .collect();
    let total = buckets.last()?.1;
    buckets
        .iter()
        .find(|(_, n)| *n >= total / 2.0)
        .map(|(le, _)| *le)
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n: usize = if full { 200 } else { 20 };
    let cluster = Cluster::shared();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let client = cluster.client();
        let ns = cluster.namespace("bench").await;
        let pools: Api<RuntimePool> = Api::namespaced(client.clone(), &ns);
        let pool: RuntimePool = serde_json::from_value(json!({
            "apiVersion": "kruntimes.io/v1alpha1", "kind": "RuntimePool",
            "metadata": {"name": "bench", "namespace": ns},
            "spec": {"image": "debian:bookworm", "replicas": 2, "slots": 8, "krtImage": KRT_IMAGE},
        }))
        .unwrap();
        pools.create(&PostParams::default(), &pool).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let p = pools.get("bench").await.unwrap();
            if p.status.as_ref().is_some_and(|s| s.ready_replicas == 2 && s.total_slots == 16) {
                break;
            }
            assert!(Instant::now() < deadline, "the pool did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let runs: Api<Run> = Api::namespaced(client.clone(), &ns);

        // Watch every Run to the end.
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Run>();
        let watch_api = runs.clone();
        tokio::spawn(async move {
            let mut s = watcher(watch_api, watcher::Config::default()).applied_objects().boxed();
            while let Some(Ok(r)) = s.next().await {
                let terminal = matches!(
                    r.status.as_ref().and_then(|s| s.phase),
                    Some(RunPhase::Succeeded | RunPhase::Failed | RunPhase::TimedOut | RunPhase::Cancelled)
                );
                if terminal {
                    let _ = done_tx.send(r);
                }
            }
        });

        let batch = |prefix: &'static str, count: usize, inflight: usize| {
            let runs = runs.clone();
            let ns = ns.clone();
            async move {
                let created: HashMap<String, i64> = futures::stream::iter(0..count)
                    .map(|i| {
                        let runs = runs.clone();
                        let ns = ns.clone();
                        async move {
                            let name = format!("{prefix}{i}");
                            let r: Run = serde_json::from_value(json!({
                                "apiVersion": "kruntimes.io/v1alpha1", "kind": "Run",
                                "metadata": {"name": name, "namespace": ns},
                                "spec": {"job": "t", "pool": "bench", "steps": [{"run": "true"}]},
                            }))
                            .unwrap();
                            let t = now_us();
                            runs.create(&PostParams::default(), &r).await.unwrap();
                            CREATE_US.lock().unwrap().push(now_us() - t);
                            (name, t)
                        }
                    })
                    .buffer_unordered(inflight)
                    .collect()
                    .await;
                created
            }
        };

        // Warm-up: connections, caches, the first workspace of each slot.
        let warm = batch("warm", 16, 4).await;
        let mut seen = 0;
        let mut finished: HashMap<String, Run> = HashMap::new();
        while seen < warm.len() {
            let r = done_rx.recv().await.unwrap();
            if warm.contains_key(&r.name_any()) && finished.insert(r.name_any(), r).is_none() {
                seen += 1;
            }
        }

        let mut throughputs = Vec::new();
        for (prefix, label, inflight) in [("seq", "one submitter", 1usize), ("par", "8 concurrent submitters", 8)] {
        let t0 = Instant::now();
        CREATE_US.lock().unwrap().clear();
        let created = batch(prefix, n, inflight).await;
        let create_secs = t0.elapsed().as_secs_f64();
        let mut results: HashMap<String, Run> = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(300);
        while results.len() < n {
            let r = tokio::time::timeout_at(deadline.into(), done_rx.recv())
                .await
                .expect("all Runs finish within 300 s")
                .unwrap();
            if created.contains_key(&r.name_any()) {
                results.insert(r.name_any(), r);
            }
        }
        let mut dispatch = Vec::new();
        let mut completion = Vec::new();
        let first = created.values().min().copied().unwrap();
        let mut last_done = 0i64;
        let mut failed = 0;
        for (name, r) in &results {
            let st = r.status.as_ref().unwrap();
            if st.phase != Some(RunPhase::Succeeded) {
                failed += 1;
                continue;
            }
            let c = created[name];
            let start = st.start_time.as_ref().unwrap().0.as_microsecond();
            let end = st.completion_time.as_ref().unwrap().0.as_microsecond();
            dispatch.push((start - c) as f64 / 1000.0);
            completion.push((end - c) as f64 / 1000.0);
            last_done = last_done.max(end);
        }
        assert_eq!(failed, 0, "every Run succeeds");
        dispatch.sort_by(f64::total_cmp);
        completion.sort_by(f64::total_cmp);
        let span = (last_done - first) as f64 / 1e6;
        let tput = n as f64 / span;
        let mut creates = CREATE_US.lock().unwrap().clone();
        creates.sort_unstable();
        println!("{n} Runs of `true`, RuntimePool 2 pods x 8 slots, {label} ({inflight} create(s) in flight; creates took {create_secs:.2} s):");
        println!(
            "  dispatch   (create -> process start): p50 {:7.1} ms  p95 {:7.1} ms  max {:7.1} ms",
            pct(&dispatch, 0.5),
            pct(&dispatch, 0.95),
            dispatch.last().unwrap()
        );
        println!(
            "  completion (create -> final status):  p50 {:7.1} ms  p95 {:7.1} ms  max {:7.1} ms",
            pct(&completion, 0.5),
            pct(&completion, 0.95),
            completion.last().unwrap()
        );
        println!(
            "  throughput {tput:.1} Runs/s over {span:.2} s; the create request alone: p50 {:.1} ms",
            creates[creates.len() / 2] as f64 / 1000.0
        );
        throughputs.push(tput);

        }

        // Baseline: the same Runs straight to the runtimes, no Kubernetes.
        let secret: Secret = Api::namespaced(client.clone(), &ns).get("krt-bench").await.unwrap();
        let token = String::from_utf8(secret.data.unwrap()["token"].0.clone()).unwrap();
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let addrs: Vec<std::net::SocketAddr> = pods
            .list(&ListParams::default().labels("kruntimes.io/pool=bench"))
            .await
            .unwrap()
            .items
            .iter()
            .map(|p| format!("{}:7070", p.status.as_ref().unwrap().pod_ip.as_ref().unwrap()).parse().unwrap())
            .collect();
        let direct = tokio::task::spawn_blocking(move || {
            let t0 = Instant::now();
            std::thread::scope(|s| {
                for w in 0..16usize {
                    let (addrs, token) = (&addrs, &token);
                    s.spawn(move || {
                        for i in (w..n).step_by(16) {
                            let addr = addrs[i % addrs.len()];
                            let id = format!("direct-{i}");
                            let body = format!(r#"{{"id":"{id}","job":"t","steps":[{{"run":"true"}}]}}"#);
                            let r = http::request(addr, "POST", "/v1/runs", Some(token), Some(&body));
                            assert!(r.status == 201, "{}", r.body);
                            // Follow the events to the end, as the controller does.
                            let ev = http::request(addr, "GET", &format!("/v1/runs/{id}/events"), Some(token), None);
                            assert!(ev.body.contains("\"finished\""), "{}", ev.body);
                        }
                    });
                }
            });
            t0.elapsed().as_secs_f64()
        })
        .await
        .unwrap();
        let direct_tput = n as f64 / direct;

        println!(
            "baseline, the same Runs POSTed straight to the runtimes (no Kubernetes, 16 in flight): {direct_tput:.1} Runs/s; cluster/direct = {:.2} (one submitter), {:.2} (8)",
            throughputs[0] / direct_tput,
            throughputs[1] / direct_tput
        );
        println!(
            "controller's own share, first seen -> process start: p50 <= {} ms (histogram bucket)",
            cluster
                .controller_metrics_addr()
                .map(|a| http::request(a, "GET", "/metrics", None, None).body)
                .and_then(|m| histogram_p50(&m, "krt_controller_dispatch_latency_seconds"))
                .map_or("?".into(), |s| format!("{}", s * 1000.0))
        );
        println!("reference (Go kruntimes on kind): p50 dispatch 207 ms, p50 completion 580 ms, 11.3 Runs/s");
    });
}
