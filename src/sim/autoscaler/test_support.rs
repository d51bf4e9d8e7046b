//! Test helpers shared by the CA model's tests: a small lab scenario, a simulation of it,
//! pods placed by hand and one loop at a chosen time.
use crate::operator::machine::PowerState;
use crate::sim::RunOptions;
use crate::sim::engine::Sim;
use crate::sim::scenario::{NoTraceFiles, Scenario};
use crate::sim::units::{HOUR, Millis};
use crate::sim::workload::PodSpec;

/// Machines `(name, group, cpu)` of 8Gi, all on; groups `(name, spec)`; `autoscaler` and
/// `extra` (top-level) YAML lines; workloads 0.. as given (none arrive: they only give pods
/// placed by hand their drain traits).
pub(super) fn lab(
    autoscaler: &str,
    groups: &[(&str, &str)],
    machines: &[(&str, &str, u32)],
    workloads: &[&str],
    extra: &str,
) -> Scenario {
    let mut y = format!(
        "duration: 24h\nscheduler: firstFit\n{extra}\nautoscaler:\n  scanInterval: 10s\n{autoscaler}\ngroups:\n"
    );
    for (name, spec) in groups {
        y.push_str(&format!(
            "  - metadata: {{name: {name}, namespace: lab}}\n    spec: {spec}\n"
        ));
    }
    y.push_str("machines:\n");
    for (name, group, cpu) in machines {
        y.push_str(&format!(
            "  - metadata: {{name: {name}, namespace: lab, labels: {{group: {group}}}}}\n    spec:\n      powerState: \"on\"\n      capacity: {{cpu: \"{cpu}\", memory: 8Gi, pods: \"110\"}}\n      watts: {{idle: 10}}\n"
        ));
    }
    y.push_str("workload:\n");
    for w in workloads {
        y.push_str(&format!(
            "  - {{burst: {{at: 720h, count: 1}}, cpu: \"1\", memory: 1Gi, duration: 1h, {w}}}\n"
        ));
    }
    let mut sc = match Scenario::parse("lab.yaml", &y, &NoTraceFiles) {
        Ok(s) => s,
        Err(e) => panic!("{e}\n{y}"),
    };
    // The decision tests see DeleteNodes in the loop that decides it; the delay after the
    // taint has its own test.
    if !autoscaler.contains("nodeDeleteDelayAfterTaint") {
        sc.autoscaler.node_delete_delay_after_taint = 0;
    }
    sc
}

pub(super) fn sim(sc: &Scenario) -> Sim<'_> {
    let mut s = Sim::new(sc, RunOptions::default());
    for m in 0..s.machines.len() {
        s.reconcile(m);
    }
    s
}

/// Puts a pod of `workload` requesting `cpu` millicores and `mem` GiB on node `m`.
pub(super) fn put(s: &mut Sim<'_>, m: usize, cpu: u64, mem: u64, workload: u16) {
    let cordoned: Vec<bool> = s.cluster.nodes.iter().map(|n| n.cordoned).collect();
    for (i, n) in s.cluster.nodes.iter_mut().enumerate() {
        n.cordoned = i != m;
    }
    let spec = PodSpec {
        arrival: s.now,
        cpu,
        memory: mem << 30,
        duration: 10 * HOUR,
        workload,
    };
    let mut out = Vec::new();
    s.cluster.arrive(spec, s.now, &mut out);
    assert_eq!(out.len(), 1, "pod did not fit on node {m}");
    s.counters.pods += 1;
    for (n, c) in s.cluster.nodes.iter_mut().zip(cordoned) {
        n.cordoned = c;
    }
}

pub(super) fn scan_at(s: &mut Sim<'_>, t: Millis) {
    s.now = t;
    s.autoscaler_scan();
}

pub(super) fn unneeded(s: &Sim<'_>) -> Vec<usize> {
    (0..s.machines.len())
        .filter(|&m| s.ca.unneeded_since[m].is_some())
        .collect()
}

pub(super) fn wanted_off(s: &Sim<'_>) -> Vec<usize> {
    (0..s.machines.len())
        .filter(|&m| s.machines[m].desired == PowerState::Off)
        .collect()
}

pub(super) const TWO: &[(&str, &str, u32)] = &[("a", "g", 4), ("b", "g", 4)];
pub(super) const G: &[(&str, &str)] = &[("g", "{minSize: 0}")];
