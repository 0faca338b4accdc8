use std::process::ExitCode;

// Allocation is about a third of the instructions of a review (parsing the
// body, CEL values, JSON results), and mimalloc serves these small,
// short-lived allocations faster than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    genesis_gate::cli::main()
}
