//! Parse, initialise logging, dispatch. Nothing else lives here.
use clap::Parser;
use kubectl_homelab::commands::Cli;

fn main() -> std::process::ExitCode {
    // Before any thread exists (see the module docs).
    kubectl_homelab::memory::tune_allocator();
    let cli = Cli::parse();
    kubectl_homelab::logging::init(&cli.log);
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
            eprintln!("{}", kubectl_homelab::commands::render_error(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
