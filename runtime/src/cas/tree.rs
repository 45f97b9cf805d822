//! Trees on disk: capture a directory (or the files matching patterns) into
//! the store, and materialise a tree back into a directory.
//!
//! Capture walks without following symlinks, records symlinks as symlinks,
//! and refuses any whose target leaves the root. Materialise validates the
//! whole manifest before writing anything, then creates directories in
//! order (refusing an existing symlink where a directory goes), downloads
//! files in parallel into temp files renamed into place, and creates
//! symlinks last, so no write ever goes through a symlink.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use futures::{StreamExt, TryStreamExt};
use globset::{GlobBuilder, GlobMatcher};

use super::error::{CasError, join_error};
use super::manifest::{
    Entry, EntryKind, Manifest, Violation, ancestors, check_link, validate_rel_path,
};
use super::store::{Store, TempFile};
use crate::digest::Digest;

/// Files uploaded or downloaded at once.
const PARALLEL_TRANSFERS: usize = 16;

/// A path found on disk during capture.
#[derive(Debug, Clone)]
struct Found {
    kind: EntryKind,
    executable: bool,
    target: Option<String>,
}

impl Store {
    /// Captures the files under `root` matching any of `patterns` and
    /// returns the tree's digest. A pattern is a glob (`dist/**/*.tar.gz`;
    /// `*` stays within one directory, `**` crosses them), a file path, or a
    /// directory path meaning everything below it. Every pattern must match
    /// something.
    pub async fn capture(&self, root: &Path, patterns: &[String]) -> Result<Digest, CasError> {
        let (r, p) = (root.to_path_buf(), patterns.to_vec());
        let found = tokio::task::spawn_blocking(move || scan(&r, &p))
            .await
            .map_err(join_error)??;
        self.upload_tree(root, found).await
    }

    /// Captures exactly the listed paths (relative to `root`; a directory
    /// means everything below it), for source snapshots where the caller
    /// already decided what belongs (`.gitignore`). Paths that vanished
    /// since they were listed are left out.
    pub async fn capture_paths(&self, root: &Path, paths: Vec<String>) -> Result<Digest, CasError> {
        let r = root.to_path_buf();
        let found = tokio::task::spawn_blocking(move || {
            let mut found = BTreeMap::new();
            for p in &paths {
                scan_path(&r, p, p, &mut found)?;
            }
            check_links(&r, &found)?;
            Ok::<_, CasError>(found)
        })
        .await
        .map_err(join_error)??;
        self.upload_tree(root, found).await
    }

    /// Captures everything under `root`.
    pub async fn capture_dir(&self, root: &Path) -> Result<Digest, CasError> {
        let r = root.to_path_buf();
        let found = tokio::task::spawn_blocking(move || {
            let meta = fs::metadata(&r).map_err(|e| CasError::io(&r, e))?;
            if !meta.is_dir() {
                return Err(CasError::io(
                    &r,
                    io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
                ));
            }
            let mut found = BTreeMap::new();
            add_below(&r, &r, &mut found)?;
            check_links(&r, &found)?;
            Ok(found)
        })
        .await
        .map_err(join_error)??;
        self.upload_tree(root, found).await
    }

    async fn upload_tree(
        &self,
        root: &Path,
        found: BTreeMap<String, Found>,
    ) -> Result<Digest, CasError> {
        let files: Vec<(String, PathBuf)> = found
            .iter()
            .filter(|(_, f)| f.kind == EntryKind::File)
            .map(|(rel, _)| (rel.clone(), root.join(rel)))
            .collect();
        let store = self.clone();
        let mut digests: BTreeMap<String, (Digest, u64)> = futures::stream::iter(files)
            .map(move |(rel, abs)| {
                let store = store.clone();
                async move { store.put_file_sized(&abs).await.map(|r| (rel, r)) }
            })
            .buffer_unordered(PARALLEL_TRANSFERS)
            .try_collect()
            .await?;
        let entries = found
            .into_iter()
            .map(|(path, f)| match f.kind {
                EntryKind::File => {
                    let (d, size) = digests.remove(&path).expect("every file was uploaded");
                    Entry::file(path, d, size, f.executable)
                }
                EntryKind::Dir => Entry::dir(path),
                EntryKind::Symlink => Entry::symlink(path, f.target.unwrap_or_default()),
            })
            .collect();
        let manifest = Manifest::new(entries);
        if let Err(v) = manifest.validate() {
            // The scan already enforces every rule; this is the last guard.
            return Err(match v {
                Violation::Unsafe { path, reason } => CasError::UnsafePath { path, reason },
                Violation::Malformed(reason) => {
                    CasError::unsafe_path(root.display().to_string(), reason)
                }
            });
        }
        self.put_bytes(manifest.to_bytes().into()).await
    }

    /// The manifest of a tree, verified and checked against every path rule.
    pub async fn get_manifest(&self, tree: &Digest) -> Result<Manifest, CasError> {
        let bytes = self.get_bytes(tree).await?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| CasError::InvalidManifest {
                digest: *tree,
                reason: e.to_string(),
            })?;
        manifest.validate().map_err(|v| match v {
            Violation::Unsafe { path, reason } => CasError::UnsafePath { path, reason },
            Violation::Malformed(reason) => CasError::InvalidManifest {
                digest: *tree,
                reason,
            },
        })?;
        Ok(manifest)
    }

    /// Writes the tree under `dest` (created if missing): directories, files
    /// with their execute bit, symlinks. Every blob is verified; every path
    /// is checked first. Files are fresh copies, never links into the cache
    /// or the store. Existing files at the same paths are replaced. On error
    /// `dest` may hold some of the tree's files, but never an unverified one.
    pub async fn materialize(&self, tree: &Digest, dest: &Path) -> Result<(), CasError> {
        let manifest = self.get_manifest(tree).await?;
        let (m, d) = (manifest.clone(), dest.to_path_buf());
        tokio::task::spawn_blocking(move || prepare_dirs(&d, &m))
            .await
            .map_err(join_error)??;
        // Owned items and a cloned store: the future stays `Send` for
        // callers that spawn it.
        let files: Vec<(Digest, PathBuf, u32)> = manifest
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .map(|e| {
                let digest = e.digest.expect("validated: files have digests");
                (
                    digest,
                    dest.join(&e.path),
                    if e.executable { 0o755 } else { 0o644 },
                )
            })
            .collect();
        let store = self.clone();
        futures::stream::iter(files)
            .map(move |(digest, path, mode)| {
                let store = store.clone();
                async move { store.fetch_to_file(&digest, &path, mode).await }
            })
            .buffer_unordered(PARALLEL_TRANSFERS)
            .try_collect::<()>()
            .await?;
        let d = dest.to_path_buf();
        tokio::task::spawn_blocking(move || make_symlinks(&d, &manifest))
            .await
            .map_err(join_error)?
    }
}

/// Resolves patterns against `root`. Blocking.
fn scan(root: &Path, patterns: &[String]) -> Result<BTreeMap<String, Found>, CasError> {
    let mut found = BTreeMap::new();
    for pattern in patterns {
        if !scan_one(root, pattern, &mut found)? {
            return Err(CasError::NoMatch {
                pattern: pattern.clone(),
            });
        }
    }
    check_links(root, &found)?;
    Ok(found)
}

/// Adds what one pattern matches; returns whether it matched anything.
fn scan_one(
    root: &Path,
    pattern: &str,
    found: &mut BTreeMap<String, Found>,
) -> Result<bool, CasError> {
    if pattern.starts_with('/') {
        return Err(CasError::unsafe_path(
            pattern,
            "absolute paths are not allowed; patterns are relative to the root",
        ));
    }
    let mut norm = pattern.trim_end_matches('/');
    while let Some(rest) = norm.strip_prefix("./") {
        norm = rest.trim_start_matches('/');
    }
    if norm.is_empty() || norm == "." {
        add_below(root, root, found)?;
        return Ok(true);
    }
    if norm.split('/').any(|c| c == "..") {
        return Err(CasError::unsafe_path(pattern, "`..` is not allowed"));
    }
    let is_glob = norm.contains(['*', '?', '[', '{']);
    if !is_glob {
        return scan_path(root, norm, pattern, found);
    }
    let glob = GlobBuilder::new(norm)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|source| CasError::InvalidPattern {
            pattern: pattern.to_owned(),
            source,
        })?
        .compile_matcher();
    // Walk only below the literal part (`dist` of `dist/**/*.tar.gz`),
    // stopping at the first component that is not a real directory.
    let mut base = root.to_path_buf();
    for part in norm
        .split('/')
        .take_while(|c| !c.contains(['*', '?', '[', '{', '\\']))
    {
        let next = base.join(part);
        match fs::symlink_metadata(&next) {
            Ok(m) if m.is_dir() => base = next,
            _ => break,
        }
    }
    walk_glob(root, &base, &glob, found)
}

/// A pattern without glob characters: a file, a symlink or a directory.
fn scan_path(
    root: &Path,
    rel: &str,
    pattern: &str,
    found: &mut BTreeMap<String, Found>,
) -> Result<bool, CasError> {
    let rel = rel
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/");
    validate_rel_path(&rel).map_err(|reason| CasError::unsafe_path(pattern, reason))?;
    for parent in ancestors(&rel) {
        match fs::symlink_metadata(root.join(parent)) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(CasError::unsafe_path(
                    pattern,
                    format!("`{parent}` is a symlink; name the path it points to instead"),
                ));
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Ok(false),
            Err(e) if is_missing(&e) => return Ok(false),
            Err(e) => return Err(CasError::io(root.join(parent), e)),
        }
    }
    let abs = root.join(&rel);
    let meta = match fs::symlink_metadata(&abs) {
        Ok(m) => m,
        Err(e) if is_missing(&e) => return Ok(false),
        Err(e) => return Err(CasError::io(abs, e)),
    };
    if meta.is_dir() {
        add(
            found,
            &rel,
            Found {
                kind: EntryKind::Dir,
                executable: false,
                target: None,
            },
        );
        add_below(root, &abs, found)?;
        return Ok(true);
    }
    match found_for(&abs, &meta)? {
        Some(f) => {
            add(found, &rel, f);
            Ok(true)
        }
        None => Err(CasError::unsafe_path(
            pattern,
            "not a regular file, directory or symlink",
        )),
    }
}

fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// Walks `base` (inside `root`) and adds every path the glob matches; a
/// matched directory brings everything below it.
fn walk_glob(
    root: &Path,
    base: &Path,
    glob: &GlobMatcher,
    found: &mut BTreeMap<String, Found>,
) -> Result<bool, CasError> {
    let mut matched = false;
    let mut it = walkdir::WalkDir::new(base)
        .follow_links(false)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter();
    while let Some(entry) = it.next() {
        let entry = entry.map_err(|e| walk_error(base, e))?;
        let rel = rel_str(root, entry.path())?;
        if !glob.is_match(&rel) {
            continue;
        }
        matched = true;
        if entry.file_type().is_dir() {
            add(
                found,
                &rel,
                Found {
                    kind: EntryKind::Dir,
                    executable: false,
                    target: None,
                },
            );
            add_below(root, entry.path(), found)?;
            it.skip_current_dir();
            continue;
        }
        let meta = entry.metadata().map_err(|e| walk_error(entry.path(), e))?;
        if let Some(f) = found_for(entry.path(), &meta)? {
            add(found, &rel, f);
        } else {
            tracing::warn!(path = %entry.path().display(), "skipping a special file (not a file, directory or symlink)");
        }
    }
    Ok(matched)
}

/// Adds everything below the directory `dir` (inside `root`).
fn add_below(root: &Path, dir: &Path, found: &mut BTreeMap<String, Found>) -> Result<(), CasError> {
    for entry in walkdir::WalkDir::new(dir).follow_links(false).min_depth(1) {
        let entry = entry.map_err(|e| walk_error(dir, e))?;
        let rel = rel_str(root, entry.path())?;
        if entry.file_type().is_dir() {
            add(
                found,
                &rel,
                Found {
                    kind: EntryKind::Dir,
                    executable: false,
                    target: None,
                },
            );
            continue;
        }
        let meta = entry.metadata().map_err(|e| walk_error(entry.path(), e))?;
        match found_for(entry.path(), &meta)? {
            Some(f) => add(found, &rel, f),
            None => {
                tracing::warn!(path = %entry.path().display(), "skipping a special file (not a file, directory or symlink)")
            }
        }
    }
    Ok(())
}

/// Inserts an entry and its parent directories.
fn add(found: &mut BTreeMap<String, Found>, rel: &str, f: Found) {
    for parent in ancestors(rel) {
        found.entry(parent.to_owned()).or_insert(Found {
            kind: EntryKind::Dir,
            executable: false,
            target: None,
        });
    }
    found.insert(rel.to_owned(), f);
}

/// What a non-directory path is, from its `lstat`; `None` for sockets,
/// fifos and devices.
fn found_for(abs: &Path, meta: &fs::Metadata) -> Result<Option<Found>, CasError> {
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = fs::read_link(abs).map_err(|e| CasError::io(abs, e))?;
        let target = target
            .to_str()
            .ok_or_else(|| {
                CasError::unsafe_path(
                    abs.display().to_string(),
                    "the symlink target is not valid UTF-8",
                )
            })?
            .to_owned();
        return Ok(Some(Found {
            kind: EntryKind::Symlink,
            executable: false,
            target: Some(target),
        }));
    }
    if ft.is_file() {
        let executable = meta.permissions().mode() & 0o111 != 0;
        return Ok(Some(Found {
            kind: EntryKind::File,
            executable,
            target: None,
        }));
    }
    Ok(None)
}

fn rel_str(root: &Path, abs: &Path) -> Result<String, CasError> {
    let rel = abs.strip_prefix(root).expect("walks stay below the root");
    rel.to_str().map(str::to_owned).ok_or_else(|| {
        CasError::unsafe_path(abs.display().to_string(), "the path is not valid UTF-8")
    })
}

fn walk_error(at: &Path, e: walkdir::Error) -> CasError {
    let path = e
        .path()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| at.to_path_buf());
    let io = e
        .into_io_error()
        .unwrap_or_else(|| io::Error::other("filesystem loop"));
    CasError::io(path, io)
}

/// Refuses symlinks that leave `root`: by their text, resolved through the
/// other captured links, and, when the target exists, by where it really
/// resolves on disk (which also sees links that were not captured).
fn check_links(root: &Path, found: &BTreeMap<String, Found>) -> Result<(), CasError> {
    let links: BTreeMap<&str, &str> = found
        .iter()
        .filter_map(|(p, f)| f.target.as_deref().map(|t| (p.as_str(), t)))
        .collect();
    if links.is_empty() {
        return Ok(());
    }
    let real_root = fs::canonicalize(root).map_err(|e| CasError::io(root, e))?;
    for (path, target) in &links {
        check_link(path, target, &links).map_err(|reason| CasError::unsafe_path(*path, reason))?;
        if let Ok(real) = fs::canonicalize(root.join(path))
            && !real.starts_with(&real_root)
        {
            return Err(CasError::unsafe_path(
                *path,
                format!(
                    "the symlink resolves to {}, outside the root",
                    real.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Creates `dest` and every directory of the tree, refusing to go through
/// anything that is not a real directory. Blocking.
fn prepare_dirs(dest: &Path, manifest: &Manifest) -> Result<(), CasError> {
    fs::create_dir_all(dest).map_err(|e| CasError::io(dest, e))?;
    let mut dirs: BTreeSet<&str> = BTreeSet::new();
    for e in &manifest.entries {
        dirs.extend(ancestors(&e.path));
        if e.kind == EntryKind::Dir {
            dirs.insert(&e.path);
        }
    }
    // Sorted, so a parent is checked or created before its children.
    for rel in dirs {
        let abs = dest.join(rel);
        match fs::symlink_metadata(&abs) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(CasError::unsafe_path(
                    rel,
                    format!(
                        "{} is a symlink where the tree has a directory",
                        abs.display()
                    ),
                ));
            }
            Ok(_) => {
                return Err(CasError::io(
                    &abs,
                    io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "exists and is not a directory",
                    ),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match fs::create_dir(&abs) {
                    Ok(()) => {}
                    // A concurrent writer made it; accept only a real directory.
                    Err(e)
                        if e.kind() == io::ErrorKind::AlreadyExists
                            && fs::symlink_metadata(&abs).is_ok_and(|m| m.is_dir()) => {}
                    Err(e) => return Err(CasError::io(&abs, e)),
                }
            }
            Err(e) => return Err(CasError::io(&abs, e)),
        }
    }
    Ok(())
}

/// Creates the tree's symlinks, each at a temp name renamed into place so
/// an existing file or link at that path is replaced, not followed.
/// Blocking.
fn make_symlinks(dest: &Path, manifest: &Manifest) -> Result<(), CasError> {
    for e in manifest
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::Symlink)
    {
        let abs = dest.join(&e.path);
        let target = e
            .target
            .as_deref()
            .expect("validated: symlinks have targets");
        let temp = TempFile::next_to(&abs);
        std::os::unix::fs::symlink(target, &temp.path)
            .map_err(|err| CasError::io(&temp.path, err))?;
        fs::rename(&temp.path, &abs).map_err(|err| CasError::io(&abs, err))?;
        temp.disarm();
    }
    Ok(())
}
