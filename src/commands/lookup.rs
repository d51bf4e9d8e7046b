//! Finding machines by the names people type, one rule for every command (`power`,
//! `fsm inspect`): a Node CR's own name first, then the Kubernetes node name the operator uses
//! for it ([`Machine::node_name`]: `spec.kubernetesNodeName`, else the `status.node.name` it last
//! registered as). A name that matches nothing names close matches; a name several machines
//! answer to is refused rather than guessed.
use kube::ResourceExt as _;

use super::ExitKind;
use crate::operator::api::Machine;

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("{}", not_found_message(.name, .scope, .close, *.known))]
    NotFound {
        name: String,
        /// Where we looked: `namespace lab`, `all namespaces`, a file name.
        scope: String,
        close: Vec<String>,
        known: usize,
    },
    #[error(
        "{name:?} is ambiguous in {scope}: it names Node CRs {}; use the Node CR name{}",
        .machines.join(", "),
        if .machines.iter().any(|m| m.contains('/')) { " and -n NAMESPACE" } else { "" }
    )]
    Ambiguous {
        name: String,
        scope: String,
        machines: Vec<String>,
    },
    #[error("{}", group_message(.name, .scope, .close))]
    GroupNotFound {
        name: String,
        scope: String,
        close: Vec<String>,
    },
}

impl LookupError {
    pub fn exit_kind(&self) -> ExitKind {
        match self {
            LookupError::NotFound { .. } | LookupError::GroupNotFound { .. } => ExitKind::NotFound,
            LookupError::Ambiguous { .. } => ExitKind::Usage,
        }
    }
}

fn not_found_message(name: &str, scope: &str, close: &[String], known: usize) -> String {
    let mut m = format!(
        "no machine {name:?} in {scope} (looked for a Node CR of that name, then a Kubernetes node \
         name: spec.kubernetesNodeName, else status.node.name)"
    );
    if !close.is_empty() {
        m.push_str(&format!("; did you mean {}?", close.join(", ")));
    } else if known == 0 {
        m.push_str(&format!("; there are no Node CRs in {scope}"));
    } else {
        m.push_str("; list them with `kubectl get homelab`, or pass -n NAMESPACE");
    }
    m
}

fn group_message(name: &str, scope: &str, close: &[String]) -> String {
    let mut m =
        format!("no group {name:?} in {scope} (no Group CR and no Node CR labelled group={name})");
    if !close.is_empty() {
        m.push_str(&format!("; did you mean {}?", close.join(", ")));
    }
    m
}

/// The Kubernetes node a machine registers as: the operator's rule ([`Machine::node_name`]),
/// else the Node CR's own name (a machine that declares none and never registered).
pub fn kubernetes_node_name(m: &Machine) -> String {
    m.node_name()
        .map(str::to_owned)
        .unwrap_or_else(|| m.name_any())
}

/// `name`, or `namespace/name` when `qualified` (machines from several namespaces).
pub fn display_name(m: &Machine, qualified: bool) -> String {
    match (qualified, m.metadata.namespace.as_deref()) {
        (true, Some(ns)) => format!("{ns}/{}", m.name_any()),
        _ => m.name_any(),
    }
}

fn same(a: &Machine, b: &Machine) -> bool {
    a.metadata.namespace == b.metadata.namespace && a.name_any() == b.name_any()
}

/// The one machine `name` means among `machines` (read from `scope`): a Node CR of that name,
/// else the machine whose Kubernetes node name it is.
pub fn find<'a>(
    machines: &'a [Machine],
    name: &str,
    scope: &str,
) -> Result<&'a Machine, LookupError> {
    let qualified = machines
        .iter()
        .any(|m| m.metadata.namespace != machines[0].metadata.namespace);
    let one = |found: Vec<&'a Machine>| -> Result<Option<&'a Machine>, LookupError> {
        match found.as_slice() {
            [] => Ok(None),
            [m] => Ok(Some(*m)),
            many => Err(LookupError::Ambiguous {
                name: name.to_owned(),
                scope: scope.to_owned(),
                machines: many.iter().map(|m| display_name(m, qualified)).collect(),
            }),
        }
    };
    if let Some(m) = one(machines.iter().filter(|m| m.name_any() == name).collect())? {
        return Ok(m);
    }
    if let Some(m) = one(machines
        .iter()
        .filter(|m| m.node_name() == Some(name))
        .collect())?
    {
        return Ok(m);
    }
    Err(LookupError::NotFound {
        name: name.to_owned(),
        scope: scope.to_owned(),
        close: close_matches(name, machines.iter().flat_map(names_of)),
        known: machines.len(),
    })
}

/// [`find`] for each of `names`, each machine once (in the order first named).
pub fn find_all<'a>(
    machines: &'a [Machine],
    names: &[String],
    scope: &str,
) -> Result<Vec<&'a Machine>, LookupError> {
    let mut out: Vec<&Machine> = Vec::new();
    for name in names {
        let m = find(machines, name, scope)?;
        if !out.iter().any(|o| same(o, m)) {
            out.push(m);
        }
    }
    Ok(out)
}

/// The names a machine answers to.
fn names_of(m: &Machine) -> Vec<String> {
    let mut names = vec![m.name_any()];
    names.extend(m.node_name().map(str::to_owned));
    names
}

/// Candidates within a small edit distance of `name`, or containing it (or contained in it),
/// closest first, at most five.
pub fn close_matches(name: &str, candidates: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut candidates: Vec<String> = candidates.into_iter().collect();
    candidates.sort();
    candidates.dedup();
    let limit = (name.chars().count() / 3).clamp(1, 3);
    let mut scored: Vec<(usize, String)> = candidates
        .into_iter()
        .filter_map(|c| {
            let d = strsim::levenshtein(name, &c);
            (d <= limit || (name.len() >= 2 && (c.contains(name) || name.contains(&c))))
                .then_some((d, c))
        })
        .collect();
    scored.sort();
    scored.into_iter().take(5).map(|(_, c)| c).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::machine::{Phase, PowerState};
    use crate::testing::seen_node;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn found(ms: &[Machine], n: &[&str]) -> Vec<String> {
        match find_all(ms, &names(n), "namespace lab") {
            Ok(t) => t.iter().map(|m| m.name_any()).collect(),
            Err(e) => panic!("{e}"),
        }
    }

    fn error(ms: &[Machine], n: &str) -> LookupError {
        match find(ms, n, "namespace lab") {
            Err(e) => e,
            Ok(m) => panic!("{n} found {}", m.name_any()),
        }
    }

    #[test]
    fn names_resolve_by_cr_then_kubernetes_node_name_each_once() {
        let ms = [
            Machine::test("m1").node_name("host-a").build(),
            Machine::test("m2").build(),
            Machine::test("m3")
                .node_snapshot(seen_node("registered"))
                .build(),
        ];
        assert_eq!(found(&ms, &["host-a", "m2", "m1"]), ["m1", "m2"]);
        assert_eq!(found(&ms, &["registered"]), ["m3"]);
    }

    /// The Node CR name wins over another machine's Kubernetes node name.
    #[test]
    fn a_node_cr_name_wins_over_a_kubernetes_node_name() {
        let ms = [
            Machine::test("a").node_name("b").build(),
            Machine::test("b").node_name("host-b").build(),
        ];
        assert_eq!(found(&ms, &["b"]), ["b"]);
    }

    /// The declared name is the node name; an older registered name is not one any more.
    #[test]
    fn the_declared_node_name_replaces_the_registered_one() {
        let ms = [Machine::test("m")
            .node_name("declared")
            .node_snapshot(seen_node("registered"))
            .build()];
        assert_eq!(found(&ms, &["declared"]), ["m"]);
        assert!(matches!(
            error(&ms, "registered"),
            LookupError::NotFound { .. }
        ));
        assert_eq!(kubernetes_node_name(&ms[0]), "declared");
        assert_eq!(kubernetes_node_name(&Machine::test("bare").build()), "bare");
    }

    #[test]
    fn unknown_names_suggest_close_ones() {
        let ms = [
            Machine::test("worker-1")
                .node_name("nuc-1")
                .desired(PowerState::Off)
                .phase(Phase::Off)
                .build(),
            Machine::test("worker-2").build(),
            Machine::test("gpu").build(),
        ];
        let e = error(&ms, "worker-3");
        assert_eq!(e.exit_kind(), ExitKind::NotFound);
        let e = e.to_string();
        assert!(e.contains("\"worker-3\""), "{e}");
        assert!(e.contains("did you mean worker-1, worker-2?"), "{e}");
        let e = error(&ms, "nuc1").to_string();
        assert!(e.contains("did you mean nuc-1?"), "{e}");
        let e = error(&ms, "zzzzzzzz").to_string();
        assert!(e.contains("kubectl get homelab"), "{e}");
        let e = error(&[], "x").to_string();
        assert!(e.contains("no Node CRs in namespace lab"), "{e}");
    }

    #[test]
    fn a_name_several_machines_answer_to_is_ambiguous() {
        let ms = [
            Machine::test("a").node_name("host").build(),
            Machine::test("b").node_name("host").build(),
        ];
        let e = error(&ms, "host");
        assert_eq!(e.exit_kind(), ExitKind::Usage);
        assert!(e.to_string().contains("a, b"), "{e}");
        // The same CR name in two namespaces (-A).
        let ms = [
            Machine::test("m").namespace("x").build(),
            Machine::test("m").namespace("y").build(),
        ];
        let e = error(&ms, "m").to_string();
        assert!(e.contains("x/m, y/m") && e.contains("-n NAMESPACE"), "{e}");
    }
}
