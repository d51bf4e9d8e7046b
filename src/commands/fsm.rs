#[derive(Debug, clap::Subcommand)]
pub enum FsmCommand {
    /// Show every machine's lifecycle phase.
    Inspect,
}

pub async fn run(_cmd: FsmCommand) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
