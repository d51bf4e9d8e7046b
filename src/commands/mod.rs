//! Subcommands: each file turns its arguments into a library call and renders the result.
use clap::{Parser, Subcommand};

pub mod completion;
pub mod crd;
pub mod fsm;
pub mod power;
pub mod run_operator;
pub mod serve_grpc;
pub mod simulate;

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
    RunOperator(run_operator::Args),
    /// Serve the Cluster Autoscaler externalgrpc cloud provider on its own.
    ServeGrpc(serve_grpc::Args),
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
            Command::RunOperator(args) => run_operator::run(args).await,
            Command::ServeGrpc(args) => serve_grpc::run(args).await,
            Command::Power(args) => power::run(args).await,
            Command::Fsm(cmd) => fsm::run(cmd).await,
            Command::Crd(cmd) => crd::run(cmd),
            Command::Simulate(args) => simulate::run(args).await,
            Command::Completion(args) => completion::run(args),
        }
    }
}
