//! No credential leaks: `kubectl homelab run-operator` as a process against a real control plane
//! powers machines through the sushy-tools Redfish emulator and an HTTPS plug with credentials
//! Secrets whose values are random for this run: a BMC on and off, a BMC that refuses a wrong
//! password (401), a BMC that echoes the Authorization header in its 401 (its base64 is the
//! credential too), a BMC that does not answer, a plug called with a bearer token. Then none of
//! the values, nor their base64 (the Secret's own encoding, and the basic-auth header's), shows
//! in the operator's log (at debug level), the namespace's Events, the Node CRs, or `/metrics`.
//! A machine whose BMC certificate is not verified (`insecureSkipVerify`) carries the
//! `InsecureTransport` condition and one Warning Event.

mod support;
mod support_power;

use std::hash::{BuildHasher as _, Hasher as _};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kubectl_homelab::operator::api::{Direction, Group, HttpAction, HttpMethod, Machine, Redfish};
use kubectl_homelab::operator::machine::{Phase, PowerState};
use serde_json::json;
use support::ControlPlane;
use support::world::{FakeNode, World};
use support_power::create_secret;
use support_power::server::{self, Received};
use support_power::sushy::{FakeSystem, Sushy, SushyOptions};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const USER: &str = "homelab";
/// Bound for each wait; the emulator applies a reset within 11 s.
const SETTLE: Duration = Duration::from_secs(90);

/// A value no other run or test uses: `prefix` and 64 random bits (the std hasher's random
/// per-process keys).
fn unique(prefix: &str) -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    format!("{prefix}{:016x}", h.finish())
}

/// The operator process, its log file and health address.
struct Operator {
    health: SocketAddr,
    log: std::path::PathBuf,
    _child: tokio::process::Child,
}

async fn start_operator(cp: &ControlPlane, ns: &str, dir: &Path) -> anyhow::Result<Operator> {
    let ports = support::process::free_ports(2).context("picking free ports")?;
    let grpc: SocketAddr = ([127, 0, 0, 1], ports[0]).into();
    let health: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
    let log = dir.join("operator.log");
    let log_file = std::fs::File::create(&log)?;
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-homelab"))
        .arg("run-operator")
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .args(["-n", ns, "--lease-namespace", ns, "--lease-name", "creds"])
        .args(["--lease-identity", "creds-test"])
        .args(["--listen", &grpc.to_string()])
        .args(["--health-address", &health.to_string()])
        .args(["--log", "debug"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .context("starting kubectl-homelab run-operator")?;
    Ok(Operator {
        health,
        log,
        _child: child,
    })
}

/// GET over HTTP/1.1: the body.
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("")
        .to_owned())
}

/// Polls the Node CR `name` until `check` holds.
async fn wait_machine(
    api: &Api<Machine>,
    name: &str,
    what: &str,
    log: &Path,
    check: impl Fn(&Machine) -> bool,
) -> anyhow::Result<Machine> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let m = api.get(name).await?;
        if check(&m) {
            return Ok(m);
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "{name}: timed out waiting for {what}; status {}\n{}",
                serde_json::to_string(&m.status).unwrap_or_default(),
                support::process::log_tail(log, 30)
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn readback(m: &Machine, direction: Direction, state: PowerState) -> bool {
    m.status
        .as_ref()
        .and_then(|s| s.power.as_ref())
        .is_some_and(|p| p.direction == direction && p.readback == Some(state))
}

async fn set_power(api: &Api<Machine>, name: &str, p: &str) -> anyhow::Result<()> {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "powerState": p } })),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn no_credential_shows_in_logs_events_status_or_metrics() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let password = unique("pw-");
    let wrong = unique("wrong-pw-");
    let token = unique("tok-");
    let ca = support::pki::Ca::generate()?;
    let Some(bmc) = Sushy::start(SushyOptions {
        systems: vec![FakeSystem::new("r730", "Off")],
        tls: Some(ca.serving()?),
        users: vec![(USER.to_owned(), password.clone())],
        disable_power_off: false,
    })
    .await?
    else {
        return Ok(());
    };
    let bearer = format!("Bearer {token}");
    let plug = server::serve(Some(&ca.serving()?), move |req: Received| {
        let ok = req
            .headers
            .get(http::header::AUTHORIZATION)
            .is_some_and(|v| v.to_str().ok() == Some(bearer.as_str()));
        async move {
            if ok {
                server::answer(200, "{}")
            } else {
                server::answer(401, "")
            }
        }
    })
    .await?;
    // A BMC that refuses everyone and, as some do in a Redfish error message, echoes the
    // Authorization header it got.
    let echo_password = unique("echo-pw-");
    let echo = server::serve(Some(&ca.serving()?), |req: Received| async move {
        let auth = req
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        server::answer(
            401,
            json!({"error": {"code": "Base.1.0.GeneralError",
                "message": format!("invalid credentials in {auth}")}})
            .to_string(),
        )
    })
    .await?;
    // A port nothing listens on: the BMC is down.
    let gone = format!(
        "https://127.0.0.1:{}",
        support::process::free_ports(1)?
            .first()
            .context("a free port")?
    );

    let ns = cp.namespace("creds").await?;
    let client = cp.client()?;
    create_secret(
        &client,
        &ns,
        "bmc",
        &[("username", USER), ("password", &password)],
    )
    .await?;
    create_secret(
        &client,
        &ns,
        "bmc-wrong",
        &[("username", USER), ("password", &wrong)],
    )
    .await?;
    create_secret(
        &client,
        &ns,
        "bmc-echo",
        &[("username", USER), ("password", &echo_password)],
    )
    .await?;
    create_secret(&client, &ns, "plug", &[("token", &token)]).await?;
    Api::<Group>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &Group::test("g").namespace(&ns).min(0).max(6).build(),
        )
        .await?;
    let redfish = |endpoint: &str, secret: &str| Redfish {
        endpoint: endpoint.to_owned(),
        credentials_secret: secret.to_owned(),
        ca_bundle: Some(ca.cert_pem.clone()),
        force_off_after: Some("0s".to_owned()),
        timeout: Some("2s".to_owned()),
        ..Redfish::default()
    };
    let plug_call = HttpAction {
        url: format!("{}/switch", plug.url),
        method: Some(HttpMethod::Post),
        secret: Some("plug".to_owned()),
        ca_bundle: Some(ca.cert_pem.clone()),
        ..HttpAction::default()
    };
    let machines = Api::<Machine>::namespaced(client.clone(), &ns);
    let node_suffix = ns.rsplit('-').next().unwrap_or("x").to_owned();
    for m in [
        Machine::test("bmc").redfish(redfish(&bmc.url, "bmc")),
        Machine::test("wrong").redfish(redfish(&bmc.url, "bmc-wrong")),
        Machine::test("gone").redfish(redfish(&gone, "bmc")),
        Machine::test("echo").redfish(redfish(&echo.url, "bmc-echo")),
        Machine::test("plug").http(plug_call.clone(), plug_call),
        // Kept off: it only has to carry the InsecureTransport warning.
        Machine::test("skip").redfish(Redfish {
            ca_bundle: None,
            insecure_skip_verify: Some(true),
            ..redfish(&bmc.url, "bmc")
        }),
    ] {
        let m = m.namespace(&ns).group("g").desired(PowerState::Off).build();
        let name = m.metadata.name.clone().unwrap_or_default();
        let m = Machine {
            spec: kubectl_homelab::operator::api::MachineSpec {
                kubernetes_node_name: Some(format!("creds-{name}-{node_suffix}")),
                ..m.spec
            },
            ..m
        };
        machines.create(&PostParams::default(), &m).await?;
    }
    let dir = tempfile::tempdir()?;
    let operator = start_operator(cp, &ns, dir.path()).await?;
    let log = operator.log.clone();

    // On and off at a BMC that takes the password.
    wait_machine(&machines, "bmc", "phase Off", &log, |m| {
        m.lifecycle().phase() == Phase::Off
    })
    .await?;
    for name in ["bmc", "wrong", "gone", "echo", "plug"] {
        set_power(&machines, name, "on").await?;
    }
    wait_machine(&machines, "bmc", "the BMC's On read back", &log, |m| {
        readback(m, Direction::On, PowerState::On)
    })
    .await?;
    let world = World::new(client.clone());
    let bmc_node = format!("creds-bmc-{node_suffix}");
    world.node_up(&FakeNode::new(&bmc_node).adoptable()).await?;
    wait_machine(&machines, "bmc", "phase Ready", &log, |m| {
        m.lifecycle().phase() == Phase::Ready
    })
    .await?;
    set_power(&machines, "bmc", "off").await?;
    wait_machine(&machines, "bmc", "the BMC's Off read back", &log, |m| {
        readback(m, Direction::Off, PowerState::Off)
    })
    .await?;
    // A wrong password: the BMC answers 401 and the operation fails saying so.
    wait_machine(&machines, "wrong", "the 401 in status", &log, |m| {
        serde_json::to_string(&m.status).is_ok_and(|s| s.contains("refused the credentials"))
    })
    .await?;
    wait_machine(&machines, "echo", "the 401 in status", &log, |m| {
        serde_json::to_string(&m.status).is_ok_and(|s| s.contains("invalid credentials in"))
    })
    .await?;
    // The plug took the token.
    wait_machine(&machines, "plug", "the call accepted", &log, |m| {
        m.status
            .as_ref()
            .and_then(|s| s.power.as_ref())
            .is_some_and(|p| p.accepted.as_deref() == Some("answered 200"))
    })
    .await?;
    // The BMC that does not answer: a transient error, logged and retried.
    let deadline = Instant::now() + SETTLE;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text
            .lines()
            .any(|l| l.contains("gone") && l.contains("unreachable"))
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no retry of the unreachable BMC logged\n{}",
            support::process::log_tail(&log, 30)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The machine whose BMC certificate is not verified says so, with one Warning Event.
    let skip = wait_machine(
        &machines,
        "skip",
        "the InsecureTransport condition",
        &log,
        |m| {
            m.status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "InsecureTransport"
                        && c.status == "True"
                        && c.reason == "CertificateNotVerified"
                })
            })
        },
    )
    .await?;
    let message = skip
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "InsecureTransport"))
        .map(|c| c.message.to_string())
        .unwrap_or_default();
    assert!(
        message.contains("spec.power.powerOn.redfish.insecureSkipVerify")
            && message.contains("caBundle"),
        "{message}"
    );
    let warnings = Api::<Event>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.involved_object.name.as_deref() == Some("skip")
                && e.reason.as_deref() == Some("InsecureTransport")
        })
        .collect::<Vec<_>>();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].type_.as_deref(), Some("Warning"));

    // Every place a person or a collector reads.
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut secrets = vec![];
    for value in [&password, &wrong, &echo_password, &token] {
        secrets.push(value.clone());
        secrets.push(b64(value));
    }
    secrets.push(b64(&format!("{USER}:{password}")));
    secrets.push(b64(&format!("{USER}:{wrong}")));
    secrets.push(b64(&format!("{USER}:{echo_password}")));
    let mut places: Vec<(String, String)> = vec![];
    let log_text = std::fs::read_to_string(&log)?;
    places.push(("the operator's log".to_owned(), log_text));
    let metrics = http_get(operator.health, "/metrics").await?;
    anyhow::ensure!(metrics.contains("homelab_"), "no metrics served: {metrics}");
    places.push(("/metrics".to_owned(), metrics));
    let events = Api::<Event>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await?;
    anyhow::ensure!(!events.items.is_empty(), "no Events recorded");
    for e in &events.items {
        places.push((
            format!("Event {}", e.metadata.name.clone().unwrap_or_default()),
            serde_json::to_string(e)?,
        ));
    }
    for m in machines.list(&ListParams::default()).await? {
        places.push((
            format!("Node CR {}", m.metadata.name.clone().unwrap_or_default()),
            serde_json::to_string(&m)?,
        ));
    }
    for (place, text) in &places {
        for s in &secrets {
            assert!(
                !text.contains(s.as_str()),
                "{place} shows a credential ({s}):\n{}",
                text.lines()
                    .filter(|l| l.contains(s.as_str()))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    Ok(())
}
