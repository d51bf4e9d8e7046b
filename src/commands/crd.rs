//! `kubectl homelab crd gen`: the CRDs generated from the Rust types.
use std::path::PathBuf;

use crate::operator::api::{crds, crds_yaml};
use anyhow::Context as _;

#[derive(Debug, clap::Subcommand)]
pub enum CrdCommand {
    /// Print both CRDs as one multi-document YAML (for `kubectl apply -f -`), or write one file
    /// per CRD with `--out`.
    Gen(GenArgs),
}

#[derive(Debug, clap::Args)]
pub struct GenArgs {
    /// Write `<plural>.<group>.yaml` files into this directory instead of printing.
    #[arg(long, value_name = "DIR", value_hint = clap::ValueHint::DirPath)]
    pub out: Option<PathBuf>,
}

/// File name and YAML of each CRD, as `crd gen --out` writes them (also used by the drift test).
pub fn crd_files() -> anyhow::Result<Vec<(String, String)>> {
    crds()
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let yaml = crate::yaml::to_multi_doc(std::slice::from_ref(&crd))
                .with_context(|| format!("rendering CRD {name}"))?;
            Ok((format!("{name}.yaml"), yaml))
        })
        .collect()
}

pub fn run(cmd: CrdCommand) -> anyhow::Result<()> {
    match cmd {
        CrdCommand::Gen(GenArgs { out: None }) => {
            super::print_stdout(&crds_yaml()?)?;
            Ok(())
        }
        CrdCommand::Gen(GenArgs { out: Some(dir) }) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create directory {}", dir.display()))?;
            for (name, yaml) in crd_files()? {
                let path = dir.join(&name);
                std::fs::write(&path, yaml)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
            Ok(())
        }
    }
}
