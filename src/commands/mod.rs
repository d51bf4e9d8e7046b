//! Subcommands: each file turns its arguments into a library call and renders the result;
//! `kube_args` and `grpc_args` hold the flags several commands share.
use clap::{Parser, Subcommand};

pub mod completion;
pub mod crd;
pub mod energy;
pub mod fsm;
pub mod grpc_args;
pub mod kube_args;
pub mod lookup;
pub mod maintenance;
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
    propagate_version = true,
    after_help = EXIT_CODES_HELP
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
    #[command(after_help = concat!(
        "Examples:
  # The operator for the Node and Group CRs of namespace homelab, one replica, no mTLS
  kubectl homelab run-operator -n homelab --leader-elect=false

  # Print the cloud-config the Cluster Autoscaler needs to reach it
  kubectl homelab run-operator -n homelab --print-cloud-config

",
        crate::exit_codes_help!()
    ))]
    RunOperator(Box<run_operator::Args>),
    /// Serve the Cluster Autoscaler externalgrpc cloud provider on its own.
    #[command(after_help = concat!(
        "Examples:
  # The gRPC provider for namespace homelab on port 8086
  kubectl homelab serve-grpc -n homelab --listen 127.0.0.1:8086

",
        crate::exit_codes_help!()
    ))]
    ServeGrpc(grpc_args::GrpcArgs),
    /// Power machines on or off by hand (the operator carries it out).
    Power(power::Args),
    /// Take machines out of service (drained, left alone by the autoscaler) and pause groups.
    #[command(subcommand)]
    Maintenance(maintenance::MaintenanceCommand),
    /// Inspect machine lifecycles, or print the lifecycle transition table.
    #[command(subcommand)]
    Fsm(fsm::FsmCommand),
    /// What each machine and group used, cost and saved, from the Node CRs' energy counters.
    Energy(energy::Args),
    /// Print the CustomResourceDefinitions generated from the Rust types.
    #[command(
        subcommand,
        after_help = "Examples:
  # Install the CRDs
  kubectl homelab crd gen | kubectl apply -f -

  # Write one file per CRD into deploy/crds
  kubectl homelab crd gen --out deploy/crds"
    )]
    Crd(crd::CrdCommand),
    /// Dry-run scaling on virtual time with the real decision code.
    Simulate(simulate::Args),
    /// Print shell completions.
    #[command(after_help = "Examples:
  # `kubectl homelab <TAB>` (kubectl 1.26 or later): the plugin completion executable on PATH
  kubectl homelab completion kubectl > ~/.local/bin/kubectl_complete-homelab
  chmod +x ~/.local/bin/kubectl_complete-homelab

  # bash, for the binary called as kubectl-homelab
  source <(kubectl homelab completion bash)

  # zsh, into a directory on $fpath
  kubectl homelab completion zsh > \"${fpath[1]}/_kubectl-homelab\"")]
    Completion(completion::Args),
}

/// The exit codes, for the `after_help` of every command (`concat!` needs a literal).
#[macro_export]
macro_rules! exit_codes_help {
    () => {
        "Exit codes:
  0  success
  1  error (cluster unreachable, API error, anything not listed below)
  2  usage: bad flags or arguments, an invalid --log filter, a name matching several machines
  3  not found: a named machine or --group does not exist
  4  refused: the confirmation was declined (or not given without a terminal: pass --yes),
     the API server denied the change (RBAC, admission policy, validation), or the operator
     refused to act (NotPermitted condition)
  5  timed out: --wait gave up after --timeout
  6  failed: a machine reached phase Failed while --wait followed it"
    };
}

/// Exit codes, as `--help` documents them.
pub const EXIT_CODES_HELP: &str = crate::exit_codes_help!();

/// What kind of failure ended a command; each maps to one exit code ([`EXIT_CODES_HELP`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    Error,
    Usage,
    NotFound,
    Refused,
    TimedOut,
    Failed,
}

impl ExitKind {
    pub fn code(self) -> u8 {
        match self {
            ExitKind::Error => 1,
            ExitKind::Usage => 2,
            ExitKind::NotFound => 3,
            ExitKind::Refused => 4,
            ExitKind::TimedOut => 5,
            ExitKind::Failed => 6,
        }
    }
}

/// An error that says which exit code it ends the command with. Its message is the whole
/// message; the cause, if any, stays the `source`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    pub kind: ExitKind,
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl CliError {
    pub fn new(kind: ExitKind, message: impl Into<String>) -> CliError {
        CliError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub fn with_source(
        kind: ExitKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> CliError {
        CliError {
            kind,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

/// The exit kind of an error a command returned: the first error in its chain that knows its
/// kind decides; anything else is [`ExitKind::Error`].
pub fn exit_kind(error: &anyhow::Error) -> ExitKind {
    if let Some(e) = error.downcast_ref::<CliError>() {
        return e.kind;
    }
    for cause in error.chain() {
        if let Some(e) = cause.downcast_ref::<CliError>() {
            return e.kind;
        }
        if let Some(e) = cause.downcast_ref::<lookup::LookupError>() {
            return e.exit_kind();
        }
        if let Some(e) = cause.downcast_ref::<fsm::InspectError>() {
            return e.exit_kind();
        }
        if cause.is::<crate::logging::LogFilterError>() {
            return ExitKind::Usage;
        }
    }
    ExitKind::Error
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::RunOperator(args) => run_operator::run(*args).await,
            Command::ServeGrpc(args) => serve_grpc::run(args).await,
            Command::Power(args) => power::run(args).await,
            Command::Maintenance(cmd) => maintenance::run(cmd).await,
            Command::Fsm(cmd) => fsm::run(cmd).await,
            Command::Energy(args) => energy::run(args).await,
            Command::Crd(cmd) => crd::run(cmd),
            Command::Simulate(args) => simulate::run(args).await,
            Command::Completion(args) => completion::run(args).await,
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
    use clap::CommandFactory as _;

    /// Every command and subcommand's `--help` has examples, and each `kubectl homelab …`
    /// example line (up to a pipe or redirection) parses.
    #[test]
    fn every_command_has_examples_that_parse() {
        fn walk(cmd: &clap::Command, path: &str, out: &mut Vec<(String, String)>) {
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                let path = format!("{path} {}", sub.get_name());
                let help = sub
                    .get_after_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                out.push((path.clone(), help));
                walk(sub, &path, out);
            }
        }
        let mut all = Vec::new();
        walk(&Cli::command(), "", &mut all);
        let mut parsed = 0;
        for (path, help) in &all {
            // A command group (`fsm`, `crd`) and its subcommands share examples: a parent's
            // examples run its subcommand (`crd gen`), a subcommand's its parent (`fsm inspect`).
            let covered = help.contains("Examples:")
                || all
                    .iter()
                    .any(|(_, h)| h.contains(&format!("kubectl homelab{path} ")));
            assert!(covered, "no examples for{path}");
            for line in help
                .lines()
                .map(str::trim)
                .filter(|l| l.starts_with("kubectl homelab "))
            {
                let command = line
                    .split(['|', '>'])
                    .next()
                    .unwrap_or_default()
                    .trim_start_matches("kubectl homelab ");
                let argv = std::iter::once("kubectl-homelab").chain(command.split_whitespace());
                if let Err(e) = Cli::try_parse_from(argv) {
                    panic!("example {line:?} does not parse: {e}");
                }
                parsed += 1;
            }
        }
        assert!(parsed >= 15, "{parsed} examples");
    }

    #[test]
    fn exit_kinds_are_found_in_the_chain() {
        let e = anyhow::Error::new(CliError::new(ExitKind::TimedOut, "gave up"));
        assert_eq!(exit_kind(&e), ExitKind::TimedOut);
        let e = e.context("while powering on");
        assert_eq!(exit_kind(&e), ExitKind::TimedOut);
        let e = anyhow::Error::new(lookup::LookupError::NotFound {
            name: "x".into(),
            scope: "namespace lab".into(),
            close: vec![],
            known: 1,
        });
        assert_eq!(exit_kind(&e).code(), 3);
        assert_eq!(exit_kind(&anyhow::anyhow!("plain")).code(), 1);
        let codes: std::collections::BTreeSet<u8> = [
            ExitKind::Error,
            ExitKind::Usage,
            ExitKind::NotFound,
            ExitKind::Refused,
            ExitKind::TimedOut,
            ExitKind::Failed,
        ]
        .iter()
        .map(|k| k.code())
        .collect();
        assert_eq!(codes.len(), 6, "distinct codes");
        for code in codes {
            assert!(
                EXIT_CODES_HELP.contains(&format!("  {code}  ")),
                "{code} undocumented"
            );
        }
    }

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
