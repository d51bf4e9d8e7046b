//! Logging: JSON when running in a cluster (log collectors parse it), human-readable on a terminal.
use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// kube's client logs every failed request at ERROR under this target, and then returns the same
/// error to us, which the command renders with its causes; logging it too would print it twice.
/// Naming the target in `--log` turns it back on.
const DUPLICATE_ERRORS: &str = "kube_client::client::builder";

pub fn init(filter: &str) {
    let filter =
        EnvFilter::try_new(with_defaults(filter)).unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file or collector gets plain text.
        .with_ansi(std::io::stderr().is_terminal());
    // Ignore the error: a test harness may have installed a subscriber already.
    let _ = if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// The user's filter, plus `kube_client::client::builder=off` unless it names that target.
fn with_defaults(filter: &str) -> String {
    if filter.contains(DUPLICATE_ERRORS) {
        filter.to_owned()
    } else if filter.trim().is_empty() {
        format!("{DUPLICATE_ERRORS}=off")
    } else {
        format!("{filter},{DUPLICATE_ERRORS}=off")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_request_errors_are_not_logged_twice_unless_asked_for() {
        assert_eq!(
            with_defaults("warn"),
            "warn,kube_client::client::builder=off"
        );
        assert_eq!(
            with_defaults("debug,kube_client::client::builder=debug"),
            "debug,kube_client::client::builder=debug"
        );
        assert!(EnvFilter::try_new(with_defaults("info")).is_ok());
    }
}
