//! The `canopy` binary: a thin shell over the `api` library.

fn main() -> std::process::ExitCode {
    api::cli::main()
}
