//! What the chart ships for monitoring, checked with the real tools: the PrometheusRule as
//! `helm template` renders it, through `promtool check rules` and `promtool test rules`
//! (tests/data/prometheus/alerts.test.yaml: a series that fires and one that does not, per
//! alert); and every query of the Grafana dashboard
//! (deploy/helm/kubectl-homelab/files/dashboards/kubectl-homelab.json) asked of a real Prometheus
//! that scrapes a real `run-operator` against the test control plane.
//!
//! Prometheus and promtool are Debian bookworm's `prometheus` package (2.42), unpacked on first
//! use into the cache (tests/support/debian.rs; 5.6 s measured with the apt lists present). `KUBECTL_HOMELAB_PROMETHEUS_DIR` names a directory with both binaries instead. Without
//! them a test is skipped, unless `KUBECTL_HOMELAB_REQUIRE_ASSETS=1`, which makes it fail.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kubectl_homelab::operator::api::{Group, Machine, WakeOnLan, Watts};
use kubectl_homelab::operator::machine::PowerState;
use kubectl_homelab::operator::provider::proto;
use kubectl_homelab::operator::provider::proto::cloud_provider_client::CloudProviderClient;
use serde_json::{Value, json};
use support::debian::{self, run};
use support::helm::{CHART, Helm, kind_of, repo};
use support::process::{Managed, free_ports};
use support::{Machines, MachinesConfig, World};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Generous bound for what takes seconds; a loaded CI machine is slow.
const SETTLE: Duration = Duration::from_secs(90);

/// `prometheus` and `promtool`.
#[derive(Clone, Debug)]
struct PrometheusBins {
    prometheus: PathBuf,
    promtool: PathBuf,
}

/// The binaries: `Ok(None)` when they cannot be had and are not required.
fn prometheus_bins() -> anyhow::Result<Option<PrometheusBins>> {
    static BINS: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BINS.get_or_init(|| {
        match std::env::var_os("KUBECTL_HOMELAB_PROMETHEUS_DIR").filter(|d| !d.is_empty()) {
            Some(d) => Ok(PathBuf::from(d)),
            None => install().map_err(|e| format!("{e:#}")),
        }
    });
    match dir {
        Ok(dir) => Ok(Some(PrometheusBins {
            prometheus: dir.join("prometheus"),
            promtool: dir.join("promtool"),
        })),
        Err(e) if debian::required() => {
            bail!(
                "Prometheus is required ({}=1) but could not be installed: {e}",
                debian::REQUIRE_ENV
            )
        }
        Err(e) => {
            eprintln!("skipping: Prometheus is not available: {e}");
            Ok(None)
        }
    }
}

/// Debian's `prometheus` package unpacked into the cache (tests/support/debian.rs): its
/// directory of binaries.
fn install() -> anyhow::Result<PathBuf> {
    Ok(debian::unpack("prometheus", &["prometheus"])?
        .root
        .join("usr/bin"))
}

/// The chart's PrometheusRule (default values but enabled) as a Prometheus rules file.
fn rendered_rules(helm: &Helm) -> anyhow::Result<String> {
    let objects = helm.template("lab", "homelab", &["prometheusRule.enabled=true"])?;
    let rule = objects
        .iter()
        .find(|o| kind_of(o) == "PrometheusRule")
        .context("no PrometheusRule rendered with prometheusRule.enabled=true")?;
    let spec = rule
        .data
        .get("spec")
        .context("the PrometheusRule has no spec")?;
    Ok(serde_yaml::to_string(spec)?)
}

#[test]
fn the_shipped_alert_rules_pass_promtool_and_fire_only_on_their_test_series() -> anyhow::Result<()>
{
    let Some(helm) = Helm::locate()? else {
        return Ok(());
    };
    let Some(bins) = prometheus_bins()? else {
        return Ok(());
    };
    let off = helm.template("lab", "homelab", &[])?;
    ensure!(
        !off.iter().any(|o| kind_of(o) == "PrometheusRule"
            || o.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.ends_with("-dashboard"))),
        "the PrometheusRule and the dashboard are off by default"
    );
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("rules.yaml"), rendered_rules(&helm)?)?;
    std::fs::copy(
        repo().join("tests/data/prometheus/alerts.test.yaml"),
        dir.path().join("alerts.test.yaml"),
    )?;
    run(Command::new(&bins.promtool)
        .args(["check", "rules", "rules.yaml"])
        .current_dir(dir.path()))?;
    run(Command::new(&bins.promtool)
        .args(["test", "rules", "alerts.test.yaml"])
        .current_dir(dir.path()))?;
    Ok(())
}

/// Every alert of the chart is covered by the rule tests.
#[test]
fn every_shipped_alert_has_a_rule_test() -> anyhow::Result<()> {
    let Some(helm) = Helm::locate()? else {
        return Ok(());
    };
    let rules: Value = serde_yaml::from_str(&rendered_rules(&helm)?)?;
    let tests = std::fs::read_to_string(repo().join("tests/data/prometheus/alerts.test.yaml"))?;
    let alerts: Vec<&str> = rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .filter_map(|r| r["alert"].as_str())
        .collect();
    ensure!(alerts.len() == 5, "five alerts: {alerts:?}");
    for a in alerts {
        ensure!(
            tests.contains(&format!("alertname: {a}\n")),
            "alert {a} has no promtool test in tests/data/prometheus/alerts.test.yaml"
        );
    }
    Ok(())
}

/// The dashboard's queries, with its variables replaced: `$group` by "every group",
/// `$__rate_interval` by a window holding several 1 s scrapes.
fn dashboard_queries() -> anyhow::Result<Vec<(String, String)>> {
    let path = repo()
        .join(CHART)
        .join("files/dashboards/kubectl-homelab.json");
    let text = std::fs::read_to_string(&path)?;
    let dashboard: Value = serde_json::from_str(&text)?;
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().context("no panels")? {
        let title = panel["title"].as_str().unwrap_or("?");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .with_context(|| format!("panel {title}: a target without expr"))?;
            let expr = expr
                .replace("$__rate_interval", "20s")
                .replace("$group", ".*");
            ensure!(
                !expr.contains('$'),
                "panel {title}: a variable left in {expr}"
            );
            out.push((title.to_owned(), expr));
        }
    }
    Ok(out)
}

/// GET over HTTP/1.1: (status code, body).
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let out = String::from_utf8_lossy(&out);
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no HTTP status line in {out:?}"))?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    // Prometheus answers chunked: the JSON is between the chunk sizes.
    let body = if out
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((code, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b));
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// An instant query's result vector.
async fn query(prometheus: SocketAddr, expr: &str) -> anyhow::Result<Vec<Value>> {
    let (code, body) = http_get(
        prometheus,
        &format!("/api/v1/query?query={}", urlencode(expr)),
    )
    .await?;
    ensure!(code == 200, "query {expr}: HTTP {code}: {body}");
    let v: Value = serde_json::from_str(&body).with_context(|| format!("query {expr}: {body}"))?;
    ensure!(v["status"] == "success", "query {expr}: {body}");
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// The value of a one-series result.
fn value_of(result: &[Value]) -> Option<f64> {
    result.first()?["value"][1].as_str()?.parse().ok()
}

/// Polls `f` until it returns `Some`, failing after `timeout` with `what` and `context()`.
async fn eventually<T, F, Fut>(
    what: &str,
    timeout: Duration,
    context: impl Fn() -> String,
    mut f: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                context()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn phase_of(api: &Api<Machine>, name: &str) -> Option<String> {
    let m = api.get_opt(name).await.ok()??;
    serde_json::to_value(m.status?)
        .ok()?
        .get("phase")?
        .as_str()
        .map(str::to_owned)
}

fn set_power(state: PowerState) -> Patch<Value> {
    Patch::Merge(json!({ "spec": { "powerState": state } }))
}

#[tokio::test]
async fn a_real_prometheus_scraping_run_operator_has_data_for_every_dashboard_query()
-> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let Some(bins) = prometheus_bins()? else {
        return Ok(());
    };
    let queries = dashboard_queries()?;
    let ns = cp.namespace("observe").await?;
    let client = cp.client()?;
    let machines: Api<Machine> = Api::namespaced(client.clone(), &ns);
    Api::<Group>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &Group::test("g").namespace(&ns).min(0).max(3).build(),
        )
        .await
        .context("creating Group g")?;
    let watts = |s: &mut kubectl_homelab::operator::api::MachineSpec| {
        s.watts = Some(Watts {
            idle: Some(30.0),
            boot: Some(60.0),
            ..Watts::default()
        });
    };
    // Powered by Jobs that the simulated machines run; it boots and its Node registers.
    let jobbed = cp.unique_name("obs-job");
    // Woken by a Wake-on-LAN packet to loopback: the operation ends in the reconcile that
    // starts it.
    let woken = cp.unique_name("obs-wol");
    // With a meter nobody answers and energy counters in its status.
    let metered = cp.unique_name("obs-meter");
    let wol_port = free_ports(1)?[0];
    let specs = [
        Machine::test(&jobbed)
            .namespace(&ns)
            .group("g")
            .desired(PowerState::Off)
            .spec_with(watts)
            .build(),
        Machine::test(&woken)
            .namespace(&ns)
            .group("g")
            .desired(PowerState::Off)
            .wol(WakeOnLan {
                mac: "02:00:00:00:00:01".into(),
                broadcast: Some("127.0.0.1".into()),
                port: Some(i32::from(wol_port)),
                ..WakeOnLan::default()
            })
            .spec_with(watts)
            .build(),
        Machine::test(&metered)
            .namespace(&ns)
            .group("g")
            .desired(PowerState::Off)
            .spec_with(watts)
            .spec_with(|s| {
                s.meter = serde_json::from_value(json!({
                    "http": { "url": "http://127.0.0.1:1/status", "wattsPath": "power" }
                }))
                .ok();
            })
            .build(),
    ];
    for m in &specs {
        machines
            .create(&PostParams::default(), m)
            .await
            .with_context(|| {
                format!(
                    "creating Node CR {}",
                    m.metadata.name.as_deref().unwrap_or("")
                )
            })?;
    }
    let energy = json!({
        "wattHours": 120.5, "baselineWattHours": 720.0, "boots": 4,
        "cost": 0.036, "baselineCost": 0.216, "currency": "EUR",
        "watts": 5.0, "source": "model",
        "onSeconds": 3600, "offSeconds": 82800,
    });
    machines
        .patch_status(
            &metered,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "energy": energy } })),
        )
        .await
        .context("patching status.energy")?;

    let world = World::new(cp.client()?);
    let _machines = Machines::start(&world, MachinesConfig::new(&ns, Duration::from_secs(1)));

    let dir = tempfile::tempdir()?;
    let ports = free_ports(3)?;
    let (grpc, health, web): (SocketAddr, SocketAddr, SocketAddr) = (
        ([127, 0, 0, 1], ports[0]).into(),
        ([127, 0, 0, 1], ports[1]).into(),
        ([127, 0, 0, 1], ports[2]).into(),
    );
    let operator_log = dir.path().join("run-operator.log");
    let mut operator = Managed::spawn(
        "run-operator",
        Path::new(env!("CARGO_BIN_EXE_kubectl-homelab")),
        &[
            "run-operator".into(),
            "--kubeconfig".into(),
            cp.kubeconfig().display().to_string(),
            "-n".into(),
            ns.clone(),
            "--leader-elect=false".into(),
            "--listen".into(),
            grpc.to_string(),
            "--health-address".into(),
            health.to_string(),
            "--not-ready-grace=3s".into(),
            "--log".into(),
            "info".into(),
        ],
        &operator_log,
    )?;
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: homelab\n    honor_labels: true\n    static_configs:\n      - targets: ['{health}']\n"
        ),
    )?;
    let prometheus_log = dir.path().join("prometheus.log");
    let mut prometheus = Managed::spawn(
        "prometheus",
        &bins.prometheus,
        &[
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address={web}"),
        ],
        &prometheus_log,
    )?;
    let logs = || {
        format!(
            "--- run-operator ---\n{}\n--- prometheus ---\n{}",
            support::process::log_tail(&operator_log, 40),
            support::process::log_tail(&prometheus_log, 10)
        )
    };

    eventually("the operator ready", SETTLE, logs, || async {
        matches!(http_get(health, "/readyz").await, Ok((200, _))).then_some(())
    })
    .await?;
    // A call from the Cluster Autoscaler's side, for the gRPC panel.
    let mut grpc_client = CloudProviderClient::connect(format!("http://{grpc}")).await?;
    grpc_client
        .node_groups(proto::NodeGroupsRequest {})
        .await
        .context("NodeGroups")?;

    for name in [&jobbed, &woken] {
        machines
            .patch(name, &PatchParams::default(), &set_power(PowerState::On))
            .await
            .with_context(|| format!("powering {name} on"))?;
    }
    eventually(&format!("{jobbed} Ready"), SETTLE, logs, || async {
        (phase_of(&machines, &jobbed).await.as_deref() == Some("Ready")).then_some(())
    })
    .await?;
    eventually(&format!("{woken} Booting"), SETTLE, logs, || async {
        (phase_of(&machines, &woken).await.as_deref() == Some("Booting")).then_some(())
    })
    .await?;
    // The Ready machine's Node stops reporting (its kubelet died).
    let node = jobbed.clone();
    world.node_ready(&node, false).await?;

    // Scraped: the counters and histograms the scenario fed, for a few scrapes.
    let prom = web;
    let must_have = [
        "homelab_boot_duration_seconds_count",
        r#"homelab_power_operation_duration_seconds_count{driver="wakeOnLan",direction="on"}"#,
        r#"homelab_power_operations_ended_total{driver="wakeOnLan",direction="on",result="succeeded"}"#,
        r#"homelab_node_not_ready_total{group="g"}"#,
    ];
    let found = eventually(
        "the scenario's series in Prometheus",
        SETTLE,
        String::new,
        || async move {
            for series in must_have {
                let r = query(prom, &format!("count_over_time({series}[1m]) >= 3"))
                    .await
                    .ok()?;
                r.first()?;
            }
            Some(())
        },
    )
    .await;
    if found.is_err() {
        let mut missing = BTreeMap::new();
        for series in &must_have {
            missing.insert(*series, query(prom, series).await.ok().map(|r| r.len()));
        }
        bail!(
            "missing in Prometheus: {missing:?}\n/metrics:\n{}\n{}",
            http_get(health, "/metrics")
                .await
                .map(|(_, b)| b)
                .unwrap_or_default(),
            logs()
        );
    }

    let mut empty = Vec::new();
    for (title, expr) in &queries {
        if query(prom, expr).await?.is_empty() {
            empty.push(format!("{title}: {expr}"));
        }
    }
    ensure!(
        empty.is_empty(),
        "dashboard queries without data:\n{}\n/metrics:\n{}",
        empty.join("\n"),
        http_get(health, "/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default()
    );

    // One boot (the Job-powered machine's), counted once.
    let boots = query(prom, r#"homelab_boot_duration_seconds_count{group="g"}"#).await?;
    ensure!(value_of(&boots) == Some(1.0), "one boot: {boots:?}");

    // The patched counters, in base units.
    let joules = query(
        prom,
        &format!(r#"homelab_machine_energy_joules_total{{machine="{metered}"}}"#),
    )
    .await?;
    ensure!(
        value_of(&joules).is_some_and(|j| j >= 120.5 * 3600.0),
        "120.5 Wh = 433800 J or more: {joules:?}"
    );
    let saved = query(prom, r#"homelab_group_energy_saved_joules{group="g"}"#).await?;
    ensure!(value_of(&saved).is_some(), "group g's savings: {saved:?}");
    let cost = query(
        prom,
        r#"homelab_group_energy_cost{group="g",currency="EUR"}"#,
    )
    .await?;
    ensure!(value_of(&cost).is_some(), "group g's cost in EUR: {cost:?}");
    let up = query(
        prom,
        &format!(r#"homelab_machine_meter_up{{machine="{metered}"}}"#),
    )
    .await?;
    ensure!(
        value_of(&up) == Some(0.0),
        "nobody answers the meter: {up:?}"
    );
    let phase = query(
        prom,
        &format!(r#"homelab_machine_phase{{machine="{jobbed}",phase="Ready"}}"#),
    )
    .await?;
    ensure!(value_of(&phase) == Some(1.0), "{jobbed} Ready: {phase:?}");

    // Deleted, a machine's series go.
    machines
        .delete(&metered, &Default::default())
        .await
        .context("deleting the metered Node CR")?;
    eventually(
        "the deleted machine's series gone from /metrics",
        SETTLE,
        logs,
        || async {
            let (_, body) = http_get(health, "/metrics").await.ok()?;
            (!body.contains(&format!(r#"machine="{metered}""#))).then_some(())
        },
    )
    .await?;

    prometheus.stop(Duration::from_secs(5));
    operator.stop(Duration::from_secs(5));
    Ok(())
}
