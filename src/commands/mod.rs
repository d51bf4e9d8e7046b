//! Subcommands: each file turns its arguments into a library call and renders the result;
//! `kube_args` and `grpc_args` hold the flags several commands share.
use clap::{Parser, Subcommand};

pub mod completion;
pub mod crd;
pub mod fsm;
pub mod grpc_args;
pub mod kube_args;
pub mod power;
pub mod run_operator;
pub mod serve_grpc;
pub mod simulate;
pub mod table;

/// Power homelab machines on when pods need room and off when they are idle.
///
/// The Cluster Autoscaler's external gRPC cloud provider for machines that are switched on
/// and off rather than created and deleted.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl-homelab",
    bin_name = "kubectl homelab",
    version,
    propagate_version = true
)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `kubectl_homelab=debug`.
    #[arg(
        long,
        global = true,
        env = "KUBECTL_HOMELAB_LOG",
        default_value = "warn"
    )]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator: CA gRPC provider, controllers (leader only), health and metrics.
    RunOperator(Box<run_operator::Args>),
    /// Serve the Cluster Autoscaler externalgrpc cloud provider on its own.
    ServeGrpc(grpc_args::GrpcArgs),
    /// Power machines on or off by hand (the operator carries it out).
    Power(power::Args),
    /// Inspect machine lifecycles, or print the lifecycle transition table.
    #[command(subcommand)]
    Fsm(fsm::FsmCommand),
    /// Print the CustomResourceDefinitions generated from the Rust types.
    #[command(subcommand)]
    Crd(crd::CrdCommand),
    /// Dry-run scaling on virtual time with the real decision code.
    Simulate(simulate::Args),
    /// Print shell completions.
    Completion(completion::Args),
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::RunOperator(args) => run_operator::run(*args).await,
            Command::ServeGrpc(args) => serve_grpc::run(args).await,
            Command::Power(args) => power::run(args).await,
            Command::Fsm(cmd) => fsm::run(cmd).await,
            Command::Crd(cmd) => crd::run(cmd),
            Command::Simulate(args) => simulate::run(args).await,
            Command::Completion(args) => completion::run(args),
        }
    }
}

/// Writes `text` to standard output. A reader that went away (`kubectl homelab crd gen | head`)
/// ends the output quietly, as it does for kubectl: that is not an error of ours, and `print!`
/// would panic on it.
pub fn print_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// An error and its causes as the CLI prints them, once: the message, then every `source()`
/// whose text the line above does not already include (many errors repeat their cause in
/// their own message), so the reason at the bottom (connection refused, DNS, an untrusted
/// certificate) is never lost.
pub fn render_chain(error: &(dyn std::error::Error + 'static)) -> String {
    render_messages(std::iter::successors(Some(error), |e| e.source()).map(|e| e.to_string()))
}

/// [`render_chain`] for the `anyhow::Error` a command returns.
pub fn render_error(error: &anyhow::Error) -> String {
    render_messages(error.chain().map(|e| e.to_string()))
}

fn render_messages(messages: impl Iterator<Item = String>) -> String {
    let shown = crate::operator::distinct_messages(messages);
    let mut out = format!("error: {}", shown.first().map_or("", String::as_str));
    if shown.len() > 1 {
        out.push_str("\n\nCaused by:");
        for cause in &shown[1..] {
            out.push_str("\n  ");
            out.push_str(cause);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot list machines")]
    struct Top(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("ServiceError: {0}")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn causes_print_once_each_down_to_the_root() {
        let e = Top(Middle(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        )));
        assert_eq!(
            render_chain(&e),
            "error: cannot list machines\n\nCaused by:\n  ServiceError: Connection refused (os error 111)"
        );
        let e = anyhow::Error::new(std::io::Error::other("disk full")).context("cannot write x");
        assert_eq!(
            render_error(&e),
            "error: cannot write x\n\nCaused by:\n  disk full"
        );
        assert_eq!(render_error(&anyhow::anyhow!("plain")), "error: plain");
    }
}
