//! `krt`: see `krt --help`.

fn main() -> std::process::ExitCode {
    kruntimes_engine::cli::main()
}
