//! `krt self-install DEST`: copies the running binary (used by the init
//! container that puts `krt` into a RuntimePool's image).

use std::path::PathBuf;

use super::Exit;

/// Copy this `krt` binary to DEST (mode 0755), atomically.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Destination path, e.g. /opt/kruntimes/bin/krt.
    dest: PathBuf,
}

pub fn run(args: Args) -> Exit {
    use std::os::unix::fs::PermissionsExt as _;
    let result = (|| -> std::io::Result<()> {
        let me = std::env::current_exe()?;
        let tmp = args.dest.with_extension("krt-tmp");
        std::fs::copy(&me, &tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&tmp, &args.dest)
    })();
    match result {
        Ok(()) => Exit::Success,
        Err(e) => {
            eprintln!(
                "error: failed to install krt at {}: {e}",
                args.dest.display()
            );
            Exit::Internal
        }
    }
}
