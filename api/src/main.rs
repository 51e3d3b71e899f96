//! The `canopy` binary: a thin shell over the `api` library.

#![expect(
    unused_crate_dependencies,
    reason = "the binary only calls into the library, which uses the dependencies"
)]

fn main() -> std::process::ExitCode {
    api::cli::main()
}
