//! `kubectl homelab simulate`: determinism, hand-computed figures, a failing boot, scenario
//! errors with lines, the binary's default run, and `--from-cluster` against a real API server
//! (tests/support).
mod support;
use kubectl_homelab::sim::scenario::{NoTraceFiles, Scenario, ScenarioError};
use kubectl_homelab::sim::units::{HOUR, SECOND};
use kubectl_homelab::sim::{Report, RunOptions, run};

fn data(name: &str) -> String {
    let path = format!("{}/tests/data/sim/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn scenario(name: &str) -> Scenario {
    Scenario::parse(name, &data(name), &NoTraceFiles).unwrap_or_else(|e| panic!("{e}"))
}

fn simulate(s: &Scenario) -> Report {
    let opts = RunOptions {
        timeline: true,
        series: true,
    };
    run(s, opts, &mut |_, _| {}).unwrap_or_else(|e| panic!("{e}"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn same_seed_same_report_other_seed_other_report() {
    let s = Scenario::default_scenario().unwrap();
    let a = serde_json::to_string(&simulate(&s)).unwrap();
    let b = serde_json::to_string(&simulate(&s)).unwrap();
    assert_eq!(a, b, "two runs with the same seed differ");
    let mut other = s.clone();
    other.seed += 1;
    let c = serde_json::to_string(&simulate(&other)).unwrap();
    assert_ne!(a, c, "a different seed gave the very same run");
}

/// One machine (off, idle 10 W, busy 30 W, off 1 W, 4 CPUs), one 1-CPU pod at 1h for 30m;
/// scans every 10 s, power action 5 s, boot 60 s, shutdown 10 s, unneeded time 10m.
/// - The pod arrives at 3600 s, together with a scan that runs first (events before arrivals
///   at the same instant), so the scale-up comes at the 3610 s scan.
/// - Power action done at 3615 s (booting), Ready at 3675 s: the pod waited 75 s.
/// - The pod runs 1800 s at 25 % CPU (15 W) until 5475 s. While it runs the node is not
///   unneeded (its pod could not move anywhere), from the 5480 s scan it is (empty), so CA
///   removes it at 5480 + 600 = 6080 s; power-off action done at 6085 s, off at 6095 s.
///
/// Energy: 1 W × 3615 s + 10 W × 60 s + 15 W × 1800 s + 10 W × 610 s + 10 W × 10 s +
/// 1 W × (14400 − 6095) s = 45 720 Ws = 12.7 Wh. Always on: 10 W × 4 h + 5 W × 0.5 h = 42.5 Wh.
#[test]
fn one_machine_one_burst_by_hand() {
    let r = simulate(&scenario("one-burst.yaml"));
    let t = &r.total;
    assert_eq!(t.boots, 1);
    assert_eq!(t.failed_boots, 0);
    assert_eq!(t.power_offs, 1);
    assert!(close(t.kwh, 0.0127), "kWh {}", t.kwh);
    assert!(
        close(t.baseline_kwh, 0.0425),
        "baseline kWh {}",
        t.baseline_kwh
    );
    assert!(
        close(t.machine_hours_on, 2480.0 / 3600.0),
        "hours on {}",
        t.machine_hours_on
    );
    assert!(close(t.cost, 0.0127 * 0.30));
    assert_eq!(r.wait.pods, 1);
    assert_eq!(r.wait.p50_ms, 75 * SECOND);
    assert_eq!(r.wait.p95_ms, 75 * SECOND);
    assert_eq!(r.wait.max_ms, 75 * SECOND);
    assert_eq!(r.unschedulable_ms, 75 * SECOND);
    assert_eq!(r.pods_never_placed, 0);
    let scale_down = r
        .timeline
        .iter()
        .find(|e| e.what.starts_with("CA scale-down"))
        .expect("a scale-down");
    assert_eq!(scale_down.at, 6080 * SECOND);
    let off = r
        .timeline
        .iter()
        .find(|e| e.what == "powered off")
        .expect("powered off");
    assert_eq!(off.at, 6095 * SECOND);
    // The series shows the machine on exactly while it drew more than standby.
    assert!(
        r.series
            .iter()
            .any(|p| p.powered == 1 && p.at == 3615 * SECOND)
    );
    assert!(
        r.series
            .iter()
            .any(|p| p.powered == 0 && p.at == 6095 * SECOND)
    );
}

#[test]
fn failing_boot_backs_the_group_off_and_uses_another_machine() {
    let r = simulate(&scenario("failing-boot.yaml"));
    let flaky = &r.groups[0];
    let steady = &r.groups[1];
    assert_eq!(flaky.name, "flaky");
    assert_eq!(flaky.failed_boots, 1);
    assert_eq!(flaky.boots, 0);
    assert_eq!(steady.boots, 1);
    assert_eq!(r.counters.failed_instances_deleted, 1);
    assert_eq!(r.counters.backoffs, 1);
    assert_eq!(r.wait.pods, 1);
    let pos = |needle: &str| {
        r.timeline
            .iter()
            .position(|e| e.what.contains(needle))
            .unwrap_or_else(|| panic!("no timeline entry containing {needle:?}"))
    };
    let failed = pos("PowerOnFailed");
    let deleted = pos("CA deletes failed instance(s) broken");
    let backoff = pos("CA backs the group off");
    let other = pos("powering on good");
    assert!(failed < deleted && deleted < backoff && backoff < other);
    assert_eq!(r.timeline[backoff].group.as_deref(), Some("flaky"));
    // 10 m arrival, the broken attempt (10 s scan + 5 s action + next scan), then the good
    // machine: scale-up at 620 s, action 5 s, boot 60 s → Ready at 685 s: 85 s wait.
    assert_eq!(r.wait.max_ms, 85 * SECOND);
}

fn parse_err(text: &str) -> ScenarioError {
    match Scenario::parse("bad.yaml", text, &NoTraceFiles) {
        Ok(_) => panic!("scenario parsed, expected an error:\n{text}"),
        Err(e) => e,
    }
}

fn with_machine_extra(extra: &str) -> String {
    data("one-burst.yaml").replace(
        "      watts: {idle: 10, busy: 30, off: 1}\n",
        &format!("      watts: {{idle: 10, busy: 30, off: 1}}\n{extra}"),
    )
}

#[test]
fn malformed_scenarios_name_the_field_and_line() {
    // A bad duration inside a machine's simulation block (line 28, column 17).
    let text = with_machine_extra("    simulation:\n      bootTime: 90x\n");
    let e = parse_err(&text);
    assert_eq!(e.line, Some(28), "{e}");
    assert_eq!(e.field, "machines[0].simulation.bootTime", "{e}");
    let msg = e.to_string();
    assert!(
        msg.starts_with("bad.yaml:28:17: machines[0].simulation.bootTime: "),
        "{msg}"
    );
    assert!(msg.contains("expected a duration like \"90s\""), "{msg}");

    // A probability out of range.
    let e = parse_err(&with_machine_extra(
        "    simulation:\n      neverBoots: 2\n",
    ));
    assert_eq!(e.line, Some(28), "{e}");
    assert!(e.to_string().contains("between 0 and 1"), "{e}");

    // An unknown field.
    let e = parse_err(&with_machine_extra("    simulation:\n      bootTme: 90s\n"));
    assert_eq!(e.line, Some(28), "{e}");
    assert!(e.to_string().contains("unknown field `bootTme`"), "{e}");

    // A machine in a group that does not exist: found after parsing, still with its line.
    let text = data("one-burst.yaml").replace("labels: {group: solo}", "labels: {group: sol}");
    let e = parse_err(&text);
    assert_eq!(e.field, "machines[0].metadata.labels.group", "{e}");
    assert_eq!(e.line, Some(22), "{e}");
    assert!(e.to_string().contains("no Group \"sol\""), "{e}");

    // A compat threshold that is not a fraction, in the Group spec.
    let text = data("one-burst.yaml").replace(
        "spec: {minSize: 0, maxSize: 1}",
        "spec:\n      minSize: 0\n      scaleDownUtilizationThreshold: \"70\"",
    );
    let e = parse_err(&text);
    assert_eq!(
        e.field, "groups[0].spec.scaleDownUtilizationThreshold",
        "{e}"
    );
    assert_eq!(e.line, Some(20), "{e}");
    assert!(e.to_string().contains("0.7"), "{e}");

    // A machine without capacity.
    let text = data("one-burst.yaml").replace(
        "      capacity: {cpu: \"4\", memory: 8Gi, pods: \"110\"}\n",
        "",
    );
    let e = parse_err(&text);
    assert_eq!(e.field, "machines[0].spec", "{e}");
    assert_eq!(e.line, Some(23), "{e}");
    assert!(e.to_string().contains("spec.capacity.cpu"), "{e}");

    // Two arrival kinds in one workload.
    let text = data("one-burst.yaml").replace(
        "    burst: {at: 1h, count: 1}\n",
        "    burst: {at: 1h, count: 1}\n    constant: {rate: 1/h}\n",
    );
    let e = parse_err(&text);
    assert_eq!(e.field, "workload[0]", "{e}");
    assert_eq!(e.line, Some(28), "{e}");

    // Not YAML at all.
    let e = parse_err("duration: [7d\n");
    assert!(e.line.is_some(), "{e}");
}

#[test]
fn trace_workload_from_inline_csv() {
    let text = data("one-burst.yaml").replace(
        "    burst: {at: 1h, count: 1}\n    cpu: \"1\"\n    memory: 1Gi\n    duration: 30m\n",
        "    trace:\n      inline: |\n        time,cpu,memory,duration\n        3600,1,1Gi,1800\n",
    );
    let s = Scenario::parse("trace.yaml", &text, &NoTraceFiles).unwrap_or_else(|e| panic!("{e}"));
    let r = simulate(&s);
    // The same pod as the burst: the same figures.
    assert_eq!(r.wait.max_ms, 75 * SECOND);
    assert!(close(r.total.kwh, 0.0127));
    let bad = text.replace("3600,1,1Gi,1800", "3600,1,lots,1800");
    let e = parse_err(&bad);
    assert!(e.to_string().contains("line 2: memory"), "{e}");
}

#[test]
fn the_default_scenario_runs_a_week_and_saves_energy() {
    let s = Scenario::default_scenario().unwrap();
    assert_eq!(s.duration, 7 * 24 * HOUR);
    let r = simulate(&s);
    assert!(r.pods_arrived > 1000);
    assert_eq!(r.pods_never_placed, 0);
    assert!(r.total.kwh < r.total.baseline_kwh);
    assert!(r.total.boots > 0);
}

#[test]
fn the_binary_with_no_arguments_prints_a_report() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-homelab"))
        .arg("simulate")
        .output()
        .expect("run kubectl-homelab simulate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    for needle in [
        "default homelab",
        "minis",
        "towers",
        "total",
        "kWh",
        "POD WAIT",
    ] {
        assert!(
            stdout.contains(needle),
            "{needle:?} missing from:\n{stdout}"
        );
    }
}

#[test]
fn the_binary_reports_a_bad_file_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lab.yaml");
    std::fs::write(
        &path,
        with_machine_extra("    simulation:\n      bootTime: 90x\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-homelab"))
        .arg("simulate")
        .arg(&path)
        .output()
        .expect("run kubectl-homelab simulate FILE");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("lab.yaml:28:17:") && stderr.contains("machines[0].simulation.bootTime"),
        "{stderr}"
    );
}

#[test]
fn json_and_plot_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("out.svg");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-homelab"))
        .args(["simulate", "-o", "json", "--plot"])
        .arg(&svg)
        .output()
        .expect("run kubectl-homelab simulate -o json");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert_eq!(v["scenario"], "default homelab");
    assert!(v["timeline"].as_array().is_some_and(|t| !t.is_empty()));
    assert!(v["groups"].as_array().is_some_and(|g| g.len() == 2));
    let svg = std::fs::read_to_string(&svg).expect("plot written");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("pending pods") && svg.contains("machines"));
}

#[test]
fn groups_and_nodes_from_a_cluster_replace_the_scenarios() {
    use kubectl_homelab::operator::api::{Group, Machine};
    let group: Group = serde_yaml::from_str(
        "apiVersion: infra.homecluster.dev/v1alpha1\nkind: Group\n\
         metadata: {name: solo, namespace: lab}\nspec: {maxSize: 1}\n",
    )
    .unwrap();
    // No spec.capacity: the capacity comes from the last-seen node in status; observed power
    // state on, so the machine starts on.
    let machine: Machine = serde_yaml::from_str(
        "apiVersion: infra.homecluster.dev/v1alpha1\nkind: Node\n\
         metadata: {name: box, namespace: lab, labels: {group: solo}}\n\
         spec: {powerState: \"off\", watts: {idle: 10, busy: 30, off: 1}}\n\
         status:\n  powerState: \"on\"\n  node:\n    name: box\n    seen: \"2026-01-01T00:00:00Z\"\n    \
         capacity: {cpu: \"4\", memory: 8Gi, pods: \"110\"}\n",
    )
    .unwrap();
    let text = data("one-burst.yaml");
    let s = Scenario::with_cluster_objects(
        "one-burst.yaml",
        &text,
        &NoTraceFiles,
        vec![group],
        vec![machine],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.machines.len(), 1);
    assert_eq!(s.machines[0].cpu, 4000);
    assert!(s.machines[0].initially_on);
    let r = simulate(&s);
    // Found on at the start (adopted as Ready), idle, so CA powers it off after the unneeded
    // time (10 m, first scan at 0 s) and on again for the pod at 1 h.
    let first = r
        .timeline
        .iter()
        .find(|e| e.what.starts_with("lifecycle"))
        .unwrap();
    assert_eq!(first.what, "lifecycle Unknown → Ready");
    let down = r
        .timeline
        .iter()
        .find(|e| e.what.starts_with("CA scale-down"))
        .unwrap();
    assert_eq!(down.at, 600 * SECOND);
    assert_eq!(r.total.boots, 1);
    assert_eq!(r.wait.max_ms, 75 * SECOND);

    // A cluster Node CR without any capacity: the error says where it came from and what to do.
    let bare: Machine = serde_yaml::from_str(
        "apiVersion: infra.homecluster.dev/v1alpha1\nkind: Node\n\
         metadata: {name: box, namespace: lab, labels: {group: solo}}\n\
         spec: {watts: {idle: 10}}\n",
    )
    .unwrap();
    let group: Group =
        serde_yaml::from_str("metadata: {name: solo, namespace: lab}\nspec: {}\n").unwrap();
    let e = Scenario::with_cluster_objects(
        "one-burst.yaml",
        &text,
        &NoTraceFiles,
        vec![group],
        vec![bare],
    )
    .expect_err("no capacity must be an error");
    assert_eq!(e.file, "cluster");
    assert_eq!(e.line, None);
    assert!(e.to_string().contains("read from the cluster"), "{e}");
}

/// After `broken`'s power-on fails and CA deletes it and backs the group off, the next
/// `IncreaseSize` must pick `good`: the FSM records `lastPowerOnFailure` and the provider orders
/// such machines after healthy ones (before the fix it re-picked `broken`, first by name, and
/// the pod waited forever).
#[test]
fn same_group_failover_uses_the_other_machine() {
    let r = simulate(&scenario("same-group-failover.yaml"));
    assert_eq!(r.pods_never_placed, 0);
    assert!(r.machines.iter().any(|m| m.name == "good" && m.boots == 1));
}

/// `--from-cluster`: the Groups and Nodes come from a real API server (our CRDs installed), the
/// rest of the scenario from the file.
#[tokio::test]
async fn from_cluster_reads_groups_and_nodes_from_the_api_server() -> anyhow::Result<()> {
    use kube::api::{Api, Patch, PatchParams, PostParams};
    use kubectl_homelab::operator::api::{Group, Machine};

    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("simulate").await?;
    let groups: Api<Group> = Api::namespaced(cp.client()?, &ns);
    let machines: Api<Machine> = Api::namespaced(cp.client()?, &ns);
    let group: Group = serde_yaml::from_str(&format!(
        "apiVersion: infra.homecluster.dev/v1alpha1\nkind: Group\n\
         metadata: {{name: rack, namespace: {ns}}}\nspec: {{maxSize: 2}}\n"
    ))?;
    groups.create(&PostParams::default(), &group).await?;
    for name in ["live-a", "live-b"] {
        let m: Machine = serde_yaml::from_str(&format!(
            "apiVersion: infra.homecluster.dev/v1alpha1\nkind: Node\n\
             metadata: {{name: {name}, namespace: {ns}, labels: {{group: rack}}}}\n\
             spec:\n  powerState: \"off\"\n  \
             power: {{\"on\": {{wakeOnLan: {{mac: \"aa:bb:cc:00:00:0{}\"}}}}, \"off\": {{nodeAgent: {{}}}}}}\n  \
             watts: {{idle: 12, busy: 40, off: 1}}\n",
            if name == "live-a" { 1 } else { 2 }
        ))?;
        machines.create(&PostParams::default(), &m).await?;
        // Capacity only in the last-seen node snapshot, as a machine that registered before.
        let status = serde_json::json!({"status": {"powerState": "off", "node": {
            "name": name, "seen": "2026-11-01T00:00:00Z",
            "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"}}}});
        machines
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
    }
    let file = format!(
        "{}/tests/data/sim/one-burst.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-homelab"))
        .args(["simulate", &file, "--from-cluster", "-n", &ns, "-o", "json"])
        .env("KUBECONFIG", cp.kubeconfig())
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["groups"][0]["name"], "rack");
    let names: Vec<&str> = v["machines"]
        .as_array()
        .map(|ms| ms.iter().filter_map(|m| m["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["live-a", "live-b"]);
    // The file's workload ran on the cluster's machines: one boot for the one pod.
    assert_eq!(v["total"]["boots"], 1);
    assert_eq!(v["wait"]["maxMs"], 75_000);
    Ok(())
}

/// Many seeds of a hostile homelab (30 % of power-ons and 20 % of power-offs fail, 20 % of boots
/// hang): every run must end without an invariant violation (the FSM never rejects an event,
/// nothing is powered off with pods, sizes stay within bounds) and with sane figures.
#[test]
fn hostile_hardware_never_breaks_an_invariant() {
    let text = kubectl_homelab::sim::scenario::DEFAULT_SCENARIO
        .replace(
            "powerOnFailure: 0.02",
            "powerOnFailure: 0.3\n  neverBoots: 0.2\n  powerOffFailure: 0.2",
        )
        .replace("duration: 168h", "duration: 48h");
    let base = Scenario::parse("hostile", &text, &NoTraceFiles).unwrap_or_else(|e| panic!("{e}"));
    for seed in 0..12 {
        let mut s = base.clone();
        s.seed = seed;
        let r = run(&s, RunOptions::default(), &mut |_, _| {})
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(
            r.total.failed_boots > 0,
            "seed {seed}: no failures at these odds"
        );
        assert!(
            r.total.kwh > 0.0 && r.total.kwh <= r.total.baseline_kwh + 1e-9,
            "seed {seed}"
        );
        assert!(r.wait.pods > 0, "seed {seed}");
    }
}
