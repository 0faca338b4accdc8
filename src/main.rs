use std::process::ExitCode;

fn main() -> ExitCode {
    genesis_gate::cli::main()
}
