//! Parse, initialise logging, dispatch, and turn the outcome into an exit code (documented in
//! `kubectl homelab --help`, see `commands::EXIT_CODES_HELP`). Nothing else lives here.
use clap::Parser;
use kubectl_homelab::commands::{Cli, ExitKind, exit_kind, render_chain, render_error};

fn main() -> std::process::ExitCode {
    // Before any thread exists (see the module docs).
    kubectl_homelab::memory::tune_allocator();
    let cli = Cli::parse();
    if let Err(e) = kubectl_homelab::logging::try_init(&cli.log) {
        eprintln!("{}", render_chain(&e));
        return std::process::ExitCode::from(ExitKind::Usage.code());
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", render_error(&e));
            std::process::ExitCode::from(exit_kind(&e).code())
        }
    }
}
