//! Logging: JSON when running in a cluster (log collectors parse it), human-readable on a terminal.
use tracing_subscriber::EnvFilter;

pub fn init(filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Ignore the error: a test harness may have installed a subscriber already.
    let _ = if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
