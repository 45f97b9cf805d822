//! Trees: the canonical manifest and the path rules every tree obeys.
//!
//! A tree is a [`Manifest`] serialised as compact JSON with its entries
//! sorted by path (byte order), stored as a blob; its digest is the tree's
//! name. Sorting makes the bytes, and so the digest, a function of the
//! content only. Byte order also puts every directory before everything
//! below it (`a` < `a/b`), which is the order [`Store::materialize`] needs.
//!
//! The rules here are pure so the same checks run on capture (what we are
//! about to publish) and on materialise (what someone else published, maybe
//! with bad intent):
//!
//! - a path is relative, `/`-separated, without empty, `.` or `..` parts;
//! - no entry lives below a file or a symlink of the same tree (so nothing is
//!   ever written through a symlink);
//! - a symlink target is relative and, resolved inside the tree (following
//!   the tree's own symlinks like the kernel would), never climbs above the
//!   root.
//!
//! [`Store::materialize`]: super::Store::materialize

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// Symlinks followed while resolving one target before giving up, like the
/// kernel's `ELOOP` limit.
const MAX_SYMLINK_HOPS: usize = 40;

/// The canonical description of a tree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Entries sorted by path, each path once.
    pub entries: Vec<Entry>,
}

/// One file, directory or symlink of a tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Relative `/`-separated path.
    pub path: String,
    /// What the entry is.
    pub kind: EntryKind,
    /// Any execute bit set (files only).
    pub executable: bool,
    /// Length in bytes (files only; 0 otherwise).
    pub size: u64,
    /// Digest of the content (files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// Link target, verbatim (symlinks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// The kind of a tree entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

impl Entry {
    /// A regular file.
    pub fn file(path: impl Into<String>, digest: Digest, size: u64, executable: bool) -> Self {
        Self {
            path: path.into(),
            kind: EntryKind::File,
            executable,
            size,
            digest: Some(digest),
            target: None,
        }
    }

    /// A directory.
    pub fn dir(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            kind: EntryKind::Dir,
            executable: false,
            size: 0,
            digest: None,
            target: None,
        }
    }

    /// A symbolic link.
    pub fn symlink(path: impl Into<String>, target: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            kind: EntryKind::Symlink,
            executable: false,
            size: 0,
            digest: None,
            target: Some(target.into()),
        }
    }
}

/// A way a manifest breaks the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Violation {
    /// A path or link that could reach outside the root.
    Unsafe { path: String, reason: String },
    /// Anything else: order, duplicates, missing fields.
    Malformed(String),
}

impl Manifest {
    /// A canonical manifest: entries sorted by path.
    pub fn new(mut entries: Vec<Entry>) -> Self {
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Self { entries }
    }

    /// The canonical bytes: compact JSON.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest always serialises")
    }

    /// The digest of the canonical bytes, which is the tree's digest.
    pub fn digest(&self) -> Digest {
        Digest::of(&self.to_bytes())
    }

    /// Total size of the files.
    pub fn total_size(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .map(|e| e.size)
            .sum()
    }

    /// Checks every rule in the module note.
    pub(crate) fn validate(&self) -> Result<(), Violation> {
        let mut kinds: HashMap<&str, EntryKind> = HashMap::with_capacity(self.entries.len());
        let mut links: BTreeMap<&str, &str> = BTreeMap::new();
        let mut previous: Option<&str> = None;
        for e in &self.entries {
            validate_rel_path(&e.path).map_err(|reason| Violation::Unsafe {
                path: e.path.clone(),
                reason,
            })?;
            if let Some(p) = previous
                && p >= e.path.as_str()
            {
                let what = if p == e.path {
                    "duplicate"
                } else {
                    "out of order"
                };
                return Err(Violation::Malformed(format!(
                    "entry `{}` is {what}; entries must be sorted by path",
                    e.path
                )));
            }
            previous = Some(&e.path);
            let fields_ok = match e.kind {
                EntryKind::File => e.digest.is_some() && e.target.is_none(),
                EntryKind::Dir => {
                    e.digest.is_none() && e.target.is_none() && !e.executable && e.size == 0
                }
                EntryKind::Symlink => {
                    e.digest.is_none() && e.target.is_some() && !e.executable && e.size == 0
                }
            };
            if !fields_ok {
                return Err(Violation::Malformed(format!(
                    "entry `{}` of kind {:?} has fields that do not belong to its kind",
                    e.path, e.kind
                )));
            }
            kinds.insert(&e.path, e.kind);
            if let Some(t) = &e.target {
                links.insert(&e.path, t);
            }
        }
        // Parents come first in sorted order, so one pass sees them.
        for e in &self.entries {
            for parent in ancestors(&e.path) {
                match kinds.get(parent) {
                    Some(EntryKind::Symlink) => {
                        return Err(Violation::Unsafe {
                            path: e.path.clone(),
                            reason: format!(
                                "its parent `{parent}` is a symlink, and nothing is written through a symlink"
                            ),
                        });
                    }
                    Some(EntryKind::File) => {
                        return Err(Violation::Malformed(format!(
                            "entry `{}` is below the file `{parent}`",
                            e.path
                        )));
                    }
                    Some(EntryKind::Dir) | None => {}
                }
            }
        }
        for (path, target) in &links {
            check_link(path, target, &links).map_err(|reason| Violation::Unsafe {
                path: (*path).to_owned(),
                reason,
            })?;
        }
        Ok(())
    }
}

/// Checks that `path` is relative, `/`-separated and has no empty, `.` or
/// `..` component. Returns the reason when it is not.
pub(crate) fn validate_rel_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("the path is empty".into());
    }
    if path.starts_with('/') {
        return Err("absolute paths are not allowed".into());
    }
    if path.contains('\0') {
        return Err("the path contains a NUL byte".into());
    }
    for part in path.split('/') {
        match part {
            "" => return Err("the path has an empty component (`//` or a trailing `/`)".into()),
            "." => return Err("the path has a `.` component".into()),
            ".." => return Err("`..` is not allowed".into()),
            _ => {}
        }
    }
    Ok(())
}

/// The proper ancestors of a relative path, nearest last: `a/b/c` gives
/// `a`, `a/b`.
pub(crate) fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

/// Checks that the symlink at `path` with `target` stays inside the tree,
/// following the tree's other symlinks (`links`) the way the kernel would.
pub(crate) fn check_link(
    path: &str,
    target: &str,
    links: &BTreeMap<&str, &str>,
) -> Result<(), String> {
    if target.is_empty() {
        return Err("the symlink target is empty".into());
    }
    if target.starts_with('/') {
        return Err(format!("the symlink target `{target}` is absolute"));
    }
    if target.contains('\0') {
        return Err("the symlink target contains a NUL byte".into());
    }
    let escape = || format!("the symlink target `{target}` leaves the root");
    // Where we are (components below the root) and what is left to walk.
    let mut at: Vec<&str> = ancestors(path)
        .last()
        .map(|p| p.split('/').collect())
        .unwrap_or_default();
    let mut todo: VecDeque<&str> = target.split('/').collect();
    let mut hops = 0;
    while let Some(part) = todo.pop_front() {
        match part {
            "" | "." => {}
            ".." => {
                if at.pop().is_none() {
                    return Err(escape());
                }
            }
            name => {
                at.push(name);
                let here = at.join("/");
                if let Some(&next) = links.get(here.as_str()) {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(format!(
                            "the symlink target `{target}` loops (more than {MAX_SYMLINK_HOPS} links)"
                        ));
                    }
                    if next.starts_with('/') {
                        return Err(format!(
                            "the symlink target `{target}` goes through `{here}`, which is absolute"
                        ));
                    }
                    at.pop();
                    for p in next.split('/').rev() {
                        todo.push_front(p);
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Digest {
        Digest::of(s.as_bytes())
    }

    fn unsafe_reason(m: &Manifest) -> String {
        match m.validate() {
            Err(Violation::Unsafe { reason, .. }) => reason,
            other => panic!("expected an unsafe path, got {other:?}"),
        }
    }

    #[test]
    fn manifest_sorts_entries_by_path_so_equal_trees_have_equal_digests() {
        let a = Manifest::new(vec![
            Entry::file("b/x", d("x"), 1, false),
            Entry::dir("b"),
            Entry::file("a-b", d("y"), 1, true),
            Entry::file("a/c", d("z"), 1, false),
            Entry::dir("a"),
        ]);
        let paths: Vec<_> = a.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["a", "a-b", "a/c", "b", "b/x"]);
        let mut shuffled = a.entries.clone();
        shuffled.reverse();
        assert_eq!(Manifest::new(shuffled).digest(), a.digest());
        a.validate().unwrap();
    }

    #[test]
    fn manifest_json_is_compact_and_omits_absent_fields() {
        let m = Manifest::new(vec![Entry::dir("a"), Entry::symlink("a/l", "x")]);
        let json = String::from_utf8(m.to_bytes()).unwrap();
        assert_eq!(
            json,
            r#"{"entries":[{"path":"a","kind":"dir","executable":false,"size":0},{"path":"a/l","kind":"symlink","executable":false,"size":0,"target":"x"}]}"#
        );
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), m);
    }

    #[test]
    fn unsorted_or_duplicate_entries_are_malformed() {
        let m = Manifest {
            entries: vec![Entry::dir("b"), Entry::dir("a")],
        };
        assert!(matches!(m.validate(), Err(Violation::Malformed(r)) if r.contains("out of order")));
        let m = Manifest {
            entries: vec![Entry::dir("a"), Entry::dir("a")],
        };
        assert!(matches!(m.validate(), Err(Violation::Malformed(r)) if r.contains("duplicate")));
    }

    #[test]
    fn relative_paths_without_dot_components_are_the_only_valid_paths() {
        assert!(validate_rel_path("a/b.txt").is_ok());
        assert!(validate_rel_path("..a/b..").is_ok());
        for (bad, why) in [
            ("", "empty"),
            ("/etc/passwd", "absolute"),
            ("../x", "`..`"),
            ("a/../../x", "`..`"),
            ("a/./b", "`.`"),
            ("a//b", "empty component"),
            ("a/", "empty component"),
        ] {
            let reason = validate_rel_path(bad).unwrap_err();
            assert!(reason.contains(why), "{bad:?}: {reason}");
        }
    }

    #[test]
    fn a_manifest_with_a_dot_dot_path_is_unsafe() {
        let m = Manifest::new(vec![Entry::file("../x", d("x"), 1, false)]);
        assert!(unsafe_reason(&m).contains("`..`"));
        let m = Manifest::new(vec![Entry::file("/tmp/x", d("x"), 1, false)]);
        assert!(unsafe_reason(&m).contains("absolute"));
    }

    #[test]
    fn an_entry_below_a_symlink_is_unsafe_even_if_the_link_is_harmless() {
        let m = Manifest::new(vec![
            Entry::symlink("a", "../../etc"),
            Entry::file("a/passwd", d("x"), 1, false),
        ]);
        // The escaping link is reported or the write through it; both refuse.
        assert!(m.validate().is_err());
        let m = Manifest::new(vec![
            Entry::dir("b"),
            Entry::symlink("a", "b"),
            Entry::file("a/f", d("x"), 1, false),
        ]);
        assert!(unsafe_reason(&m).contains("parent `a` is a symlink"));
    }

    #[test]
    fn symlinks_that_leave_the_root_are_unsafe() {
        let links: BTreeMap<&str, &str> = BTreeMap::new();
        assert!(
            check_link("a", "../../etc", &links)
                .unwrap_err()
                .contains("leaves the root")
        );
        assert!(
            check_link("a/b/l", "../../../x", &links)
                .unwrap_err()
                .contains("leaves the root")
        );
        assert!(
            check_link("l", "/etc/passwd", &links)
                .unwrap_err()
                .contains("absolute")
        );
        assert!(check_link("a/b/l", "../../x", &links).is_ok());
        assert!(check_link("a/l", "..", &links).is_ok());
        assert!(check_link("l", ".", &links).is_ok());
    }

    #[test]
    fn symlink_escapes_through_other_links_of_the_tree_are_found() {
        // Resolution follows the tree's links like the kernel: `deep` points
        // three levels down, so `deep/../../..` is the root (fine) and one
        // more `..` leaves it.
        let mut links = BTreeMap::new();
        links.insert("deep", "x/y/z");
        assert!(check_link("l", "deep/../../..", &links).is_ok());
        assert!(
            check_link("l", "deep/../../../../etc", &links)
                .unwrap_err()
                .contains("leaves the root")
        );
        // Kernel semantics: `up/..` is the parent of where `up` points.
        let mut links = BTreeMap::new();
        links.insert("a/up", "..");
        assert!(
            check_link("a/l", "up/../x", &links)
                .unwrap_err()
                .contains("leaves the root")
        );
        let mut links = BTreeMap::new();
        links.insert("loop", "loop");
        assert!(
            check_link("x", "loop", &links)
                .unwrap_err()
                .contains("loops")
        );
    }

    #[test]
    fn entries_with_fields_of_another_kind_are_malformed() {
        let mut e = Entry::dir("a");
        e.digest = Some(d("x"));
        assert!(matches!(
            Manifest::new(vec![e]).validate(),
            Err(Violation::Malformed(_))
        ));
        let m = Manifest::new(vec![
            Entry::file("a", d("x"), 1, false),
            Entry::file("a/b", d("y"), 1, false),
        ]);
        assert!(
            matches!(m.validate(), Err(Violation::Malformed(r)) if r.contains("below the file"))
        );
    }
}
