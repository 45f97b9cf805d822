//! Finding the entry a `uses:` names. In order:
//!
//! 1. built-in entries, embedded in `krt` (`catalog/<name>/v<major>.yaml`);
//! 2. each directory of `KRT_CATALOG_PATH` (`:`-separated), with the same
//!    `<name>/v<major>.yaml` layout;
//! 3. `./path.yaml` or `../path.yaml`: a file relative to the workflow file.
//!
//! The first location holding `<name>/v<major>.yaml` wins, so a directory can
//! add versions or entries but not replace a built-in one. Entries are read
//! once per resolver, however many steps use them.

use std::cell::{OnceCell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::super::diag::{Diagnostic, Source, Span, did_you_mean};
use super::builtin;
use super::entry::{self, Entry};

/// Environment variable listing extra catalog directories.
pub const CATALOG_PATH_VAR: &str = "KRT_CATALOG_PATH";

/// What a `uses:` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    /// `name@v<major>` (the version may be missing or malformed: reported
    /// once the name is known to exist).
    Named {
        /// Entry name.
        name: String,
        /// The text after `@`, if any.
        version: Option<String>,
    },
    /// A file, relative to the workflow file.
    Path(String),
}

impl Reference {
    /// Splits a `uses:` value.
    pub fn parse(text: &str) -> Self {
        let t = text.trim();
        if t.starts_with("./") || t.starts_with("../") || t.starts_with('/') {
            return Reference::Path(t.to_string());
        }
        match t.split_once('@') {
            Some((name, version)) => Reference::Named {
                name: name.to_string(),
                version: Some(version.to_string()),
            },
            None => Reference::Named {
                name: t.to_string(),
                version: None,
            },
        }
    }
}

/// Why a `uses:` could not be resolved.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ResolveError {
    /// No entry has this name.
    #[error("unknown catalog entry `{name}`")]
    UnknownEntry {
        /// The name as written.
        name: String,
        /// Every entry name, for a suggestion.
        known: Vec<String>,
    },
    /// `uses: name` without `@v<major>`.
    #[error("`uses: {name}` has no version")]
    MissingVersion {
        /// Entry name.
        name: String,
        /// Its major versions.
        available: Vec<u32>,
    },
    /// `@1`, `@v1.2.0`, `@latest`...
    #[error("invalid version `{version}` in `uses: {name}@{version}`")]
    BadVersion {
        /// Entry name.
        name: String,
        /// The text after `@`.
        version: String,
        /// Its major versions.
        available: Vec<u32>,
    },
    /// The entry exists, not in this major version.
    #[error("catalog entry `{name}` has no version v{major}")]
    UnknownVersion {
        /// Entry name.
        name: String,
        /// The major version asked for.
        major: u32,
        /// Its major versions.
        available: Vec<u32>,
    },
    /// `uses: /abs/path.yaml`.
    #[error("`uses: {path}` is an absolute path")]
    AbsolutePath {
        /// The path.
        path: String,
    },
    /// A relative path while planning text that has no file (the controller).
    #[error("`uses: {path}` is a relative path, and this workflow has no directory")]
    NoBaseDir {
        /// The path.
        path: String,
    },
    /// The file could not be read.
    #[error("cannot read catalog entry `{path}`: {error}")]
    Unreadable {
        /// The path as written.
        path: String,
        /// Where it was looked for.
        resolved: String,
        /// The I/O error.
        error: String,
    },
    /// The entry file has errors of its own.
    #[error("catalog entry `{reference}` is invalid")]
    Invalid {
        /// The `uses:` value.
        reference: String,
        /// Its problems, in its own file.
        diags: Vec<Diagnostic>,
    },
}

fn versions_text(available: &[u32]) -> String {
    available
        .iter()
        .map(|m| format!("v{m}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl ResolveError {
    /// A suggestion for the person who wrote the `uses:`.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            ResolveError::UnknownEntry { name, known } => {
                if name.ends_with(".yaml") || name.ends_with(".yml") || name.contains('/') {
                    format!("a file path starts with `./` or `../`: `./{name}`")
                } else {
                    did_you_mean(name, known.iter().map(String::as_str)).unwrap_or_else(|| {
                        "`krt catalog list` shows the entries; `KRT_CATALOG_PATH` adds directories of your own".to_string()
                    })
                }
            }
            ResolveError::MissingVersion { name, available } => format!(
                "pin a major version, such as `{name}@v{}` (available: {})",
                available.last().copied().unwrap_or(1),
                versions_text(available)
            ),
            ResolveError::BadVersion {
                name, available, ..
            } => format!(
                "`@` takes a major version, such as `{name}@v{}` (available: {})",
                available.last().copied().unwrap_or(1),
                versions_text(available)
            ),
            ResolveError::UnknownVersion {
                name, available, ..
            } => format!(
                "available versions of `{name}`: {}",
                versions_text(available)
            ),
            ResolveError::AbsolutePath { .. } => {
                "use a path relative to the workflow file, such as `./ci/steps/lint.yaml`, so the workflow works in any checkout".to_string()
            }
            ResolveError::NoBaseDir { .. } => {
                "relative entries are resolved next to the workflow file: plan it from a file, or use a catalog entry (`name@v1`)".to_string()
            }
            ResolveError::Unreadable { resolved, .. } => {
                format!("looked for {resolved}; relative paths start at the workflow file's directory")
            }
            ResolveError::Invalid { .. } => return None,
        })
    }

    /// Short text under the `uses:` value.
    pub fn label(&self) -> &'static str {
        match self {
            ResolveError::UnknownEntry { .. } => "no such entry",
            ResolveError::MissingVersion { .. } => "add `@v<major>`",
            ResolveError::BadVersion { .. } | ResolveError::UnknownVersion { .. } => {
                "no such version"
            }
            ResolveError::AbsolutePath { .. } | ResolveError::NoBaseDir { .. } => "relative path",
            ResolveError::Unreadable { .. } => "file not readable",
            ResolveError::Invalid { .. } => "this entry has errors (below)",
        }
    }

    /// The diagnostics to report at the `uses:` value's span: this error,
    /// then (for an invalid entry) the entry's own, in its file.
    pub fn diagnostics(&self, span: Span) -> Vec<Diagnostic> {
        let mut out = vec![
            Diagnostic::error(self.to_string(), Some(span))
                .with_label(self.label())
                .with_opt_hint(self.hint()),
        ];
        if let ResolveError::Invalid { diags, .. } = self {
            out.extend(diags.iter().cloned());
        }
        out
    }
}

type Loaded = Result<Arc<Entry>, Vec<Diagnostic>>;

/// Where an entry file is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// Embedded in `krt`: path under `catalog/`.
    Builtin(&'static str),
    /// A file on disk.
    File(PathBuf),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Builtin(rel) => write!(f, "catalog/{rel} (built in)"),
            Location::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// One `<name>/v<major>` and the location that wins for it.
#[derive(Clone, Debug)]
pub struct Listing {
    /// Entry name.
    pub name: String,
    /// Major version.
    pub major: u32,
    /// Where it is read from.
    pub location: Location,
}

/// Resolves `uses:` references. Holds the catalog directories and the
/// workflow's directory; caches every entry it reads.
#[derive(Debug, Default)]
pub struct Resolver {
    search: Vec<PathBuf>,
    base: Option<PathBuf>,
    loaded: RefCell<HashMap<String, Loaded>>,
    /// What `list` found: the directories are read once per resolver.
    listing: OnceCell<Vec<Listing>>,
}

impl Resolver {
    /// Built-in entries only; relative paths are refused. What the
    /// controller uses: a normalised workflow holds no `uses:` anyway.
    pub fn builtin() -> Self {
        Self::default()
    }

    /// Built-in entries, then `dirs`, then paths relative to `base`.
    pub fn new(dirs: Vec<PathBuf>, base: Option<PathBuf>) -> Self {
        Self {
            search: dirs,
            base,
            ..Self::default()
        }
    }

    /// Built-in entries, then the directories of `$KRT_CATALOG_PATH`, then
    /// paths relative to `base` (the workflow file's directory).
    pub fn from_env(base: Option<PathBuf>) -> Self {
        let dirs = std::env::var_os(CATALOG_PATH_VAR)
            .map(|v| {
                std::env::split_paths(&v)
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Self::new(dirs, base)
    }

    /// Every `<name>/v<major>` this resolver can reach, with the location
    /// that wins, sorted by name and version.
    pub fn list(&self) -> Vec<Listing> {
        self.listing.get_or_init(|| self.scan()).clone()
    }

    fn scan(&self) -> Vec<Listing> {
        let mut found: BTreeMap<(String, u32), Location> = BTreeMap::new();
        for (name, major) in builtin::entries() {
            found
                .entry((name.to_string(), major))
                .or_insert_with(|| Location::Builtin(builtin_rel(name, major)));
        }
        for dir in &self.search {
            let Ok(names) = std::fs::read_dir(dir) else {
                continue;
            };
            for name in names.flatten() {
                let Ok(files) = std::fs::read_dir(name.path()) else {
                    continue;
                };
                let name_text = name.file_name().to_string_lossy().into_owned();
                for f in files.flatten() {
                    let file = f.file_name().to_string_lossy().into_owned();
                    if let Some(major) = file
                        .strip_prefix('v')
                        .and_then(|m| m.strip_suffix(".yaml"))
                        .and_then(|m| m.parse::<u32>().ok())
                    {
                        found
                            .entry((name_text.clone(), major))
                            .or_insert_with(|| Location::File(f.path()));
                    }
                }
            }
        }
        found
            .into_iter()
            .map(|((name, major), location)| Listing {
                name,
                major,
                location,
            })
            .collect()
    }

    /// The major versions of `name`, ascending.
    pub fn versions(&self, name: &str) -> Vec<u32> {
        let set: BTreeSet<u32> = self
            .list()
            .into_iter()
            .filter(|l| l.name == name)
            .map(|l| l.major)
            .collect();
        set.into_iter().collect()
    }

    /// Reads (or returns the cached) entry at `location`.
    pub fn load(&self, location: &Location) -> Loaded {
        let key = location.to_string();
        if let Some(hit) = self.loaded.borrow().get(&key) {
            return hit.clone();
        }
        let loaded = match location {
            Location::Builtin(rel) => {
                let text = builtin::file(rel).unwrap_or_default();
                let expect = split_rel(rel);
                entry::read(
                    Arc::new(Source::new(format!("catalog/{rel}"), text)),
                    expect.as_ref().map(|(n, m)| (n.as_str(), *m)),
                )
                .map(Arc::new)
            }
            Location::File(path) => match std::fs::read_to_string(path) {
                Ok(text) => {
                    let expect = expect_from_path(path);
                    entry::read(
                        Arc::new(Source::new(path.display().to_string(), text)),
                        expect.as_ref().map(|(n, m)| (n.as_str(), *m)),
                    )
                    .map(Arc::new)
                }
                Err(e) => Err(vec![
                    Diagnostic::error(format!("cannot read {}: {e}", path.display()), None)
                        .in_file(Some(Arc::new(Source::new(path.display().to_string(), "")))),
                ]),
            },
        };
        self.loaded.borrow_mut().insert(key, loaded.clone());
        loaded
    }

    /// Resolves a `uses:` value.
    pub fn resolve(&self, reference: &str) -> Result<Arc<Entry>, ResolveError> {
        match Reference::parse(reference) {
            Reference::Path(path) => self.resolve_path(reference, &path),
            Reference::Named { name, version } => {
                let all = self.list();
                let available: Vec<u32> = all
                    .iter()
                    .filter(|l| l.name == name)
                    .map(|l| l.major)
                    .collect();
                if available.is_empty() {
                    let known: BTreeSet<String> = all.into_iter().map(|l| l.name).collect();
                    return Err(ResolveError::UnknownEntry {
                        name,
                        known: known.into_iter().collect(),
                    });
                }
                let Some(version) = version else {
                    return Err(ResolveError::MissingVersion { name, available });
                };
                let Some(major) = version
                    .strip_prefix('v')
                    .filter(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|m| m.parse::<u32>().ok())
                else {
                    return Err(ResolveError::BadVersion {
                        name,
                        version,
                        available,
                    });
                };
                let Some(listing) = all.iter().find(|l| l.name == name && l.major == major) else {
                    return Err(ResolveError::UnknownVersion {
                        name,
                        major,
                        available,
                    });
                };
                self.load(&listing.location)
                    .map_err(|diags| ResolveError::Invalid {
                        reference: reference.to_string(),
                        diags,
                    })
            }
        }
    }

    fn resolve_path(&self, reference: &str, path: &str) -> Result<Arc<Entry>, ResolveError> {
        if path.starts_with('/') {
            return Err(ResolveError::AbsolutePath {
                path: path.to_string(),
            });
        }
        let Some(base) = &self.base else {
            return Err(ResolveError::NoBaseDir {
                path: path.to_string(),
            });
        };
        // `base/./x.yaml` -> `base/x.yaml`, for messages.
        let full: PathBuf = base
            .join(path)
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect();
        if let Err(e) = std::fs::metadata(&full) {
            return Err(ResolveError::Unreadable {
                path: path.to_string(),
                resolved: full.display().to_string(),
                error: e.to_string(),
            });
        }
        let key = full.display().to_string();
        let cached = self.loaded.borrow().get(&key).cloned();
        let loaded = match cached {
            Some(hit) => hit,
            None => {
                let text =
                    std::fs::read_to_string(&full).map_err(|e| ResolveError::Unreadable {
                        path: path.to_string(),
                        resolved: key.clone(),
                        error: e.to_string(),
                    })?;
                // A relative file's location says nothing about its name.
                let loaded =
                    entry::read(Arc::new(Source::new(key.clone(), text)), None).map(Arc::new);
                self.loaded.borrow_mut().insert(key, loaded.clone());
                loaded
            }
        };
        loaded.map_err(|diags| ResolveError::Invalid {
            reference: reference.to_string(),
            diags,
        })
    }
}

fn builtin_rel(name: &str, major: u32) -> &'static str {
    let want = format!("{name}/v{major}.yaml");
    builtin::FILES
        .iter()
        .find(|(p, _)| *p == want)
        .map_or("", |(p, _)| *p)
}

/// `cargo-test/v1.yaml` -> (`cargo-test`, 1).
fn split_rel(rel: &str) -> Option<(String, u32)> {
    let (name, file) = rel.split_once('/')?;
    let major = file
        .strip_prefix('v')?
        .strip_suffix(".yaml")?
        .parse()
        .ok()?;
    Some((name.to_string(), major))
}

/// `<dir>/<name>/v<major>.yaml` -> (`name`, major).
fn expect_from_path(path: &Path) -> Option<(String, u32)> {
    let file = path.file_name()?.to_str()?;
    let name = path.parent()?.file_name()?.to_str()?;
    split_rel(&format!("{name}/{file}"))
}
