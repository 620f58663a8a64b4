#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    sigil_agent::cli::main()
}
