//! Reading a `uses:` step: resolve the entry, check `with:` against its
//! parameters, and expand it into the entry's steps. Also reads the
//! normalised form of an expanded step (`from:` and `with:` beside `run:`).

use std::sync::Arc;

use indexmap::IndexMap;

use super::super::ast::{EnvVarAst, StepAst, StepOrigin, Text, WithArg};
use super::super::diag::{Diagnostic, Severity, Span, did_you_mean};
use super::super::parse::{Entries, Reader, get, key_str};
use super::super::yaml::{Kind, Node};

const USES_STEP_KEYS: &[&str] = &["uses", "with", "name", "env"];

fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

impl Reader<'_> {
    /// `- uses: ...` in a `steps:` list.
    pub(crate) fn uses_step_item(
        &mut self,
        entries: Entries<'_>,
        uses: &(Node, Node),
        span: Span,
        what: &str,
    ) -> Vec<StepAst> {
        for key in ["run", "shell", "timeout"] {
            if let Some((k, _)) = get(entries, key) {
                let hint = if key == "run" {
                    "a step either runs a command or expands a catalog entry; make them two steps"
                } else {
                    "an entry's steps set their own; set it on the job instead"
                };
                self.err(
                    Diagnostic::error(format!("{what} has both `uses` and `{key}`"), Some(k.span))
                        .with_label("not allowed beside `uses`")
                        .with_hint(hint),
                );
            }
        }
        let rest: Vec<(Node, Node)> = entries
            .iter()
            .filter(|(k, _)| !matches!(key_str(k), "run" | "shell" | "timeout"))
            .cloned()
            .collect();
        self.check_keys(&rest, USES_STEP_KEYS, what);
        let name =
            get(entries, "name").and_then(|(_, v)| self.text(v, &format!("`name` of {what}")));
        let env = get(entries, "env").map_or_else(IndexMap::new, |(_, v)| self.env(v, what));
        let with = get(entries, "with").map(|(_, v)| v);
        self.uses_step(&uses.1, with, name, env, span, what)
    }

    /// Expands `uses:` (with its `with:`, and the step's own `name` and
    /// `env`) into the entry's steps. Returns no steps after an error, so
    /// one mistake is reported once.
    pub(crate) fn uses_step(
        &mut self,
        uses: &Node,
        with: Option<&Node>,
        name: Option<Text>,
        env: IndexMap<String, EnvVarAst>,
        span: Span,
        what: &str,
    ) -> Vec<StepAst> {
        let Some(reference) = self.string(uses, &format!("`uses` of {what}")) else {
            return Vec::new();
        };
        let Some(catalog) = self.catalog else {
            self.err(
                Diagnostic::error(
                    "a catalog entry cannot use another entry",
                    Some(reference.span),
                )
                .with_hint(
                    "write the commands with `run:`; a workflow can list both entries as steps",
                ),
            );
            return Vec::new();
        };
        let entry = match catalog.resolve(&reference.value) {
            Ok(e) => e,
            Err(e) => {
                // The first diagnostic is at the `uses:` value, in the
                // workflow; an invalid entry's own follow, in its file.
                let mut ds = e.diagnostics(reference.span).into_iter();
                if let Some(first) = ds.next() {
                    self.err(first);
                }
                self.diags.extend(ds);
                return Vec::new();
            }
        };
        let before = self.diags.len();
        let label = reference.value.trim().to_string();
        let mut given: IndexMap<String, WithArg> = IndexMap::new();
        if let Some(w) = with
            && let Some(entries) = self.map(w, &format!("`with` of {what}"))
        {
            for (k, v) in entries {
                let key = key_str(k);
                let Some(param) = entry.params.get(key) else {
                    let hint = did_you_mean(key, entry.params.keys().map(String::as_str))
                        .unwrap_or_else(|| {
                            if entry.params.is_empty() {
                                format!("`{label}` takes no parameters")
                            } else {
                                format!(
                                    "parameters of `{label}`: {}",
                                    entry.params.keys().cloned().collect::<Vec<_>>().join(", ")
                                )
                            }
                        });
                    self.err(
                        Diagnostic::error(
                            format!("`{label}` has no parameter `{key}`"),
                            Some(k.span),
                        )
                        .with_label("unknown parameter")
                        .with_hint(hint),
                    );
                    continue;
                };
                let Some(arg) = self.with_arg(v, &format!("`with.{key}` of {what}"), false) else {
                    continue;
                };
                if arg.template.is_none()
                    && let Some(default) = &param.default
                    && let Some(expected) = type_mismatch(default, &arg.value)
                {
                    self.err(
                        Diagnostic::error(
                            format!("`with.{key}` of {what} must be {expected}"),
                            Some(v.span),
                        )
                        .with_label(format!("expected {expected}"))
                        .with_hint(format!("`{key}`: {}", param.description)),
                    );
                }
                given.insert(key.to_string(), arg);
            }
        }
        for (p, param) in &entry.params {
            if param.required && !given.contains_key(p) {
                self.err(
                    Diagnostic::error(
                        format!("`{label}` needs parameter `{p}` in {what}"),
                        Some(reference.span),
                    )
                    .with_label(format!("`with.{p}` is missing"))
                    .with_hint(format!("add `with: {{{p}: ...}}`: {}", param.description)),
                );
            }
        }
        if self.diags[before..]
            .iter()
            .any(|d| d.severity == Severity::Error)
        {
            return Vec::new();
        }
        let with = entry
            .params
            .iter()
            .map(|(k, p)| {
                let arg = given.shift_remove(k).unwrap_or_else(|| WithArg {
                    value: p.default.clone().unwrap_or_default(),
                    template: None,
                });
                (k.clone(), arg)
            })
            .collect();
        let origin = Arc::new(StepOrigin {
            from: entry.from_label(),
            span: reference.span,
            with,
        });
        let single = entry.steps.len() == 1;
        entry
            .steps
            .iter()
            .enumerate()
            .map(|(i, step)| {
                let mut step_env = entry.env.clone();
                step_env.extend(step.env.clone());
                step_env.extend(env.clone());
                StepAst {
                    span,
                    name: step_name(name.as_ref(), step.name.as_ref(), single, i),
                    run: step.run.clone(),
                    shell: step.shell.clone(),
                    env: step_env,
                    timeout: step.timeout.clone(),
                    origin: Some(origin.clone()),
                }
            })
            .collect()
    }

    /// One `with:` value: a scalar; a string holding a template is rendered
    /// in the workflow's context when the job becomes ready.
    fn with_arg(&mut self, node: &Node, what: &str, normalised: bool) -> Option<WithArg> {
        if node.is_null() && normalised {
            // Some API servers store `""` in a custom resource as null.
            return Some(WithArg {
                value: "".into(),
                template: None,
            });
        }
        if node.is_null() {
            self.err(
                Diagnostic::error(format!("{what} has no value"), Some(node.span))
                    .with_hint("give a value, or leave the key out to use the default"),
            );
            return None;
        }
        let value = self.scalar_value(node, what)?;
        let template = match (&node.kind, &value.value) {
            (Kind::Scalar(_, style), serde_json::Value::String(s)) if is_template(s) => {
                Some(Text {
                    value: s.clone(),
                    span: node.span,
                    style: *style,
                    file: self.file.clone(),
                })
            }
            _ => None,
        };
        Some(WithArg {
            value: value.value,
            template,
        })
    }

    /// `from:` and `with:` beside `run:`: how `to_spec` writes an expanded
    /// step. Any parameter names are accepted; the entry is not consulted.
    pub(crate) fn normalised_origin(
        &mut self,
        entries: Entries<'_>,
        what: &str,
    ) -> Option<Arc<StepOrigin>> {
        let from = get(entries, "from");
        let with = get(entries, "with");
        if self.catalog.is_none() {
            for (k, _) in [from, with].into_iter().flatten() {
                self.err(
                    Diagnostic::error(
                        format!("`{}` is not allowed in a catalog entry's step", key_str(k)),
                        Some(k.span),
                    )
                    .with_hint("declare `params:` and read them as `{{ with.<name> }}`"),
                );
            }
            return None;
        }
        let Some((_, from)) = from else {
            if let Some((k, _)) = with {
                self.err(
                    Diagnostic::error(format!("{what} has `with` but no `uses`"), Some(k.span))
                        .with_label("values for nothing")
                        .with_hint(
                            "`with:` passes values to the catalog entry named by `uses:`, such as `uses: cargo-test@v1`",
                        ),
                );
            }
            return None;
        };
        let from = self.string(from, &format!("`from` of {what}"))?;
        let mut args = IndexMap::new();
        if let Some((_, w)) = with
            && let Some(entries) = self.map(w, &format!("`with` of {what}"))
        {
            for (k, v) in entries {
                let what = format!("`with.{}` of {what}", key_str(k));
                if let Some(arg) = self.with_arg(v, &what, true) {
                    args.insert(key_str(k).to_string(), arg);
                }
            }
        }
        Some(Arc::new(StepOrigin {
            from: from.value,
            span: from.span,
            with: args,
        }))
    }
}

/// What a literal value should have been, when its type does not fit the
/// parameter's default (`true`/`false` text counts as a boolean).
fn type_mismatch(default: &serde_json::Value, value: &serde_json::Value) -> Option<&'static str> {
    use serde_json::Value as V;
    match (default, value) {
        (V::Bool(_), V::Bool(_)) => None,
        (V::Bool(_), V::String(s)) if s == "true" || s == "false" => None,
        (V::Bool(_), _) => Some("`true` or `false`"),
        (V::Number(_), V::Number(_)) => None,
        (V::Number(_), _) => Some("a number"),
        _ => None,
    }
}

/// The name of step `i` of an entry: the `uses:` step's `name` replaces a
/// single step's and prefixes several steps' (when those are plain text).
fn step_name(uses: Option<&Text>, own: Option<&Text>, single: bool, i: usize) -> Option<Text> {
    match (uses, own) {
        (Some(u), _) if single => Some(u.clone()),
        (Some(u), Some(own)) if !is_template(&own.value) => Some(Text {
            value: format!("{}: {}", u.value, own.value),
            ..u.clone()
        }),
        (Some(u), None) => Some(Text {
            value: format!("{}: step {}", u.value, i + 1),
            ..u.clone()
        }),
        (_, own) => own.cloned(),
    }
}
