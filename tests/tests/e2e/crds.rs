//! The CustomResourceDefinitions as a Kubernetes 1.20 API server sees them.
//!
//! kruntimes supports clusters from 1.20 on, so every schema must be
//! *structural* by 1.20's rules (no CEL, no `$ref`, a `type` on every node
//! but the free-form ones), and the committed `crds/generated/crds.yaml` must
//! be the same three CRDs the types generate.

use serde::Deserialize;
use serde_json::{Value, json};

/// Every CRD as JSON, in `kruntimes_crds::crds()` order.
fn crds_json() -> Vec<Value> {
    kruntimes_crds::crds()
        .iter()
        .map(|crd| serde_json::to_value(crd).expect("a CRD serialises to JSON"))
        .collect()
}

fn crd_name(crd: &Value) -> &str {
    crd["metadata"]["name"].as_str().unwrap_or("<unnamed CRD>")
}

const SCHEMA_TYPES: &[&str] = &["object", "array", "string", "integer", "number", "boolean"];

/// Collects every way the schema at `node` (and below) is not structural, as
/// `path: problem`.
fn structural_violations(node: &Value, path: &str, out: &mut Vec<String>) {
    let Some(m) = node.as_object() else {
        out.push(format!(
            "{path}: schema is `{node}`, not an object, so it has no `type`"
        ));
        return;
    };
    let flag = |key: &str| m.get(key) == Some(&Value::Bool(true));
    let preserve_unknown = flag("x-kubernetes-preserve-unknown-fields");
    let int_or_string = flag("x-kubernetes-int-or-string");

    let has_type = match m.get("type") {
        None => false,
        Some(Value::String(t)) if SCHEMA_TYPES.contains(&t.as_str()) => true,
        Some(other) => {
            out.push(format!(
                "{path}: `type` is {other}; it must be one of {}",
                SCHEMA_TYPES.join(", ")
            ));
            true
        }
    };
    if !has_type && !preserve_unknown && !int_or_string {
        out.push(format!(
            "{path}: no `type` (and neither `x-kubernetes-preserve-unknown-fields: true` \
             nor `x-kubernetes-int-or-string: true`)"
        ));
    }
    for key in ["$ref", "definitions", "$defs"] {
        if m.contains_key(key) {
            out.push(format!(
                "{path}: `{key}` is not allowed; references must be inlined"
            ));
        }
    }
    for key in ["anyOf", "oneOf", "allOf", "not"] {
        if let Some(v) = m.get(key)
            && !(key == "anyOf" && int_or_string && is_int_or_string_any_of(v))
        {
            out.push(format!(
                "{path}: `{key}` is only allowed as the int-or-string pattern \
                 `anyOf: [{{type: integer}}, {{type: string}}]`"
            ));
        }
    }
    if m.contains_key("x-kubernetes-validations") {
        out.push(format!(
            "{path}: `x-kubernetes-validations` (CEL) does not exist in Kubernetes 1.20"
        ));
    }
    if m.contains_key("properties") && m.contains_key("additionalProperties") {
        out.push(format!(
            "{path}: `properties` and `additionalProperties` are mutually exclusive"
        ));
    }
    // An int-or-string node has its type in the marker (Kubernetes reads it
    // as `anyOf: [integer, string]`), so `nullable` is meaningful there too;
    // k8s-openapi emits exactly that for optional quantities.
    if m.contains_key("nullable") && !has_type && !int_or_string {
        out.push(format!("{path}: `nullable` without a `type`"));
    }
    if m.get("type") == Some(&json!("array")) && !m.contains_key("items") {
        out.push(format!("{path}: an array without `items`"));
    }

    if let Some(props) = m.get("properties") {
        match props.as_object() {
            Some(props) => {
                for (name, child) in props {
                    structural_violations(child, &format!("{path}.properties.{name}"), out);
                }
            }
            None => out.push(format!("{path}.properties: not a map of schemas")),
        }
    }
    if let Some(child) = m.get("additionalProperties") {
        structural_violations(child, &format!("{path}.additionalProperties"), out);
    }
    if let Some(child) = m.get("items") {
        if child.is_array() {
            out.push(format!(
                "{path}.items: a list of schemas (tuple validation) is not allowed"
            ));
        } else {
            structural_violations(child, &format!("{path}.items"), out);
        }
    }
}

/// The one `anyOf` a structural schema may carry: `[{type: integer}, {type: string}]`.
fn is_int_or_string_any_of(v: &Value) -> bool {
    let Some(branches) = v.as_array() else {
        return false;
    };
    let mut types: Vec<&str> = Vec::new();
    for b in branches {
        match b.as_object() {
            Some(o) if o.len() == 1 => match o.get("type").and_then(Value::as_str) {
                Some(t) => types.push(t),
                None => return false,
            },
            _ => return false,
        }
    }
    types.sort_unstable();
    types == ["integer", "string"]
}

/// Structural problems of every version's schema of one CRD, with paths.
fn crd_violations(crd: &Value) -> Vec<String> {
    let name = crd_name(crd);
    let mut out = Vec::new();
    let versions = crd["spec"]["versions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        out.push(format!("{name}: $.spec.versions is empty"));
    }
    for (i, v) in versions.iter().enumerate() {
        let path = format!("{name}: $.spec.versions[{i}].schema.openAPIV3Schema");
        let schema = &v["schema"]["openAPIV3Schema"];
        if schema.is_null() {
            out.push(format!("{path}: missing"));
            continue;
        }
        if schema.get("type") != Some(&json!("object")) {
            out.push(format!("{path}: the root must have `type: object`"));
        }
        structural_violations(schema, &path, &mut out);
    }
    out
}

#[test]
fn every_crd_schema_is_structural_by_kubernetes_1_20_rules() {
    let crds = crds_json();
    assert_eq!(
        crds.len(),
        3,
        "expected the Workflow, Run and RuntimePool CRDs"
    );
    let violations: Vec<String> = crds.iter().flat_map(crd_violations).collect();
    assert!(
        violations.is_empty(),
        "{} structural schema violation(s):\n  {}",
        violations.len(),
        violations.join("\n  ")
    );
}

#[test]
fn structural_check_reports_every_violation_with_its_json_path() {
    // Guards the check above: each rule must fire, and where.
    let schema = json!({
        "type": "object",
        "properties": {
            "untyped": {"description": "no type"},
            "free": {"x-kubernetes-preserve-unknown-fields": true},
            "quantity": {
                "x-kubernetes-int-or-string": true,
                "nullable": true,
                "anyOf": [{"type": "integer"}, {"type": "string"}]
            },
            "optional": {"type": ["string", "null"]},
            "reference": {"$ref": "#/definitions/Other"},
            "either": {"type": "string", "oneOf": [{"type": "string"}]},
            "checked": {"type": "string", "x-kubernetes-validations": [{"rule": "self != ''"}]},
            "both": {
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "additionalProperties": {"type": "string"}
            },
            "nullableOnly": {"nullable": true, "x-kubernetes-preserve-unknown-fields": true},
            "list": {"type": "array"},
            "nested": {"type": "array", "items": {"type": "object", "additionalProperties": {}}}
        }
    });
    let mut got = Vec::new();
    structural_violations(&schema, "$", &mut got);
    let want = [
        "$.properties.untyped: no `type` (and neither `x-kubernetes-preserve-unknown-fields: true` nor `x-kubernetes-int-or-string: true`)",
        "$.properties.optional: `type` is [\"string\",\"null\"]; it must be one of object, array, string, integer, number, boolean",
        "$.properties.reference: no `type` (and neither `x-kubernetes-preserve-unknown-fields: true` nor `x-kubernetes-int-or-string: true`)",
        "$.properties.reference: `$ref` is not allowed; references must be inlined",
        "$.properties.either: `oneOf` is only allowed as the int-or-string pattern `anyOf: [{type: integer}, {type: string}]`",
        "$.properties.checked: `x-kubernetes-validations` (CEL) does not exist in Kubernetes 1.20",
        "$.properties.both: `properties` and `additionalProperties` are mutually exclusive",
        "$.properties.nullableOnly: `nullable` without a `type`",
        "$.properties.list: an array without `items`",
        "$.properties.nested.items.additionalProperties: no `type` (and neither `x-kubernetes-preserve-unknown-fields: true` nor `x-kubernetes-int-or-string: true`)",
    ];
    // Property order follows serde_json's map (sorted keys), so compare as sets.
    let mut got_sorted = got.clone();
    got_sorted.sort();
    let mut want_sorted: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want_sorted.sort();
    assert_eq!(
        got_sorted,
        want_sorted,
        "violations found:\n  {}",
        got.join("\n  ")
    );
}

#[test]
fn every_crd_is_namespaced_v1alpha1_in_kruntimes_io_with_status_and_its_short_name() {
    let expected = [
        ("workflows", "Workflow", "wf"),
        ("runs", "Run", "run"),
        ("runtimepools", "RuntimePool", "rp"),
    ];
    let crds = crds_json();
    let plurals: Vec<&str> = crds
        .iter()
        .map(|c| c["spec"]["names"]["plural"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(plurals, ["workflows", "runs", "runtimepools"]);

    for (crd, (plural, kind, short)) in crds.iter().zip(expected) {
        let name = crd_name(crd);
        let spec = &crd["spec"];
        assert_eq!(name, format!("{plural}.kruntimes.io"));
        assert_eq!(spec["group"], "kruntimes.io", "{name}: group");
        assert_eq!(spec["scope"], "Namespaced", "{name}: scope");
        assert_eq!(spec["names"]["kind"], kind, "{name}: kind");
        assert_eq!(
            spec["names"]["shortNames"],
            json!([short]),
            "{name}: shortNames"
        );
        let versions = spec["versions"].as_array().expect("versions");
        assert_eq!(versions.len(), 1, "{name}: one version");
        let v = &versions[0];
        assert_eq!(v["name"], "v1alpha1", "{name}: version");
        assert_eq!(v["served"], true, "{name}: served");
        assert_eq!(v["storage"], true, "{name}: storage");
        assert_eq!(
            v["subresources"]["status"],
            json!({}),
            "{name}: the status subresource must be on, so the controller's status \
             writes cannot change the spec"
        );
    }
}

#[test]
fn workflow_and_run_show_their_phase_as_a_printer_column() {
    for crd in crds_json() {
        let name = crd_name(&crd);
        if !matches!(name, "workflows.kruntimes.io" | "runs.kruntimes.io") {
            continue;
        }
        let columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let phase = columns.iter().find(|c| c["name"] == "Phase");
        assert_eq!(
            phase,
            Some(&json!({"name": "Phase", "type": "string", "jsonPath": ".status.phase"})),
            "{name}: printer columns are {columns:?}"
        );
    }
}

/// The first place two JSON values differ, for a readable failure.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys()) {
                let p = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(a), Some(b)) => {
                        if let Some(d) = first_difference(a, b, &p) {
                            return Some(d);
                        }
                    }
                    (a, b) => return Some(format!("{p}: {a:?} vs {b:?}")),
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (a, b))| first_difference(a, b, &format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some(format!("{path}: {a} vs {b}")),
    }
}

#[test]
fn committed_crd_yaml_is_a_stream_of_exactly_the_three_generated_crds() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/generated/crds.yaml");
    let text = std::fs::read_to_string(file).expect("read crds/generated/crds.yaml");
    let committed: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .enumerate()
        .map(|(i, doc)| {
            Value::deserialize(doc).unwrap_or_else(|e| panic!("document {i} of {file}: {e}"))
        })
        .collect();
    let generated = crds_json();
    assert_eq!(
        committed.len(),
        3,
        "{file} holds {} YAML documents; expected the 3 CRDs",
        committed.len()
    );
    for (c, g) in committed.iter().zip(&generated) {
        assert_eq!(c["kind"], "CustomResourceDefinition");
        if let Some(diff) = first_difference(c, g, "$") {
            panic!(
                "{file}: CRD {} differs from the types (committed vs generated) at {diff}; \
                 regenerate it with `cargo run --bin krt -- crds > crds/generated/crds.yaml`",
                crd_name(g)
            );
        }
    }
}
