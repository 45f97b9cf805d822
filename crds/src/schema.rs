//! Schema helpers for fields whose shape the API server should not check.
//!
//! Kubernetes requires *structural* schemas: every node has a `type`, except
//! nodes marked `x-kubernetes-preserve-unknown-fields` or
//! `x-kubernetes-int-or-string`. Free-form values (matrix cells, parameter
//! values) use the first marker; the planner validates them with diagnostics
//! that are far better than the API server's.

use schemars::{Schema, SchemaGenerator, json_schema};

/// Any JSON value (a scalar, list or map); validated by the planner.
pub(crate) fn any_value(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

/// A map from string keys to any JSON value.
pub(crate) fn any_map(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}
