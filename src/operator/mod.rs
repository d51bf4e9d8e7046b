//! The operator: CRD types, the pure lifecycle and provider cores, and the edges that drive them.
pub mod api;
pub mod ca;
pub mod cache;
pub mod calendar;
pub mod controller;
pub mod energy;
pub mod health;
pub mod interned;
pub mod kube_node;
pub mod leader;
pub mod machine;
pub mod meter;
pub mod metrics;
pub mod node;
pub mod policy;
pub mod power;
pub mod provider;
pub mod run;
pub mod runtime;
pub mod trust;

/// Field manager of the operator's writes (Node CR status, Kubernetes Nodes, Jobs; shows in
/// `managedFields`). The provider's desired-power writes and `kubectl homelab power` have
/// managers of their own, so `managedFields` tells the three writers apart.
pub const FIELD_MANAGER: &str = "kubectl-homelab-operator";

/// An error with its causes on one line (`a: b: c`), for logs, Events and status: messages
/// must say *why* (connection refused, DNS, TLS trust), not only the outermost context.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut messages = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        messages.push(s.to_string());
        source = s.source();
    }
    distinct_messages(messages).join(": ")
}

/// The messages of an error chain worth showing: trimmed, without empty ones and without a
/// cause whose text a message before it already includes (many errors repeat their cause in
/// their own message). Logs ([`error_chain`]) and the CLI render the chain from this.
pub fn distinct_messages(messages: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut shown: Vec<String> = Vec::new();
    for message in messages {
        let message = message.trim();
        if message.is_empty() || shown.iter().any(|prev| prev.contains(message)) {
            continue;
        }
        shown.push(message.to_owned());
    }
    shown
}
