//! The operator: CRD types, the pure lifecycle and provider cores, and the edges that drive them.
pub mod api;
pub mod controller;
pub mod drain;
pub mod health;
pub mod leader;
pub mod machine;
pub mod metrics;
pub mod power;
pub mod provider;
pub mod runtime;

/// An error with its causes (`a: b: c`), for messages that must say *why* (connection refused,
/// DNS, TLS trust), not only the outermost context.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
