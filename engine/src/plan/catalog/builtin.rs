//! The entries under `catalog/`, embedded at build time (see `build.rs`).

include!(concat!(env!("OUT_DIR"), "/catalog.rs"));

/// The text of a built-in entry file, by its path under `catalog/`
/// (`cargo-test/v1.yaml`).
pub fn file(rel: &str) -> Option<&'static str> {
    FILES.iter().find(|(p, _)| *p == rel).map(|(_, t)| *t)
}

/// Built-in entries as `(name, major)`, sorted.
pub fn entries() -> Vec<(&'static str, u32)> {
    FILES
        .iter()
        .filter_map(|(p, _)| {
            let (name, file) = p.split_once('/')?;
            let major = file
                .strip_prefix('v')?
                .strip_suffix(".yaml")?
                .parse()
                .ok()?;
            Some((name, major))
        })
        .collect()
}
