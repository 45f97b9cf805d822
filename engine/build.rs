//! Embeds the step catalog (`catalog/<name>/v<major>.yaml` at the top of the
//! repository) in the `krt` binary, so `uses: cargo-test@v1` resolves from any
//! directory. Writes `$OUT_DIR/catalog.rs`, a sorted list of
//! `("<name>/v<major>.yaml", include_str!(...))`, read by
//! `src/plan/catalog/builtin.rs`.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let catalog = Path::new(&manifest).join("../catalog");
    // A directory: cargo re-runs this script when anything under it changes.
    println!("cargo:rerun-if-changed={}", catalog.display());
    let mut files = Vec::new();
    if let Ok(dirs) = std::fs::read_dir(&catalog) {
        for dir in dirs.flatten() {
            let Ok(versions) = std::fs::read_dir(dir.path()) else {
                continue;
            };
            for file in versions.flatten() {
                let path = file.path();
                if path.extension().is_some_and(|e| e == "yaml") {
                    let rel = format!(
                        "{}/{}",
                        dir.file_name().to_string_lossy(),
                        file.file_name().to_string_lossy()
                    );
                    files.push((rel, path));
                }
            }
        }
    }
    files.sort();
    let mut out = String::from(
        "/// Built-in catalog entries: path under `catalog/`, file text.\n\
         pub(crate) static FILES: &[(&str, &str)] = &[\n",
    );
    for (rel, path) in &files {
        let abs = path.canonicalize().expect("catalog file exists");
        let _ = writeln!(
            out,
            "    ({rel:?}, include_str!({:?})),",
            abs.display().to_string()
        );
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("catalog.rs");
    std::fs::write(dest, out).expect("write $OUT_DIR/catalog.rs");
}
