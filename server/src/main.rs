#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    sigil_server::cli::main()
}
