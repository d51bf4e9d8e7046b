//! Logging: JSON when running in a cluster (log collectors parse it), human-readable on a terminal.
use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// kube's client logs every failed request at ERROR under this target, and then returns the same
/// error to us, which the command renders with its causes; logging it too would print it twice.
/// Naming the target in `--log` turns it back on.
const DUPLICATE_ERRORS: &str = "kube_client::client::builder";

/// An invalid `--log` filter: which directive, and why tracing refused it.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid --log (or KUBECTL_HOMELAB_LOG) filter {filter:?}: cannot parse directive {directive:?}; \
     use LEVEL or TARGET=LEVEL, comma-separated (e.g. `info` or `kubectl_homelab=debug,kube=info`), \
     LEVEL one of off, error, warn, info, debug, trace"
)]
pub struct LogFilterError {
    pub filter: String,
    pub directive: String,
    #[source]
    pub source: tracing_subscriber::filter::ParseError,
}

/// Checks the user's filter: the first directive tracing cannot parse is the error.
pub fn parse_filter(filter: &str) -> Result<EnvFilter, LogFilterError> {
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if let Err(source) = directive.parse::<tracing_subscriber::filter::Directive>() {
            return Err(LogFilterError {
                filter: filter.to_owned(),
                directive: directive.to_owned(),
                source,
            });
        }
    }
    EnvFilter::try_new(with_defaults(filter)).map_err(|source| LogFilterError {
        filter: filter.to_owned(),
        directive: filter.to_owned(),
        source,
    })
}

/// Logging for the CLI: refuses an invalid filter (the user asked for something we cannot do)
/// instead of quietly logging at another level.
pub fn try_init(filter: &str) -> Result<(), LogFilterError> {
    install(parse_filter(filter)?);
    Ok(())
}

/// Logging with a filter written in code (tests); an invalid one logs warnings only.
pub fn init(filter: &str) {
    install(parse_filter(filter).unwrap_or_else(|_| EnvFilter::new("warn")));
}

fn install(filter: EnvFilter) {
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

    #[test]
    fn an_invalid_directive_is_named() {
        for good in [
            "",
            "warn",
            "kubectl_homelab=debug,kube=info",
            "info,tower=off",
        ] {
            assert!(parse_filter(good).is_ok(), "{good}");
        }
        for (filter, bad) in [
            ("info,=debug", "=debug"),
            ("info,kube=loud", "kube=loud"),
            ("kubectl_homelab=[", "kubectl_homelab=["),
        ] {
            match parse_filter(filter) {
                Ok(_) => panic!("{filter} accepted"),
                Err(e) => {
                    assert_eq!(e.directive, bad);
                    assert!(e.to_string().contains("--log"), "{e}");
                }
            }
        }
    }
}
