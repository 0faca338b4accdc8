//! `genesis-gate serve`: wires policies, lookups, metrics and the server.

use crate::cli::ServeArgs;

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let _ = args;
    anyhow::bail!("serve is not wired yet")
}
