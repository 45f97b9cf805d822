//! RuntimePool reconciler: an owned Secret (runtime token and store
//! settings) and an owned Deployment of warm runtime pods; status from the
//! Deployment and from the dispatcher's slot accounting.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PodSpec, PodTemplateSpec, Probe, Secret, SecretKeySelector,
    SecretVolumeSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kruntimes_crds::{RuntimePool, RuntimePoolStatus};
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use sha2::{Digest as _, Sha256};

use crate::names::*;
use crate::{Context, Error};

/// Reconciles one pool.
pub(crate) async fn reconcile(pool: Arc<RuntimePool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = pool.namespace().unwrap_or_else(|| "default".into());
    let name = pool_object_name(&pool);
    let Some(owner) = pool.controller_owner_ref(&()) else {
        return Ok(Action::await_change());
    };
    if pool.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let pp = PatchParams::apply(MANAGER).force();

    // Secret: keep an existing token, generate one otherwise.
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = secrets.get_opt(&name).await?;
    let token = existing
        .as_ref()
        .and_then(|s| s.data.as_ref())
        .and_then(|d| d.get(TOKEN_KEY))
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .filter(|t| t.len() >= 16)
        .unwrap_or_else(generate_token);
    let token_value = token.clone();
    let mut data = BTreeMap::new();
    data.insert(TOKEN_KEY.to_string(), ByteString(token.into_bytes()));
    for (k, v) in &ctx.opts.store_env {
        data.insert(k.clone(), ByteString(v.clone().into_bytes()));
    }
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            owner_references: Some(vec![owner.clone()]),
            labels: Some(labels(&pool)),
            ..Default::default()
        },
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    secrets.patch(&name, &pp, &Patch::Apply(&secret)).await?;

    // Deployment.
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let mut deployment = build_deployment(&pool, &ctx.opts.krt_image, &ctx.opts.store_env);
    deployment.metadata.owner_references = Some(vec![owner]);
    // Runtimes read their token once: a new token (the Secret was deleted)
    // rolls the pods.
    if let Some(annotations) = deployment
        .spec
        .as_mut()
        .and_then(|s| s.template.metadata.as_mut())
        .and_then(|m| m.annotations.as_mut())
    {
        let digest = Sha256::digest(token_value.as_bytes());
        annotations.insert("kruntimes.io/token-hash".into(), hex::encode(&digest[..8]));
    }
    let applied = deployments
        .patch(&name, &pp, &Patch::Apply(&deployment))
        .await?;

    // Status.
    let ready = applied
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let slots = pool.spec.slots;
    let busy = ctx.slots.busy(&ns, &pool.name_any());
    let (status_value, reason, message) = if pool.spec.replicas == 0 {
        (
            "False",
            "ScaledToZero",
            "the pool has 0 replicas".to_string(),
        )
    } else if ready >= pool.spec.replicas {
        (
            "True",
            "AllReplicasReady",
            format!("{ready} of {} replicas ready", pool.spec.replicas),
        )
    } else {
        (
            "False",
            "ReplicasNotReady",
            format!("{ready} of {} replicas ready", pool.spec.replicas),
        )
    };
    let old = pool.status.clone().unwrap_or_default();
    let generation = pool.metadata.generation;
    let old_ready = old.conditions.iter().find(|c| c.type_ == "Ready");
    let transition = match old_ready {
        Some(c) if c.status == status_value => c.last_transition_time.clone(),
        _ => Time(jiff_now()),
    };
    let status = RuntimePoolStatus {
        ready_replicas: ready,
        total_slots: ready.max(0) as u32 * slots,
        busy_slots: busy,
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: status_value.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: transition,
        }],
        observed_generation: generation,
    };
    if pool.status.as_ref() != Some(&status) {
        let pools: Api<RuntimePool> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = serde_json::json!({
            "apiVersion": "kruntimes.io/v1alpha1",
            "kind": "RuntimePool",
            "status": status,
        });
        pools
            .patch_status(&pool.name_any(), &pp, &Patch::Apply(&patch))
            .await?;
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

pub(crate) fn jiff_now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

fn labels(pool: &RuntimePool) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), RUNTIME_APP.into()),
        ("app.kubernetes.io/managed-by".into(), MANAGER.into()),
        (POOL_LABEL.into(), pool.name_any()),
    ])
}

/// A 256-bit random token, hex.
pub(crate) fn generate_token() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS random source failed");
    hex::encode(b)
}

/// The Deployment of a pool's warm runtimes.
pub fn build_deployment(
    pool: &RuntimePool,
    krt_image: &str,
    store_env: &[(String, String)],
) -> Deployment {
    let name = pool_object_name(pool);
    let port = pool.spec.port.unwrap_or(DEFAULT_PORT);
    let krt_image = pool.spec.krt_image.as_deref().unwrap_or(krt_image);
    let mut env = vec![
        EnvVar {
            name: "POD_IP".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "status.podIP".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        plain("KRT_LISTEN", format!("$(POD_IP):{port}")),
        plain("KRT_TOKEN_FILE", format!("{TOKEN_DIR}/{TOKEN_KEY}")),
        plain("KRT_SLOTS", pool.spec.slots.to_string()),
        plain("KRT_WORK_DIR", WORK_DIR.to_string()),
    ];
    // Store settings come from the pool Secret, never from plain values.
    for (k, _) in store_env {
        env.push(EnvVar {
            name: k.clone(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: name.clone(),
                    key: k.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    env.extend(pool.spec.env.iter().cloned());
    // Store settings are in the Secret; a change must roll the pods.
    let mut h = Sha256::new();
    for (k, v) in store_env {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    let config_hash = hex::encode(&h.finalize()[..8]);

    let selector = BTreeMap::from([(POOL_LABEL.to_string(), pool.name_any())]);
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: pool.namespace(),
            labels: Some(labels(pool)),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(pool.spec.replicas),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(pool)),
                    annotations: Some(BTreeMap::from([(
                        "kruntimes.io/config-hash".to_string(),
                        config_hash,
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: pool.spec.service_account_name.clone(),
                    node_selector: (!pool.spec.node_selector.is_empty())
                        .then(|| pool.spec.node_selector.clone()),
                    tolerations: (!pool.spec.tolerations.is_empty())
                        .then(|| pool.spec.tolerations.clone()),
                    // Running steps get the drain timeout to finish.
                    termination_grace_period_seconds: Some(70),
                    init_containers: Some(vec![Container {
                        name: "install-krt".into(),
                        image: Some(krt_image.to_string()),
                        command: Some(vec![
                            "/krt".into(),
                            "self-install".into(),
                            format!("{KRT_BIN_DIR}/krt"),
                        ]),
                        volume_mounts: Some(vec![mount("krt-bin", KRT_BIN_DIR, false)]),
                        ..Default::default()
                    }]),
                    containers: vec![Container {
                        name: RUNTIME_CONTAINER.into(),
                        image: Some(pool.spec.image.clone()),
                        command: Some(vec![
                            format!("{KRT_BIN_DIR}/krt"),
                            "runtime".into(),
                            "serve".into(),
                        ]),
                        env: Some(env),
                        ports: Some(vec![ContainerPort {
                            name: Some("http".into()),
                            container_port: port,
                            protocol: Some("TCP".into()),
                            ..Default::default()
                        }]),
                        readiness_probe: Some(Probe {
                            http_get: Some(HTTPGetAction {
                                path: Some("/v1/health".into()),
                                port: IntOrString::String("http".into()),
                                ..Default::default()
                            }),
                            period_seconds: Some(1),
                            failure_threshold: Some(2),
                            ..Default::default()
                        }),
                        resources: pool.spec.resources.clone(),
                        volume_mounts: Some(vec![
                            mount("krt-bin", KRT_BIN_DIR, true),
                            mount("krt-token", TOKEN_DIR, true),
                            mount("work", WORK_DIR, false),
                        ]),
                        ..Default::default()
                    }],
                    volumes: Some(vec![
                        Volume {
                            name: "krt-bin".into(),
                            empty_dir: Some(EmptyDirVolumeSource::default()),
                            ..Default::default()
                        },
                        Volume {
                            name: "krt-token".into(),
                            secret: Some(SecretVolumeSource {
                                secret_name: Some(name.clone()),
                                default_mode: Some(0o400),
                                items: Some(vec![k8s_openapi::api::core::v1::KeyToPath {
                                    key: TOKEN_KEY.into(),
                                    path: TOKEN_KEY.into(),
                                    mode: None,
                                }]),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                        Volume {
                            name: "work".into(),
                            empty_dir: Some(EmptyDirVolumeSource::default()),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn plain(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> RuntimePool {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kruntimes.io/v1alpha1",
            "kind": "RuntimePool",
            "metadata": {"name": "p", "namespace": "ci", "uid": "u1"},
            "spec": {"image": "rust:1.88", "replicas": 3, "slots": 6,
                     "env": [{"name": "CARGO_HOME", "value": "/cache/cargo"}]},
        }))
        .unwrap()
    }

    #[test]
    fn the_deployment_copies_krt_into_any_image_and_probes_health() {
        let store = vec![
            ("KRT_STORE".to_string(), "s3://b/p".to_string()),
            ("AWS_SECRET_ACCESS_KEY".to_string(), "hush".to_string()),
        ];
        let d = build_deployment(&pool(), "reg/krt:1", &store);
        assert_eq!(d.metadata.name.as_deref(), Some("krt-p"));
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        let pod = spec.template.spec.unwrap();
        let init = &pod.init_containers.unwrap()[0];
        assert_eq!(init.image.as_deref(), Some("reg/krt:1"));
        assert_eq!(
            init.command.as_ref().unwrap(),
            &vec![
                "/krt".to_string(),
                "self-install".into(),
                "/opt/kruntimes/bin/krt".into()
            ]
        );
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("rust:1.88"));
        assert_eq!(c.command.as_ref().unwrap()[0], "/opt/kruntimes/bin/krt");
        let env = c.env.as_ref().unwrap();
        let get = |n: &str| env.iter().find(|e| e.name == n).unwrap();
        assert_eq!(get("KRT_LISTEN").value.as_deref(), Some("$(POD_IP):7070"));
        assert_eq!(get("KRT_SLOTS").value.as_deref(), Some("6"));
        assert_eq!(get("CARGO_HOME").value.as_deref(), Some("/cache/cargo"));
        // Credentials never appear as plain values in the pod spec.
        let secret = get("AWS_SECRET_ACCESS_KEY");
        assert!(secret.value.is_none());
        assert_eq!(
            secret
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap()
                .name,
            "krt-p"
        );
        let probe = c
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(probe.path.as_deref(), Some("/v1/health"));
        // A store change rolls the pods.
        let other = build_deployment(&pool(), "reg/krt:1", &store[..1]);
        let hash = |d: &Deployment| {
            d.spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .as_ref()
                .unwrap()["kruntimes.io/config-hash"]
                .clone()
        };
        assert_ne!(
            hash(&build_deployment(&pool(), "reg/krt:1", &store)),
            hash(&other)
        );
    }

    #[test]
    fn tokens_are_long_and_random() {
        let (a, b) = (generate_token(), generate_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
