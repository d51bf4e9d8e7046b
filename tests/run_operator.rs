//! `kubectl homelab run-operator` as a process against a real control plane (etcd +
//! kube-apiserver from tests/k8s-bins): leader election on a Lease between two replicas,
//! handover when the leader is killed, `/readyz` and `/metrics`, a follower refusing mutating
//! gRPC calls with `Unavailable`, only the leader reading the meters, the Lease released on
//! SIGTERM; and, in process, a Lease taken over by someone else stops leadership without waiting
//! for the next renewal.

mod support;
mod support_power;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kubectl_homelab::operator::api::{Group, HttpMeter, Machine, Meter};
use kubectl_homelab::operator::leader::{Election, LeaseSettings};
use kubectl_homelab::operator::machine::PowerState;
use kubectl_homelab::operator::provider::proto;
use kubectl_homelab::operator::provider::proto::cloud_provider_client::CloudProviderClient;
use kubectl_homelab::testing::job;
use serde_json::json;
use support::ControlPlane;
use support_power::meter_servers::{Device, MeterServer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const LEASE: &str = "homelab-test-lease";
/// Generous bound for things that take a second or two; a loaded CI machine is slow.
const SETTLE: Duration = Duration::from_secs(60);

/// One `run-operator` process with its ports and log.
struct Replica {
    identity: String,
    grpc: SocketAddr,
    health: SocketAddr,
    log: PathBuf,
    child: tokio::process::Child,
}

impl Replica {
    async fn start(
        cp: &ControlPlane,
        ns: &str,
        identity: &str,
        dir: &Path,
    ) -> anyhow::Result<Replica> {
        Replica::start_with(cp, ns, identity, dir, &[]).await
    }

    /// [`Replica::start`] with more arguments to `run-operator`.
    async fn start_with(
        cp: &ControlPlane,
        ns: &str,
        identity: &str,
        dir: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Replica> {
        Replica::start_on(cp, ns, identity, dir, [127, 0, 0, 1].into(), extra).await
    }

    /// [`Replica::start_with`] serving gRPC on `grpc_ip` (health stays on loopback).
    async fn start_on(
        cp: &ControlPlane,
        ns: &str,
        identity: &str,
        dir: &Path,
        grpc_ip: std::net::IpAddr,
        extra: &[&str],
    ) -> anyhow::Result<Replica> {
        let ports = support::process::free_ports(2).context("picking free ports")?;
        let grpc = SocketAddr::new(grpc_ip, ports[0]);
        let health: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
        let log = dir.join(format!("{identity}.log"));
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-homelab"))
            .arg("run-operator")
            .arg("--kubeconfig")
            .arg(cp.kubeconfig())
            .args(["-n", ns, "--lease-namespace", ns, "--lease-name", LEASE])
            .args(["--lease-identity", identity])
            .args(["--listen", &grpc.to_string()])
            .args(["--health-address", &health.to_string()])
            .args(["--log", "info"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .context("starting kubectl-homelab run-operator")?;
        Ok(Replica {
            identity: identity.to_owned(),
            grpc,
            health,
            log,
            child,
        })
    }

    fn log_tail(&self) -> String {
        support::process::log_tail(&self.log, 30)
    }

    async fn grpc_client(&self) -> anyhow::Result<CloudProviderClient<tonic::transport::Channel>> {
        CloudProviderClient::connect(format!("http://{}", self.grpc))
            .await
            .with_context(|| format!("connecting to {}'s gRPC at {}", self.identity, self.grpc))
    }
}

/// GET over HTTP/1.1: (status code, body).
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no HTTP status line in {out:?}"))?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((code, body.to_owned()))
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
            anyhow::bail!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                context()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt(LEASE)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

/// Group `g` (0..2) with two powered-off machines.
async fn fixture(cp: &ControlPlane, ns: &str) -> anyhow::Result<()> {
    let client = cp.client()?;
    let group = Group::test("g").namespace(ns).min(0).max(2).build();
    Api::<Group>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &group)
        .await
        .context("creating Group g")?;
    for i in 0..2 {
        let name = cp.unique_name(&format!("op-m{i}"));
        let pod = job("busybox", &["true"]);
        let m = Machine::test(&name)
            .namespace(ns)
            .group("g")
            .desired(PowerState::Off)
            .legacy_jobs(pod.clone(), pod)
            .build();
        Api::<Machine>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &m)
            .await
            .with_context(|| format!("creating Node CR {name}"))?;
    }
    Ok(())
}

fn increase(id: &str) -> proto::NodeGroupIncreaseSizeRequest {
    proto::NodeGroupIncreaseSizeRequest {
        id: id.to_owned(),
        delta: 1,
    }
}

async fn machines_on(cp: &ControlPlane, ns: &str) -> anyhow::Result<usize> {
    let list = Api::<Machine>::namespaced(cp.client()?, ns)
        .list(&Default::default())
        .await?;
    Ok(list
        .items
        .iter()
        .filter(|m| m.spec.power_state == PowerState::On)
        .count())
}

#[tokio::test]
async fn two_replicas_elect_one_leader_which_alone_mutates_and_hands_over_when_killed()
-> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("run-operator").await?;
    fixture(cp, &ns).await?;
    let dir = tempfile::tempdir()?;
    let mut replicas = vec![
        Replica::start(cp, &ns, "op-a", dir.path()).await?,
        Replica::start(cp, &ns, "op-b", dir.path()).await?,
    ];
    let logs = |rs: &[Replica]| -> String {
        rs.iter()
            .map(|r| format!("--- {} ---\n{}", r.identity, r.log_tail()))
            .collect()
    };
    let leases: Api<Lease> = Api::namespaced(cp.client()?, &ns);
    // A machine with a meter (a Shelly stand-in), read every 10 s by the leader only.
    let plug = MeterServer::start(Device::ShellyGen2, 42.0, 1.0).await?;
    let pod = job("busybox", &["true"]);
    let metered = Machine::test("metered")
        .namespace(&ns)
        .desired(PowerState::Off)
        .legacy_jobs(pod.clone(), pod)
        .meter(Meter {
            http: Some(Box::new(HttpMeter {
                url: plug.url(),
                watts_path: "$.apower".to_owned(),
                ..HttpMeter::default()
            })),
            interval: Some("10s".to_owned()),
            ..Meter::default()
        })
        .build();
    Api::<Machine>::namespaced(cp.client()?, &ns)
        .create(&PostParams::default(), &metered)
        .await?;

    let first = eventually(
        "a Lease holder",
        SETTLE,
        || logs(&replicas),
        || holder(&leases),
    )
    .await?;
    let (li, fi) = match first.as_str() {
        "op-a" => (0, 1),
        "op-b" => (1, 0),
        other => anyhow::bail!("Lease held by {other:?}, not one of the replicas"),
    };
    let (leader, follower) = (&replicas[li], &replicas[fi]);

    // Readiness routes CA to the leader only.
    eventually(
        "the leader ready",
        SETTLE,
        || logs(&replicas),
        || async { matches!(http_get(leader.health, "/readyz").await, Ok((200, _))).then_some(()) },
    )
    .await?;
    let (code, body) = eventually(
        "the follower serving /readyz",
        SETTLE,
        || logs(&replicas),
        || async { http_get(follower.health, "/readyz").await.ok() },
    )
    .await?;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not the leader"), "{body}");
    assert_eq!(http_get(follower.health, "/healthz").await?.0, 200);

    // The follower answers reads, and refuses mutations with Unavailable.
    let mut fc = eventually(
        "the follower's gRPC server",
        SETTLE,
        || logs(&replicas),
        || async { follower.grpc_client().await.ok() },
    )
    .await?;
    let groups = fc
        .node_groups(proto::NodeGroupsRequest {})
        .await
        .context("NodeGroups on the follower")?
        .into_inner();
    assert_eq!(
        groups
            .node_groups
            .iter()
            .map(|g| g.id.as_str())
            .collect::<Vec<_>>(),
        ["g"]
    );
    let refused = fc.node_group_increase_size(increase("g")).await;
    match refused {
        Err(s) => {
            assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
            assert!(s.message().contains("not the leader"), "{s:?}");
        }
        Ok(_) => anyhow::bail!("a follower accepted IncreaseSize"),
    }
    assert_eq!(
        machines_on(cp, &ns).await?,
        0,
        "the refused call changed nothing"
    );

    // The leader accepts it.
    let mut lc = leader.grpc_client().await?;
    lc.node_group_increase_size(increase("g"))
        .await
        .context("IncreaseSize on the leader")?;
    assert_eq!(machines_on(cp, &ns).await?, 1);

    let (_, leader_metrics) = http_get(leader.health, "/metrics").await?;
    assert!(
        leader_metrics.contains("homelab_leader 1"),
        "{leader_metrics}"
    );
    assert!(
        leader_metrics
            .contains(r#"homelab_grpc_requests_total{method="NodeGroupIncreaseSize",code="OK"} 1"#),
        "{leader_metrics}"
    );
    let (_, follower_metrics) = http_get(follower.health, "/metrics").await?;
    assert!(
        follower_metrics.contains("homelab_leader 0"),
        "{follower_metrics}"
    );
    assert!(
        follower_metrics.contains(
            r#"homelab_grpc_requests_total{method="NodeGroupIncreaseSize",code="Unavailable"} 1"#
        ),
        "{follower_metrics}"
    );

    // The leader reads the meter (its first read within 10 s, jittered).
    eventually(
        "the leader to read the meter",
        SETTLE,
        || logs(&replicas),
        || async { (plug.requests() >= 1).then_some(()) },
    )
    .await?;

    // SIGKILL: no release, so the follower takes over once the Lease expires (15 s by default).
    let follower_id = follower.identity.clone();
    let follower_health = follower.health;
    replicas[li]
        .child
        .start_kill()
        .context("killing the leader")?;
    let _ = replicas[li].child.wait().await;
    let killed = Instant::now();
    let reads_at_kill = plug.requests();
    eventually(
        "the follower to take the Lease",
        SETTLE,
        || logs(&replicas),
        || async { (holder(&leases).await.as_deref() == Some(follower_id.as_str())).then_some(()) },
    )
    .await?;
    eprintln!("handover after SIGKILL took {:?}", killed.elapsed());
    // The follower, running but not leading, read no meter meanwhile; leading, it does.
    assert_eq!(
        plug.requests(),
        reads_at_kill,
        "a replica not leading read the meter"
    );
    eventually(
        "the new leader to read the meter",
        SETTLE,
        || logs(&replicas),
        || async { (plug.requests() > reads_at_kill).then_some(()) },
    )
    .await?;
    eventually(
        "the new leader ready",
        SETTLE,
        || logs(&replicas),
        || async {
            matches!(http_get(follower_health, "/readyz").await, Ok((200, _))).then_some(())
        },
    )
    .await?;
    let mut nc = replicas[fi].grpc_client().await?;
    nc.node_group_increase_size(increase("g"))
        .await
        .context("IncreaseSize on the new leader")?;
    assert_eq!(machines_on(cp, &ns).await?, 2);
    Ok(())
}

/// Plaintext gRPC on every interface logs the warning that anyone reaching the port can scale
/// the cluster; on 127.0.0.1 it does not. Both are judged once the start-up banner, printed
/// after the ports are bound (and the warning logged), is in the log.
#[tokio::test]
async fn plaintext_grpc_on_every_interface_warns_and_on_loopback_does_not() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("run-operator-exposure").await?;
    let dir = tempfile::tempdir()?;
    const WARNING: &str = "anyone who can reach this port can scale the cluster";
    let wildcard = Replica::start_on(
        cp,
        &ns,
        "op-wildcard",
        dir.path(),
        [0, 0, 0, 0].into(),
        &["--leader-elect=false"],
    )
    .await?;
    let loopback = Replica::start_on(
        cp,
        &ns,
        "op-loopback",
        dir.path(),
        [127, 0, 0, 1].into(),
        &["--leader-elect=false"],
    )
    .await?;
    for (r, warns) in [(&wildcard, true), (&loopback, false)] {
        let log = eventually(
            &format!("{}'s start-up banner", r.identity),
            SETTLE,
            || r.log_tail(),
            || async {
                std::fs::read_to_string(&r.log)
                    .ok()
                    .filter(|l| l.contains("run-operator: "))
            },
        )
        .await?;
        assert_eq!(log.contains(WARNING), warns, "{}:\n{log}", r.identity);
        if warns {
            assert!(
                log.contains(&format!("0.0.0.0:{}", r.grpc.port())) && log.contains("--client-ca"),
                "{log}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn sigterm_releases_the_lease_and_exits_cleanly() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("run-operator-term").await?;
    let dir = tempfile::tempdir()?;
    let mut r = Replica::start(cp, &ns, "op-term", dir.path()).await?;
    let leases: Api<Lease> = Api::namespaced(cp.client()?, &ns);
    eventually(
        "op-term to hold the Lease",
        SETTLE,
        || r.log_tail(),
        || async { (holder(&leases).await.as_deref() == Some("op-term")).then_some(()) },
    )
    .await?;
    let pid = r.child.id().context("the operator exited early")?;
    // SAFETY: sends a signal to our own child process.
    let sent = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    anyhow::ensure!(sent == 0, "kill(SIGTERM) failed");
    let status = tokio::time::timeout(SETTLE, r.child.wait())
        .await
        .with_context(|| format!("the operator did not exit after SIGTERM\n{}", r.log_tail()))??;
    assert!(status.success(), "{status:?}\n{}", r.log_tail());
    assert_eq!(holder(&leases).await, None, "{}", r.log_tail());
    Ok(())
}

#[tokio::test]
async fn a_lease_taken_over_ends_leadership_without_waiting_for_the_next_renewal()
-> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("lease-fence").await?;
    let client = cp.client()?;
    // A long Lease: the manager's next renewal (and with it its own check) is 50 s away, so
    // losing leadership sooner can only come from watching the Lease.
    let settings = LeaseSettings {
        name: LEASE.into(),
        namespace: ns.clone(),
        identity: "in-process".into(),
        duration: Duration::from_secs(60),
        renew_grace: Duration::from_secs(10),
    };
    let election = Election::start(client.clone(), settings).await?;
    let leadership = election.leadership();
    tokio::time::timeout(SETTLE, leadership.acquired())
        .await
        .context("never became leader")?;

    let leases: Api<Lease> = Api::namespaced(client, &ns);
    let takeover = json!({ "spec": {
        "holderIdentity": "intruder",
        "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(jiff::Timestamp::now()),
    }});
    leases
        .patch(LEASE, &PatchParams::default(), &Patch::Merge(&takeover))
        .await
        .context("taking the Lease over")?;
    tokio::time::timeout(Duration::from_secs(30), leadership.lost())
        .await
        .context("still leading 30 s after the Lease named another holder")?;
    assert!(!leadership.is_leader());
    election.release().await;
    Ok(())
}

/// Sends `signal` to `r`'s process.
fn signal(r: &Replica, signal: libc::c_int) -> anyhow::Result<()> {
    let pid = r.child.id().context("the operator exited early")?;
    // SAFETY: sends a signal to our own child process.
    let sent = unsafe { libc::kill(pid as libc::pid_t, signal) };
    anyhow::ensure!(sent == 0, "kill({signal}) failed");
    Ok(())
}

/// The leader is stopped (SIGSTOP) in the middle of a power-on: it has read the status URL
/// (whose answer the endpoint holds back 3 s) and would make the power-on call next. Its Lease
/// (4 s) runs out, the follower takes over and makes the call. Resumed (SIGCONT), the old
/// leader gets the status URL's answer but makes no call of its own: the endpoint is called
/// once. (The driver reads the clock against the Lease's held-until time right before the
/// call; the fence task lowering the flag, which drops the controllers, usually gets there
/// first too.)
#[tokio::test]
async fn a_leader_paused_mid_power_on_makes_no_call_when_it_resumes() -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("lease-pause").await?;
    let client = cp.client()?;
    let (calls, reads) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (counted, read) = (calls.clone(), reads.clone());
    let endpoint = support_power::server::serve(None, move |req| {
        let (counted, read) = (counted.clone(), read.clone());
        async move {
            let path = req.path_and_query.as_str();
            if path.starts_with("/status-on") && read.fetch_add(1, Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            if path.starts_with("/on") {
                counted.fetch_add(1, Ordering::SeqCst);
            }
            // The machine never comes on: each status read says off.
            support_power::server::answer(200, r#"{"state": "off"}"#)
        }
    })
    .await?;
    let action = |path: &str, value: &str| kubectl_homelab::operator::api::HttpAction {
        url: format!("{}/{path}", endpoint.url),
        status: Some(kubectl_homelab::operator::api::HttpStatusCheck {
            url: format!("{}/status-{path}", endpoint.url),
            field: "$.state".to_owned(),
            value: value.to_owned(),
        }),
        ..Default::default()
    };
    let group = Group::test("g").namespace(&ns).min(0).max(2).build();
    Api::<Group>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &group)
        .await?;
    let name = cp.unique_name("paused");
    let m = Machine::test(&name)
        .namespace(&ns)
        .group("g")
        .desired(PowerState::Off)
        .http(action("on", "on"), action("off", "off"))
        .build();
    let machines = Api::<Machine>::namespaced(client.clone(), &ns);
    machines.create(&PostParams::default(), &m).await?;

    let dir = tempfile::tempdir()?;
    let short = ["--lease-duration", "4s", "--lease-renew-grace", "2s"];
    let mut replicas = vec![Replica::start_with(cp, &ns, "op-a", dir.path(), &short).await?];
    let logs = |rs: &[Replica]| -> String {
        rs.iter()
            .map(|r| format!("--- {} ---\n{}", r.identity, r.log_tail()))
            .collect()
    };
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    eventually(
        "op-a to hold the Lease",
        SETTLE,
        || logs(&replicas),
        || async { (holder(&leases).await.as_deref() == Some("op-a")).then_some(()) },
    )
    .await?;
    replicas.push(Replica::start_with(cp, &ns, "op-b", dir.path(), &short).await?);
    eventually(
        "op-a to reconcile the machine",
        SETTLE,
        || logs(&replicas),
        || async {
            let m = machines.get(&name).await.ok()?;
            m.status.and_then(|s| s.lifecycle.phase).map(|_| ())
        },
    )
    .await?;

    let on = json!({ "spec": { "powerState": "on" } });
    machines
        .patch(&name, &PatchParams::default(), &Patch::Merge(&on))
        .await?;
    eventually(
        "op-a to read the status URL",
        SETTLE,
        || logs(&replicas),
        || async { (reads.load(Ordering::SeqCst) > 0).then_some(()) },
    )
    .await?;
    // Its answer is held back: op-a is waiting for it, right before the power-on call.
    signal(&replicas[0], libc::SIGSTOP)?;
    eventually(
        "op-b to take the Lease",
        SETTLE,
        || logs(&replicas),
        || async { (holder(&leases).await.as_deref() == Some("op-b")).then_some(()) },
    )
    .await?;
    eventually(
        "op-b's power-on call",
        SETTLE,
        || logs(&replicas),
        || async { (calls.load(Ordering::SeqCst) > 0).then_some(()) },
    )
    .await?;
    signal(&replicas[0], libc::SIGCONT)?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the power-on call was made more than once\n{}",
        logs(&replicas)
    );
    Ok(())
}
