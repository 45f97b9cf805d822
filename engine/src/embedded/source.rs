//! The source snapshot: the working tree, minus what `.gitignore`,
//! `.git/info/exclude` and `.krtignore` exclude (and `.git` itself), stored
//! in the CAS as one tree. A job may narrow it with `source:` globs so edits
//! elsewhere do not invalidate its cache entry.

use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobSetBuilder};
use kruntimes_runtime::Digest;
use kruntimes_runtime::cas::{CasError, Manifest, Store};

/// The directory `krt run` snapshots by default: the enclosing git
/// repository's root, else the current directory.
pub fn default_root(cwd: &Path) -> PathBuf {
    let mut at = Some(cwd);
    while let Some(dir) = at {
        if dir.join(".git").exists() {
            return dir.to_path_buf();
        }
        at = dir.parent();
    }
    cwd.to_path_buf()
}

/// Lists the files of the tree that belong in the snapshot, relative to
/// `root`, sorted.
pub fn list_files(root: &Path) -> Result<Vec<String>, String> {
    let walker = ignore::WalkBuilder::new(root)
        .hidden(false)
        .git_ignore(true)
        .git_exclude(true)
        .git_global(false)
        .require_git(false)
        .parents(false)
        .add_custom_ignore_filename(".krtignore")
        .filter_entry(|e| e.file_name() != ".git")
        .build();
    let mut out = Vec::new();
    for entry in walker {
        let entry =
            entry.map_err(|e| format!("cannot read the source tree {}: {e}", root.display()))?;
        let Some(ft) = entry.file_type() else {
            continue;
        };
        if ft.is_dir() {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(root)
            .map_err(|_| format!("{} is outside {}", entry.path().display(), root.display()))?;
        let rel = rel
            .to_str()
            .ok_or_else(|| format!("the path {} is not valid UTF-8", entry.path().display()))?;
        out.push(rel.to_string());
    }
    out.sort();
    Ok(out)
}

/// Snapshots `root` into the store and returns the tree digest.
pub async fn snapshot(store: &Store, root: &Path) -> Result<Digest, String> {
    let r = root.to_path_buf();
    let files = tokio::task::spawn_blocking(move || list_files(&r))
        .await
        .map_err(|e| format!("the source walk crashed: {e}"))??;
    store
        .capture_paths(root, files)
        .await
        .map_err(|e| format!("failed to store the source tree {}: {e}", root.display()))
}

/// The part of a source tree a job depends on: entries matching any glob
/// (a directory pattern covers everything below it), with their parent
/// directories. Stored as its own manifest, so its digest changes only when
/// a matching file does.
pub async fn narrow(store: &Store, tree: &Digest, globs: &[String]) -> Result<Digest, CasError> {
    let manifest = store.get_manifest(tree).await?;
    let mut set = GlobSetBuilder::new();
    for g in globs {
        let g = g.trim_end_matches('/');
        for pattern in [g.to_string(), format!("{g}/**")] {
            let glob = GlobBuilder::new(&pattern)
                .literal_separator(true)
                .build()
                .map_err(|e| CasError::UnsafePath {
                    path: g.to_string(),
                    reason: format!("invalid glob: {e}"),
                })?;
            set.add(glob);
        }
    }
    let set = set.build().map_err(|e| CasError::UnsafePath {
        path: globs.join(", "),
        reason: format!("invalid glob: {e}"),
    })?;
    let mut keep: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for e in &manifest.entries {
        if set.is_match(&e.path) {
            keep.insert(e.path.clone());
            let mut p = e.path.as_str();
            while let Some((parent, _)) = p.rsplit_once('/') {
                keep.insert(parent.to_string());
                p = parent;
            }
        }
    }
    let entries = manifest
        .entries
        .into_iter()
        .filter(|e| keep.contains(&e.path))
        .collect();
    let narrowed = Manifest::new(entries);
    store.put_bytes(narrowed.to_bytes().into()).await
}
