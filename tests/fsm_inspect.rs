//! `kubectl homelab fsm inspect` as a user runs it: the built binary on files, and against a
//! real API server (tests/support) with and without our CRDs.
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kubectl_homelab::operator::machine::{GraphFormat, TABLE, render};

const BIN: &str = env!("CARGO_BIN_EXE_kubectl-homelab");

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fsm_inspect_machines.yaml")
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        // Never reach a real cluster from these tests.
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(o.status.success(), "{args:?} failed: {}", stderr(&o));
    stdout(&o)
}

/// The table line whose NAME (first or, with NAMESPACE, second column) is `name`.
fn row(table: &str, name: &str) -> String {
    table
        .lines()
        .find(|l| l.split_whitespace().take(2).any(|w| w == name))
        .unwrap_or_else(|| panic!("no row for {name}:\n{table}"))
        .to_owned()
}

fn json(args: &[&str]) -> Vec<serde_json::Value> {
    let out = ok(args);
    match serde_json::from_str::<serde_json::Value>(&out) {
        Ok(serde_json::Value::Array(v)) => v,
        other => panic!("not a JSON array: {other:?}\n{out}"),
    }
}

#[test]
fn table_shows_every_machine_with_its_phase_and_error() {
    let file = data();
    let out = ok(&["fsm", "inspect", "-f", file.to_str().unwrap_or_default()]);
    for header in [
        "NAME",
        "GROUP",
        "DESIRED",
        "OBSERVED",
        "PHASE",
        "SINCE",
        "ATTEMPT",
        "BOOT P50/P95",
        "LAST ERROR",
        "NEXT RETRY",
    ] {
        assert!(out.contains(header), "missing {header}:\n{out}");
    }
    let line = |name: &str| row(&out, name);
    let nuc2 = line("nuc-2");
    assert!(
        nuc2.contains("Failed") && nuc2.contains("ago") && nuc2.contains("5"),
        "{nuc2}"
    );
    assert!(out.contains("gave up"), "{out}");
    assert!(line("nuc-1").contains("Ready"));
    // p50/p95 of nuc-1's recent boots [62, 48, 51, 95, 55]; no boots yet on the others.
    assert!(line("nuc-1").contains("55s/95s"), "{}", line("nuc-1"));
    assert!(!line("tower").contains("s/"), "{}", line("tower"));
    assert!(line("tower").contains("Booting"));
    assert!(line("spare").contains("Unknown"));
    // The core/v1 Node in the same file is not a machine.
    assert!(!out.contains("control-plane"), "{out}");
}

/// Character columns where each header of the first line starts.
fn header_starts(table: &str, headers: &[&str]) -> Vec<usize> {
    let header: Vec<char> = table.lines().next().unwrap_or_default().chars().collect();
    let text: String = header.iter().collect();
    headers
        .iter()
        .map(|h| {
            let byte = text
                .find(&format!("{h} "))
                .or_else(|| text.rfind(h))
                .unwrap_or_else(|| panic!("no header {h}: {text}"));
            text[..byte].chars().count()
        })
        .collect()
}

#[test]
fn the_table_looks_like_kubectl_get() {
    let file = data();
    let out = ok(&["fsm", "inspect", "-f", file.to_str().unwrap_or_default()]);
    // No borders: nothing but the cells and the spaces between them.
    for border in ['│', '─', '┌', '└', '╞', '═', '|', '+'] {
        assert!(!out.contains(border), "border {border:?} in:\n{out}");
    }
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "a header and four machines:\n{out}");
    assert!(lines[0].starts_with("NAME "), "{out}");
    assert_eq!(lines[0], lines[0].to_uppercase(), "upper-case headers");
    // Every left-aligned cell starts under its header, after a space.
    let left = [
        "GROUP",
        "DESIRED",
        "OBSERVED",
        "PHASE",
        "SINCE",
        "LAST ERROR",
    ];
    let starts = header_starts(&out, &left);
    for line in &lines[1..] {
        let chars: Vec<char> = line.chars().collect();
        for (h, &at) in left.iter().zip(&starts) {
            assert!(
                chars[at - 1] == ' ' && chars[at] != ' ',
                "{h} is not aligned in {line:?}:\n{out}"
            );
        }
    }
    // The right-aligned ATTEMPT ends where its header ends.
    let end = header_starts(&out, &["ATTEMPT"])[0] + "ATTEMPT".len();
    let nuc2: Vec<char> = row(&out, "nuc-2").chars().collect();
    assert_eq!((chars_at(&nuc2, end - 1), chars_at(&nuc2, end)), ('5', ' '));
}

/// READBACK shows what the driver last read back (nuc-1's BMC said on); a machine whose driver
/// cannot read back (tower's power Job) or that has no operation yet shows `-`. `-o wide` adds
/// each direction's driver (one name when both ways use the same) and which operation the
/// readback belongs to.
#[test]
fn the_driver_and_its_last_readback_are_shown() {
    let file = data();
    let f = file.to_str().unwrap_or_default();
    let table = ok(&["fsm", "inspect", "-f", f]);
    let at = header_starts(&table, &["READBACK"])[0];
    let cell = |name: &str| -> String {
        row(&table, name)
            .chars()
            .skip(at)
            .take_while(|c| *c != ' ')
            .collect()
    };
    assert_eq!(
        [cell("nuc-1"), cell("tower"), cell("spare")],
        ["on", "-", "-"],
        "{table}"
    );
    assert!(!table.contains("DRIVERS"), "{table}");

    let wide = ok(&["fsm", "inspect", "-f", f, "-o", "wide"]);
    assert!(row(&wide, "nuc-1").contains("redfish on-1 "), "{wide}");
    // bootTimeout: auto from p95 95s: 95s plus the least margin of 1m.
    assert!(row(&wide, "nuc-1").contains("2m 35s (auto)"), "{wide}");
    assert!(row(&wide, "tower").contains("on:job off:redfish"), "{wide}");
    assert!(row(&wide, "nuc-2").contains(" job "), "{wide}");

    let v = json(&["fsm", "inspect", "-f", f, "-o", "json"]);
    let nuc1 = &v[2];
    assert_eq!(
        nuc1["drivers"],
        serde_json::json!({"on": "redfish", "off": "redfish"})
    );
    assert_eq!(nuc1["power"]["readback"], "on");
    assert_eq!(nuc1["power"]["observedAt"], "2026-11-25T08:58:10Z");
    assert!(v[3].get("power").is_none(), "nuc-2 has no driver report");
}

fn chars_at(chars: &[char], i: usize) -> char {
    chars.get(i).copied().unwrap_or('\0')
}

#[test]
fn wide_prints_long_columns_whole_and_no_headers_leaves_only_rows() {
    let file = data();
    let f = file.to_str().unwrap_or_default();
    let full_error = "no Ready Node with the machine's providerID within 10m of powering on \
                      (operation on-5); gave up after 5 attempts";
    let table = ok(&["fsm", "inspect", "-f", f]);
    let nuc2 = row(&table, "nuc-2");
    assert!(
        !nuc2.contains(full_error) && nuc2.contains("no Ready Node with") && nuc2.contains('…'),
        "the default table cuts LAST ERROR: {nuc2}"
    );
    assert!(!table.contains("OPERATION"), "{table}");

    let wide = ok(&["fsm", "inspect", "-f", f, "-o", "wide"]);
    assert!(row(&wide, "nuc-2").contains(full_error), "{wide}");
    assert!(
        wide.lines()
            .next()
            .unwrap_or_default()
            .contains("OPERATION")
    );
    assert!(row(&wide, "tower").contains("on-2 (done)"), "{wide}");

    for args in [
        vec!["-f", f, "--no-headers"],
        vec!["-f", f, "-o", "wide", "--no-headers"],
    ] {
        let mut argv = vec!["fsm", "inspect"];
        argv.extend(args);
        let out = ok(&argv);
        assert_eq!(out.lines().count(), 4, "{out}");
        assert!(!out.contains("NAME") && !out.contains("PHASE"), "{out}");
        assert!(out.starts_with("spare "), "sorted rows only:\n{out}");
    }
}

#[test]
fn json_has_the_lifecycle_fields_sorted_by_group_and_name() {
    let file = data();
    let v = json(&[
        "fsm",
        "inspect",
        "-f",
        file.to_str().unwrap_or_default(),
        "-o",
        "json",
    ]);
    let names: Vec<&str> = v.iter().filter_map(|m| m["name"].as_str()).collect();
    assert_eq!(names, ["spare", "tower", "nuc-1", "nuc-2"]);
    let nuc2 = &v[3];
    assert_eq!(nuc2["namespace"], "homelab");
    assert_eq!(nuc2["group"], "nucs");
    assert_eq!(nuc2["desired"], "on");
    assert_eq!(nuc2["observed"], "off");
    assert_eq!(nuc2["phase"], "Failed");
    assert_eq!(nuc2["phaseSince"], "2026-11-25T10:00:00Z");
    assert_eq!(nuc2["attempt"], 5);
    assert!(nuc2.get("nextRetryTime").is_none());
    assert!(nuc2["lastError"].as_str().unwrap_or("").contains("gave up"));
    let tower = &v[1];
    assert_eq!(tower["operation"]["id"], "on-2");
    assert_eq!(tower["progress"], "startingup");
    assert_eq!(
        tower["observed"], "on",
        "derived from the phase when status has none"
    );
    assert_eq!(v[0]["phase"], "Unknown");
}

#[test]
fn yaml_output_says_the_same_as_json() {
    let file = data();
    let f = file.to_str().unwrap_or_default();
    let j = json(&["fsm", "inspect", "-f", f, "-o", "json"]);
    let y = ok(&["fsm", "inspect", "-f", f, "-o", "yaml"]);
    let parsed: Vec<serde_json::Value> =
        serde_yaml::from_str(&y).unwrap_or_else(|e| panic!("not YAML: {e}\n{y}"));
    assert_eq!(parsed, j);
    // kubectl reads YAML 1.1: on/off must be quoted.
    assert!(
        y.contains("desired: \"on\"") || y.contains("desired: 'on'"),
        "{y}"
    );
}

#[test]
fn names_select_machines_and_unknown_names_fail() {
    let file = data();
    let f = file.to_str().unwrap_or_default();
    let v = json(&["fsm", "inspect", "-f", f, "-o", "json", "nuc-2", "tower"]);
    assert_eq!(v.len(), 2);
    let o = run(&["fsm", "inspect", "-f", f, "nuc-9"]);
    assert_eq!(o.status.code(), Some(3), "not found");
    let err = stderr(&o);
    assert!(
        err.contains("nuc-9") && err.contains("did you mean nuc-1, nuc-2?"),
        "{err}"
    );
}

/// An invalid `--log` filter is a usage error naming the flag and the directive, before
/// anything runs.
#[test]
fn an_invalid_log_filter_is_an_error_naming_the_directive() {
    let o = run(&["--log", "info,kube=loud", "fsm", "inspect", "--graph"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("--log") && err.contains("\"kube=loud\""),
        "{err}"
    );
    assert!(stdout(&o).is_empty());
    let o = Command::new(BIN)
        .args(["fsm", "inspect", "--graph"])
        .env("KUBECTL_HOMELAB_LOG", "kubectl_homelab=[")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("KUBECTL_HOMELAB_LOG"), "{}", stderr(&o));
}

#[test]
fn help_documents_the_exit_codes_and_examples() {
    for cmd in [&["fsm", "inspect", "--help"][..], &["power", "--help"]] {
        let out = ok(cmd);
        for want in ["Examples:", "Exit codes:", "3  not found", "5  timed out"] {
            assert!(out.contains(want), "{cmd:?} lacks {want}:\n{out}");
        }
    }
}

#[test]
fn graph_prints_the_transition_table() {
    let mermaid = ok(&["fsm", "inspect", "--graph"]);
    assert_eq!(mermaid, render(GraphFormat::Mermaid));
    assert_eq!(ok(&["fsm", "inspect", "--graph", "mermaid"]), mermaid);
    let edges = mermaid
        .lines()
        .filter(|l| l.contains(" --> ") && !l.contains("[*]"))
        .count();
    assert_eq!(edges, TABLE.len());
    assert!(mermaid.contains("Booting --> Ready: NodeReady"));
    let dot = ok(&["fsm", "inspect", "--graph", "dot"]);
    assert!(dot.starts_with("digraph lifecycle {"));
    assert!(dot.trim_end().ends_with('}'));
    assert_eq!(
        dot.lines().filter(|l| l.contains(" -> ")).count(),
        TABLE.len()
    );
    let md = ok(&["fsm", "inspect", "--graph", "markdown"]);
    assert_eq!(md.lines().count(), TABLE.len() + 2);
}

#[test]
fn examples_inspect_cleanly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        // The examples belong to another part of the project; nothing to check without them.
        return;
    };
    let mut checked = 0;
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let machines = text
            .split("\n---")
            .filter(|d| {
                d.contains("apiVersion: infra.homecluster.dev/") && d.contains("\nkind: Node")
            })
            .count();
        let v = json(&[
            "fsm",
            "inspect",
            "-f",
            path.to_str().unwrap_or_default(),
            "-o",
            "json",
        ]);
        assert_eq!(v.len(), machines, "{}", path.display());
        ok(&["fsm", "inspect", "-f", path.to_str().unwrap_or_default()]);
        checked += 1;
    }
    assert!(checked > 0 || std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0) == 0);
}

#[test]
fn bad_files_give_clear_errors_and_fail() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "items:\n- name: [unclosed\n  x: 1\n").unwrap_or_else(|e| panic!("{e}"));
    let o = run(&["fsm", "inspect", "-f", bad.to_str().unwrap_or_default()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("bad.yaml") && err.contains("line"), "{err}");
    assert!(stdout(&o).is_empty());

    let missing = dir.path().join("missing.yaml");
    let o = run(&["fsm", "inspect", "-f", missing.to_str().unwrap_or_default()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("missing.yaml"), "{}", stderr(&o));

    // YAML, but a Node with a wrong field type: names the object.
    let wrong = dir.path().join("wrong.yaml");
    std::fs::write(
        &wrong,
        "apiVersion: infra.homecluster.dev/v1alpha1\nkind: Node\nmetadata: {name: m1}\nspec: {powerState: sideways}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let o = run(&["fsm", "inspect", "-f", wrong.to_str().unwrap_or_default()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("wrong.yaml") && err.contains("m1"), "{err}");
}

#[test]
fn without_a_cluster_the_error_suggests_a_file() {
    let o = run(&["fsm", "inspect"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("no Kubernetes configuration") && err.contains("-f"),
        "{err}"
    );
}

#[test]
fn namespace_and_all_namespaces_conflict() {
    let o = run(&["fsm", "inspect", "-n", "x", "-A"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("cannot be used with"), "{}", stderr(&o));
}

fn run_with_kubeconfig(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"))
}

#[tokio::test]
async fn reads_node_crs_with_status_from_the_api_server() -> anyhow::Result<()> {
    use kube::api::{Api, Patch, PatchParams, PostParams};
    use kubectl_homelab::operator::api::Machine;

    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("fsm-inspect").await?;
    let api: Api<Machine> = Api::namespaced(cp.client()?, &ns);
    let text = std::fs::read_to_string(data())?;
    let machines = kubectl_homelab::commands::fsm::parse_machines("data", &text)?;
    assert_eq!(machines.len(), 4);
    for mut m in machines {
        let status = m.status.take();
        m.metadata.namespace = Some(ns.clone());
        let name = m.metadata.name.clone().unwrap_or_default();
        api.create(&PostParams::default(), &m).await?;
        if let Some(status) = status {
            let patch = serde_json::json!({ "status": status });
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
    }
    let kubeconfig = cp.kubeconfig().to_path_buf();
    let o = run_with_kubeconfig(&kubeconfig, &["fsm", "inspect", "-n", &ns, "-o", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout)?;
    let names: Vec<&str> = v.iter().filter_map(|m| m["name"].as_str()).collect();
    assert_eq!(names, ["spare", "tower", "nuc-1", "nuc-2"]);
    // Every lifecycle field survived the CRD schema (nothing pruned).
    assert_eq!(v[3]["phase"], "Failed");
    assert_eq!(v[3]["attempt"], 5);
    assert_eq!(v[1]["operation"]["id"], "on-2");
    assert_eq!(v[1]["operation"]["completed"], "2026-11-25T11:58:00Z");
    // Same as reading the file.
    let from_file = json(&[
        "fsm",
        "inspect",
        "-f",
        data().to_str().unwrap_or_default(),
        "-o",
        "json",
    ]);
    let strip_ns = |v: &[serde_json::Value]| -> Vec<serde_json::Value> {
        v.iter()
            .map(|m| {
                let mut m = m.clone();
                if let Some(o) = m.as_object_mut() {
                    o.remove("namespace");
                }
                m
            })
            .collect()
    };
    assert_eq!(strip_ns(&v), strip_ns(&from_file));

    let o = run_with_kubeconfig(&kubeconfig, &["fsm", "inspect", "-n", &ns, "tower"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    assert!(
        table.contains("tower") && !table.contains("nuc-1"),
        "{table}"
    );

    let o = run_with_kubeconfig(&kubeconfig, &["fsm", "inspect", "-A", "-o", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let all: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout)?;
    assert_eq!(
        all.iter().filter(|m| m["namespace"] == ns.as_str()).count(),
        4
    );
    Ok(())
}

/// Nothing to show: standard output stays empty (or an empty JSON list) and kubectl's notice
/// goes to standard error.
#[tokio::test]
async fn an_empty_namespace_says_so_on_stderr_only() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("fsm-empty").await?;
    let kubeconfig = cp.kubeconfig().to_path_buf();
    for output in ["table", "wide", "name"] {
        let o = run_with_kubeconfig(&kubeconfig, &["fsm", "inspect", "-n", &ns, "-o", output]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stdout(&o), "", "-o {output}");
        assert_eq!(
            stderr(&o),
            format!("No resources found in {ns} namespace.\n"),
            "-o {output}"
        );
    }
    let o = run_with_kubeconfig(&kubeconfig, &["fsm", "inspect", "-n", &ns, "-o", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "[]");
    assert_eq!(stderr(&o), "");
    Ok(())
}

#[tokio::test]
async fn without_crds_the_error_says_how_to_install_them() -> anyhow::Result<()> {
    let Some(cp) = support::own(support::Options::default().without_crds()).await? else {
        return Ok(());
    };
    let o = run_with_kubeconfig(cp.kubeconfig(), &["fsm", "inspect", "-A"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("CRDs are not installed")
            && err.contains("kubectl homelab crd gen | kubectl apply -f -"),
        "{err}"
    );
    Ok(())
}

#[test]
fn reads_a_single_object_from_stdin() {
    use std::io::Write as _;
    let mut child = Command::new(BIN)
        .args(["fsm", "inspect", "-f", "-", "-o", "json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    let doc = "apiVersion: infra.homecluster.dev/v1alpha1\nkind: Node\nmetadata: {name: solo}\n\
               spec: {powerState: \"off\"}\nstatus: {phase: Off, phaseSince: \"2026-01-01T00:00:00Z\"}\n";
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(doc.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let o = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Vec<serde_json::Value> =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["name"], "solo");
    assert_eq!(v[0]["phase"], "Off");
    assert_eq!(v[0]["observed"], "off");
    assert_eq!(v[0]["progress"], "shutdown");
}

/// A kubeconfig with one context per `(name, server, ca)`, the first current, every user the
/// same token.
fn kubeconfig(dir: &Path, contexts: &[(&str, &str, Option<&Path>)], token: &str) -> PathBuf {
    let mut clusters = String::new();
    let mut ctxs = String::new();
    for (name, server, ca) in contexts {
        clusters.push_str(&format!(
            "- name: {name}\n  cluster:\n    server: {server}\n"
        ));
        if let Some(ca) = ca {
            clusters.push_str(&format!("    certificate-authority: {}\n", ca.display()));
        }
        ctxs.push_str(&format!(
            "- name: {name}\n  context:\n    cluster: {name}\n    user: u\n    namespace: default\n"
        ));
    }
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n{clusters}users:\n- name: u\n  user:\n    \
         token: {token}\ncontexts:\n{ctxs}current-context: {}\n",
        contexts[0].0
    );
    let path = dir.join(format!("kubeconfig-{}", contexts[0].0));
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    path
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    l.local_addr()
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn inspect_fails_with(kubeconfig: &Path) -> String {
    let o = Command::new(BIN)
        .args(["fsm", "inspect", "--kubeconfig"])
        .arg(kubeconfig)
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    assert!(!o.status.success());
    assert!(stdout(&o).is_empty());
    stderr(&o)
}

#[test]
fn an_unreachable_server_is_reported_with_the_refused_connection() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let server = format!("https://127.0.0.1:{}", closed_port());
    let kc = kubeconfig(dir.path(), &[("closed", &server, None)], "t");
    let err = inspect_fails_with(&kc);
    assert!(err.contains(&server), "names the server: {err}");
    assert!(
        err.to_lowercase().contains("connection refused"),
        "says why: {err}"
    );
    assert!(
        err.matches("client error (Connect)").count() <= 1,
        "once: {err}"
    );
}

#[test]
fn an_unknown_host_is_reported_as_a_dns_failure() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    // `.invalid` never resolves (RFC 2606).
    let server = "https://apiserver.homelab.invalid:6443";
    let kc = kubeconfig(dir.path(), &[("nowhere", server, None)], "t");
    let err = inspect_fails_with(&kc);
    assert!(err.contains(server), "{err}");
    assert!(err.contains("dns error"), "says why: {err}");
}

#[test]
fn a_missing_kubeconfig_names_the_flag_and_the_file() {
    let err = inspect_fails_with(Path::new("/nonexistent/homelab.kubeconfig"));
    assert!(
        err.contains("--kubeconfig /nonexistent/homelab.kubeconfig")
            && err.contains("No such file or directory")
            && err.contains("-f nodes.yaml"),
        "{err}"
    );
}

/// The token the harness's admin kubeconfig carries.
fn admin_token(cp: &support::ControlPlane) -> anyhow::Result<String> {
    let kc: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(cp.kubeconfig())?)?;
    kc["users"][0]["user"]["token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no token in {}", cp.kubeconfig().display()))
}

#[tokio::test]
async fn a_server_certificate_the_kubeconfig_does_not_trust_is_reported() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    // The real API server, without the CA that signed its certificate.
    let kc = kubeconfig(
        dir.path(),
        &[("untrusted", &cp.server, None)],
        &admin_token(cp)?,
    );
    let err = inspect_fails_with(&kc);
    assert!(err.contains(&cp.server), "{err}");
    assert!(
        err.contains("invalid peer certificate") && err.contains("UnknownIssuer"),
        "says the certificate is not trusted: {err}"
    );
    Ok(())
}

#[tokio::test]
async fn context_and_namespace_flags_pick_the_cluster_like_kubectl() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("fsm-context").await?;
    let api: kube::Api<kubectl_homelab::operator::api::Machine> =
        kube::Api::namespaced(cp.client()?, &ns);
    let text = std::fs::read_to_string(data())?;
    let mut machine = kubectl_homelab::commands::fsm::parse_machines("data", &text)?
        .into_iter()
        .find(|m| m.metadata.name.as_deref() == Some("spare"))
        .ok_or_else(|| anyhow::anyhow!("no machine spare in the data"))?;
    machine.metadata.namespace = Some(ns.clone());
    machine.status = None;
    api.create(&Default::default(), &machine).await?;

    let dir = tempfile::tempdir()?;
    let closed = format!("https://127.0.0.1:{}", closed_port());
    let ca = cp.ca_cert_path();
    // The current context points nowhere; --context picks the real one.
    let kc = kubeconfig(
        dir.path(),
        &[("broken", &closed, None), ("lab", &cp.server, Some(&ca))],
        &admin_token(cp)?,
    );
    let o = Command::new(BIN)
        .args([
            "fsm",
            "inspect",
            "--context",
            "lab",
            "-n",
            &ns,
            "-o",
            "json",
        ])
        .arg("--kubeconfig")
        .arg(&kc)
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()?;
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout)?;
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["name"], "spare");
    assert_eq!(v[0]["namespace"], ns.as_str());

    let o = Command::new(BIN)
        .args(["fsm", "inspect", "--context", "nope", "--kubeconfig"])
        .arg(&kc)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()?;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("nope"), "{}", stderr(&o));
    Ok(())
}
