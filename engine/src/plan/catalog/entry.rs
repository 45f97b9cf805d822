//! One catalog entry file: reading it out of the located YAML tree and
//! checking it on its own, with diagnostics that point into the entry file.
//!
//! ```yaml
//! name: cargo-test                  # lowercase letters, digits, `-`
//! version: 1.2.0                    # MAJOR.MINOR.PATCH; the file is v<MAJOR>.yaml
//! category: rust                    # groups `krt catalog list` and the README
//! description: Run the tests ...    # one line
//! params:
//!   nextest: {description: ..., default: false}
//!   package: {description: ..., required: true}
//! env: {CARGO_TERM_COLOR: never}    # for every step
//! steps:                            # like a job's steps; templates read `with.<param>`
//!   - name: cargo test
//!     run: cargo test {{ with.args }}
//! example: |                        # a whole workflow using the entry (tested)
//!   jobs: {test: {uses: cargo-test@v1}}
//! ```

use std::sync::Arc;

use indexmap::IndexMap;
use kruntimes_crds::duration::parse_duration;

use super::super::ast::{EnvVarAst, StepAst, Text};
use super::super::diag::{Diagnostic, Severity, Source, Span, did_you_mean};
use super::super::parse::{Reader, get, key_str};
use super::super::template;
use super::super::validate::{is_dns_label, is_identifier};
use super::super::yaml::{self, Kind};

const ENTRY_KEYS: &[&str] = &[
    "name",
    "version",
    "category",
    "description",
    "params",
    "env",
    "steps",
    "example",
];
const PARAM_KEYS: &[&str] = &["description", "required", "default"];

/// A catalog entry: a versioned step template.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Name, such as `cargo-test`.
    pub name: String,
    /// Full version, such as `1.2.0`.
    pub version: String,
    /// The major version, which `@v<major>` selects.
    pub major: u32,
    /// Group shown by `krt catalog list` (`rust`, `python`, ...).
    pub category: String,
    /// One line.
    pub description: String,
    /// Parameters in file order.
    pub params: IndexMap<String, EntryParam>,
    /// Environment of every step.
    pub env: IndexMap<String, EnvVarAst>,
    /// The steps; their texts point into [`Entry::source`].
    pub steps: Vec<StepAst>,
    /// A workflow that uses the entry.
    pub example: Option<String>,
    /// The file.
    pub source: Arc<Source>,
}

/// One parameter of an entry.
#[derive(Clone, Debug)]
pub struct EntryParam {
    /// Span of its name in the entry file.
    pub key: Span,
    /// What it does.
    pub description: String,
    /// True when a `uses:` step must give it.
    pub required: bool,
    /// The value when not given (every optional parameter has one).
    pub default: Option<serde_json::Value>,
}

impl Entry {
    /// Provenance recorded on expanded steps: `cargo-test@1.2.0`.
    pub fn from_label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// Parses `MAJOR.MINOR.PATCH` and returns the major version.
pub fn major_of(version: &str) -> Option<u32> {
    let parts: Vec<&str> = version.split('.').collect();
    if parts.len() != 3
        || parts
            .iter()
            .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    parts[0].parse().ok()
}

/// Reads and checks an entry. `expect` is `(name, major)` when the file's
/// location says what it must be (`catalog/<name>/v<major>.yaml`). Errors
/// carry the entry's file, so they render with its path, line and column.
pub fn read(source: Arc<Source>, expect: Option<(&str, u32)>) -> Result<Entry, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let entry = read_inner(&source, expect, &mut diags);
    for d in &mut diags {
        if d.file.is_none() {
            d.file = Some(source.clone());
        }
    }
    match entry {
        Some(e) if !diags.iter().any(|d| d.severity == Severity::Error) => Ok(e),
        _ => {
            if diags.is_empty() {
                diags.push(
                    Diagnostic::error("the catalog entry is invalid", None)
                        .in_file(Some(source.clone())),
                );
            }
            Err(diags)
        }
    }
}

fn read_inner(
    source: &Arc<Source>,
    expect: Option<(&str, u32)>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Entry> {
    let (root, problems) = match yaml::load(&source.text) {
        Ok(x) => x,
        Err(fatal) => {
            diags.push(fatal);
            return None;
        }
    };
    diags.extend(problems);
    let mut r = Reader {
        diags,
        catalog: None,
        file: Some(source.clone()),
    };
    let entries = r.map(&root, "the catalog entry")?;
    r.check_keys(entries, ENTRY_KEYS, "the catalog entry");
    let required = |r: &mut Reader<'_>, key: &str, hint: &str| {
        let found = get(entries, key).and_then(|(_, v)| r.string(v, &format!("`{key}`")));
        if get(entries, key).is_none() {
            r.err(
                Diagnostic::error(format!("the catalog entry has no `{key}`"), Some(root.span))
                    .with_hint(hint.to_string()),
            );
        }
        found
    };
    let name = required(&mut r, "name", "add `name: <entry-name>`");
    let version = required(&mut r, "version", "add `version: 1.0.0`");
    let description = required(
        &mut r,
        "description",
        "add a one-line `description:`; `krt catalog list` shows it",
    );
    let category = get(entries, "category")
        .and_then(|(_, v)| r.string(v, "`category`"))
        .map_or_else(|| "generic".to_string(), |c| c.value);
    let mut major = 0;
    if let Some(n) = &name {
        if !is_dns_label(&n.value) || n.value.len() > 63 {
            r.err(
                Diagnostic::error(format!("invalid entry name `{}`", n.value), Some(n.span))
                    .with_hint("use lowercase letters, digits and `-`, such as `cargo-test`"),
            );
        }
        if let Some((want, _)) = expect
            && n.value != want
        {
            r.err(
                Diagnostic::error(
                    format!("the entry is named `{}` but its folder is `{want}`", n.value),
                    Some(n.span),
                )
                .with_hint(format!(
                    "an entry lives in `catalog/<name>/v<major>.yaml`: rename it `{want}` or move the file"
                )),
            );
        }
    }
    if let Some(v) = &version {
        match major_of(&v.value) {
            None => r.err(
                Diagnostic::error(format!("invalid version `{}`", v.value), Some(v.span))
                    .with_label("not MAJOR.MINOR.PATCH")
                    .with_hint("write a version such as `1.0.0`; `uses: name@v1` selects major 1"),
            ),
            Some(m) => {
                major = m;
                if let Some((_, want)) = expect
                    && m != want
                {
                    r.err(
                        Diagnostic::error(
                            format!(
                                "version `{}` has major {m}, but the file is `v{want}.yaml`",
                                v.value
                            ),
                            Some(v.span),
                        )
                        .with_hint(format!(
                            "a new major version goes in a new file, `v{m}.yaml`"
                        )),
                    );
                }
            }
        }
    }
    if let Some(d) = &description
        && (d.value.trim().is_empty() || d.value.trim().contains('\n'))
    {
        r.err(
            Diagnostic::error("the description must be one line", Some(d.span))
                .with_hint("say what the entry does in one line; document parameters in their own `description`"),
        );
    }
    let params = match get(entries, "params") {
        Some((_, n)) => params(&mut r, n),
        None => IndexMap::new(),
    };
    let env = match get(entries, "env") {
        Some((_, n)) => r.env(n, "the catalog entry"),
        None => IndexMap::new(),
    };
    let steps = match get(entries, "steps") {
        Some((k, n)) => {
            if !matches!(&n.kind, Kind::Seq(items) if !items.is_empty()) {
                r.err(
                    Diagnostic::error("the catalog entry has no steps", Some(k.span))
                        .with_hint("add a `steps:` list such as `- run: make test`"),
                );
            }
            r.steps(n, "the catalog entry")
        }
        None => {
            r.err(
                Diagnostic::error("the catalog entry has no `steps`", Some(root.span))
                    .with_hint("add a `steps:` list such as `- run: make test`"),
            );
            Vec::new()
        }
    };
    let example = get(entries, "example")
        .and_then(|(_, v)| r.text(v, "`example`"))
        .map(|t| t.value);
    let mut c = Checker {
        source,
        params: &params,
        entry_env: &env,
        diags: Vec::new(),
    };
    c.check(&steps);
    let checked = c.diags;
    diags.extend(checked);
    Some(Entry {
        name: name?.value,
        version: version?.value,
        major,
        category,
        description: description?.value.trim().to_string(),
        params,
        env,
        steps,
        example,
        source: source.clone(),
    })
}

fn params(r: &mut Reader<'_>, node: &yaml::Node) -> IndexMap<String, EntryParam> {
    let mut out = IndexMap::new();
    let Some(entries) = r.map(node, "`params`") else {
        return out;
    };
    for (k, v) in entries {
        let name = key_str(k);
        let what = format!("parameter `{name}`");
        if !is_identifier(name) {
            r.err(
                Diagnostic::error(format!("invalid parameter name `{name}`"), Some(k.span))
                    .with_hint("use letters, digits and `_`, so templates can read `with.name`"),
            );
        }
        let Some(fields) = r.map(v, &what) else {
            continue;
        };
        r.check_keys(fields, PARAM_KEYS, &what);
        let description = get(fields, "description")
            .and_then(|(_, d)| r.string(d, "`description`"))
            .map(|s| s.value);
        if description.is_none() {
            r.err(
                Diagnostic::error(format!("{what} has no `description`"), Some(k.span))
                    .with_hint("say what the parameter does; `krt catalog show` prints it"),
            );
        }
        let required = get(fields, "required")
            .and_then(|(_, n)| r.bool(n, &format!("`required` of {what}")))
            .is_some_and(|b| b.value);
        let default = get(fields, "default")
            .filter(|(_, d)| !d.is_null())
            .and_then(|(_, d)| r.scalar_value(d, &format!("the default of {what}")));
        match (&default, required) {
            (Some(d), true) => r.err(
                Diagnostic::error(
                    format!("{what} is required and has a default"),
                    Some(d.span),
                )
                .with_hint("drop `required: true`, or the default"),
            ),
            (None, false) => r.err(
                Diagnostic::error(format!("{what} has no default"), Some(k.span))
                    .with_hint("give it a `default` (\"\" for none), or mark it `required: true`"),
            ),
            _ => {}
        }
        out.insert(
            name.to_string(),
            EntryParam {
                key: k.span,
                description: description.unwrap_or_default(),
                required,
                default: default.map(|d| d.value),
            },
        );
    }
    out
}

/// Checks what the workflow validator cannot check for an entry on its own:
/// templates may read only `with.<param>` and `env.<name>` of the entry.
struct Checker<'a> {
    source: &'a Arc<Source>,
    params: &'a IndexMap<String, EntryParam>,
    entry_env: &'a IndexMap<String, EnvVarAst>,
    diags: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn check(&mut self, steps: &[StepAst]) {
        self.env_names(self.entry_env, "the catalog entry");
        let entry_env: Vec<&str> = self.entry_env.keys().map(String::as_str).collect();
        for v in self.entry_env.values() {
            self.template(&v.value, "an env value of the entry", &entry_env);
        }
        for (i, step) in steps.iter().enumerate() {
            let what = format!("step {} of the entry", i + 1);
            self.env_names(&step.env, &what);
            let mut env = entry_env.clone();
            env.extend(step.env.keys().map(String::as_str));
            for v in step.env.values() {
                self.template(&v.value, &format!("an env value of {what}"), &env);
            }
            if let Some(n) = &step.name {
                self.template(n, &format!("the name of {what}"), &env);
            }
            self.template(&step.run, &what, &env);
            if let Some(t) = &step.timeout
                && let Err(why) = parse_duration(&t.value)
            {
                self.err(
                    Diagnostic::error(
                        format!("invalid duration `{}`: {why}", t.value),
                        Some(t.span),
                    )
                    .with_hint("write a number with a unit, such as `90s` or `10m`"),
                );
            }
            if let Some(s) = &step.shell
                && s.value.trim().is_empty()
            {
                self.err(
                    Diagnostic::error("`shell` is empty", Some(s.span))
                        .with_hint("use `bash`, `sh`, `python3`, ..."),
                );
            }
        }
    }

    fn err(&mut self, d: Diagnostic) {
        self.diags.push(d.in_file(Some(self.source.clone())));
    }

    fn env_names(&mut self, env: &IndexMap<String, EnvVarAst>, what: &str) {
        for (name, var) in env {
            if !is_identifier(name) || name.starts_with("KRT_") {
                self.err(
                    Diagnostic::error(
                        format!("invalid environment variable name `{name}` in {what}"),
                        Some(var.key),
                    )
                    .with_hint("use letters, digits and `_`; `KRT_*` is reserved"),
                );
            }
        }
    }

    fn template(&mut self, text: &Text, what: &str, env: &[&str]) {
        let vars = match template::check_template(&text.value) {
            Ok(vars) => vars,
            Err(e) => {
                let span = e
                    .range
                    .map_or(text.span, |r| template::span_in_text(self.source, text, r));
                self.err(
                    Diagnostic::error(
                        format!("invalid template in {what}: {}", e.message),
                        Some(span),
                    )
                    .with_label("here"),
                );
                return;
            }
        };
        if let Some(at) = text.value.find("${{") {
            let span = template::span_in_text(self.source, text, at..at + 3);
            self.err(
                Diagnostic::error(
                    format!("GitHub Actions syntax `${{{{ ... }}}}` in {what}"),
                    Some(span),
                )
                .with_hint("templates are `{{ ... }}` without `$`"),
            );
        }
        for var in vars {
            let parts: Vec<&str> = var.split('.').collect();
            let span = template::span_of_mention(self.source, text, &var);
            match (parts[0], parts.get(1).copied()) {
                ("range" | "dict" | "namespace" | "loop", _) | ("with" | "env", None) => {}
                ("with", Some(p)) if !self.params.contains_key(p) => self.err(
                    Diagnostic::error(format!("unknown parameter `with.{p}` in {what}"), Some(span))
                        .with_label("not declared under `params`")
                        .with_opt_hint(
                            did_you_mean(p, self.params.keys().map(String::as_str)).or_else(|| {
                                Some(format!("declare it: `params: {{{p}: {{description: ..., default: ...}}}}`"))
                            }),
                        ),
                ),
                ("env", Some(e)) if !env.contains(&e) => self.err(
                    Diagnostic::error(format!("unknown environment variable `env.{e}` in {what}"), Some(span))
                        .with_label("not set in the entry's `env`")
                        .with_opt_hint(did_you_mean(e, env.iter().copied()).or_else(|| {
                            Some("read it in the script as `$NAME`; templates see only the entry's `env`".to_string())
                        })),
                ),
                ("with" | "env", Some(_)) => {}
                (root, _) => self.err(
                    Diagnostic::error(format!("{what} reads `{root}`"), Some(span))
                        .with_label("not available in a catalog entry")
                        .with_hint(
                            "an entry's templates read only `with.<param>` and `env.<name>`; declare a parameter and let the workflow pass the value",
                        ),
                ),
            }
        }
    }
}
