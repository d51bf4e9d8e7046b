#[derive(Debug, clap::Subcommand)]
pub enum CrdCommand {
    /// Print the CRDs as YAML.
    Gen,
}

pub fn run(_cmd: CrdCommand) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
