//! The Wake-on-LAN driver against real sockets and a real API server: the magic packet received
//! on a loopback UDP socket byte for byte (with and without SecureOn), the relay Job created,
//! adopted, followed and cancelled on a real kube-apiserver, and the relay's own program run by a
//! real python3 to show it sends the same bytes.
mod support;
mod support_power;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, PostParams};
use kubectl_homelab::operator::api::{Direction, Machine, WakeOnLan, WakeOnLanRelay};
use kubectl_homelab::operator::machine::PowerState;
use kubectl_homelab::operator::power::wol::{
    MACHINE_LABEL, MANAGED_BY_LABEL, OPERATION_LABEL, RELAY_SCRIPT, WakeOnLanDriver, magic_packet,
};
use kubectl_homelab::operator::power::{Driver as _, OpProgress};
use support_power::{Op, Transcript, create_secret};
use tokio::net::UdpSocket;

const MAC: &str = "3c:7c:3f:1a:2b:01";
const MAC_BYTES: [u8; 6] = [0x3c, 0x7c, 0x3f, 0x1a, 0x2b, 0x01];

/// The packet as the Wake-on-LAN spec writes it, built here independently of the driver.
fn expected_packet(password: &[u8]) -> Vec<u8> {
    let mut p = vec![0xff; 6];
    for _ in 0..16 {
        p.extend_from_slice(&MAC_BYTES);
    }
    p.extend_from_slice(password);
    p
}

/// A UDP socket on loopback standing in for the LAN's broadcast address.
async fn listener() -> anyhow::Result<(UdpSocket, i32)> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let port = i32::from(socket.local_addr()?.port());
    Ok((socket, port))
}

async fn receive(socket: &UdpSocket) -> anyhow::Result<Vec<u8>> {
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut buf))
        .await
        .context("no packet arrived")??;
    Ok(buf[..n].to_vec())
}

#[tokio::test]
async fn the_magic_packet_arrives_byte_for_byte() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("wol-plain").await?;
    let (socket, port) = listener().await?;
    let wol = WakeOnLan {
        mac: MAC.to_owned(),
        broadcast: Some("127.0.0.1".to_owned()),
        port: Some(port),
        ..WakeOnLan::default()
    };
    let m = Machine::test("minipc-1")
        .namespace(&ns)
        .desired(PowerState::Off)
        .wol(wol.clone())
        .no_power_off()
        .build();
    let op = Op::new(m, Direction::On, "on-1", Timestamp::now());
    let driver = WakeOnLanDriver::new(cp.client()?, &wol, None);

    let report = driver.start(&op.at(Timestamp::now())).await?;
    assert_eq!(report.progress, OpProgress::Succeeded);
    assert_eq!(report.readback, None, "Wake-on-LAN has no readback");
    assert_eq!(receive(&socket).await?, expected_packet(&[]));
    // Nothing to look at afterwards: the lifecycle may send it again.
    let later = driver.check(&op.at(Timestamp::now())).await?;
    assert_eq!(later.progress, OpProgress::Absent);
    Ok(())
}

#[tokio::test]
async fn secure_on_password_from_the_secret_ends_the_packet() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("wol-secureon").await?;
    let admin = cp.client()?;
    for (secret, text, bytes) in [
        (
            "sopass6",
            "a1:b2:c3:d4:e5:f6",
            vec![0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6],
        ),
        ("sopass4", "01-02-03-04", vec![1, 2, 3, 4]),
    ] {
        create_secret(&admin, &ns, secret, &[("password", text)]).await?;
        let operator = support_power::operator_reading(cp, &ns, &[secret]).await?;
        let (socket, port) = listener().await?;
        let wol = WakeOnLan {
            mac: MAC.to_owned(),
            broadcast: Some("127.0.0.1".to_owned()),
            port: Some(port),
            secure_on_secret: Some(secret.to_owned()),
            ..WakeOnLan::default()
        };
        let op = Op::new(
            Machine::test("minipc-1")
                .namespace(&ns)
                .desired(PowerState::Off)
                .wol(wol.clone())
                .no_power_off()
                .build(),
            Direction::On,
            "on-1",
            Timestamp::now(),
        );
        let driver = WakeOnLanDriver::new(operator.client()?, &wol, None);
        let report = driver.start(&op.at(Timestamp::now())).await?;
        assert_eq!(report.progress, OpProgress::Succeeded, "{secret}");
        assert_eq!(receive(&socket).await?, expected_packet(&bytes), "{secret}");
    }
    Ok(())
}

#[tokio::test]
async fn a_malformed_secure_on_password_is_refused_without_showing_it() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("wol-badpass").await?;
    let admin = cp.client()?;
    let password = "s3cret-not-hex";
    create_secret(&admin, &ns, "sopass", &[("password", password)]).await?;
    let wol = WakeOnLan {
        mac: MAC.to_owned(),
        broadcast: Some("127.0.0.1".to_owned()),
        port: Some(9),
        secure_on_secret: Some("sopass".to_owned()),
        ..WakeOnLan::default()
    };
    let op = Op::new(
        Machine::test("minipc-1")
            .namespace(&ns)
            .desired(PowerState::Off)
            .wol(wol.clone())
            .no_power_off()
            .build(),
        Direction::On,
        "on-1",
        Timestamp::now(),
    );
    let mut said = Transcript::default();
    let driver = WakeOnLanDriver::new(admin, &wol, None);
    let err = said
        .record(&driver.start(&op.at(Timestamp::now())).await)
        .err()
        .context("a malformed password must be an error")?;
    assert!(
        err.contains("secureOnSecret") && err.contains(&format!("{ns}/sopass")),
        "{err}"
    );
    said.assert_never_shows(password);
    Ok(())
}

/// A Node CR stored in the API server (the relay Job is owned by it).
async fn stored_machine(
    client: &kube::Client,
    ns: &str,
    name: &str,
    wol: &WakeOnLan,
) -> anyhow::Result<Machine> {
    // The CRD needs a way to power off too.
    let m = Machine::test(name)
        .namespace(ns)
        .desired(PowerState::Off)
        .node_name(name)
        .wol(wol.clone())
        .node_agent_off()
        .build();
    Ok(Api::<Machine>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &m)
        .await?)
}

#[tokio::test]
async fn the_relay_job_runs_on_the_lan_and_is_followed_to_its_end() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("wol-relay").await?;
    let admin = cp.client()?;
    let world = support::World::new(cp.client()?);
    let wol = WakeOnLan {
        mac: MAC.to_owned(),
        broadcast: Some("192.168.1.255".to_owned()),
        secure_on_secret: Some("sopass".to_owned()),
        via: Some(WakeOnLanRelay {
            node_selector: BTreeMap::from([("homelab.dev/lan".to_owned(), "home".to_owned())]),
            image: None,
        }),
        ..WakeOnLan::default()
    };
    let m = stored_machine(&admin, &ns, "minipc-1", &wol).await?;
    let uid = m.metadata.uid.clone().context("stored Node has a uid")?;
    let driver = WakeOnLanDriver::new(admin.clone(), &wol, Some("minipc-1"));
    let op = Op::new(m.clone(), Direction::On, "on-1", Timestamp::now());

    let first = driver.start(&op.at(Timestamp::now())).await?;
    assert_eq!(first.progress, OpProgress::Running);
    // Started again (e.g. after an operator restart): the same Job is adopted, not a second.
    let again = driver.start(&op.at(Timestamp::now())).await?;
    assert_eq!(again.progress, OpProgress::Running);
    let jobs: Api<Job> = Api::namespaced(admin.clone(), &ns);
    let all = jobs.list(&Default::default()).await?;
    assert_eq!(all.items.len(), 1, "one relay Job per operation");

    let job = jobs.get(&op.resource_name).await?;
    let labels = job.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get(MANAGED_BY_LABEL).map(String::as_str),
        Some("kubectl-homelab")
    );
    assert_eq!(
        labels.get(MACHINE_LABEL).map(String::as_str),
        Some("minipc-1")
    );
    assert_eq!(
        labels.get(OPERATION_LABEL).map(String::as_str),
        Some("on-1")
    );
    let owner = &job.metadata.owner_references.clone().unwrap_or_default()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Node", uid.as_str())
    );
    let pod = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .context("the Job has a pod spec")?;
    assert_eq!(
        pod.host_network,
        Some(true),
        "the LAN is only reachable from the host"
    );
    assert_eq!(
        pod.node_selector
            .clone()
            .unwrap_or_default()
            .get("homelab.dev/lan"),
        Some(&"home".to_owned())
    );
    let term = &pod
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .context("required node affinity")?
        .node_selector_terms[0];
    let not_target = &term.match_fields.clone().unwrap_or_default()[0];
    assert_eq!(
        (
            not_target.key.as_str(),
            not_target.operator.as_str(),
            not_target.values.clone()
        ),
        ("metadata.name", "NotIn", Some(vec!["minipc-1".to_owned()])),
        "never on the machine being woken"
    );
    let env = pod.containers[0].env.clone().unwrap_or_default();
    let secure_on = env
        .iter()
        .find(|e| e.name == "WOL_SECURE_ON")
        .context("SecureOn passed to the relay")?;
    assert_eq!(
        secure_on.value, None,
        "the password is not written into the Job"
    );
    let key_ref = secure_on
        .value_from
        .as_ref()
        .and_then(|v| v.secret_key_ref.as_ref())
        .context("from a secretKeyRef")?;
    assert_eq!(
        (key_ref.name.as_str(), key_ref.key.as_str()),
        ("sopass", "password")
    );

    // The Job's end is the operation's end.
    world.complete_job(&ns, &op.resource_name).await?;
    assert_eq!(
        driver.check(&op.at(Timestamp::now())).await?.progress,
        OpProgress::Succeeded
    );

    let retry = Op::new(m.clone(), Direction::On, "on-2", Timestamp::now());
    driver.start(&retry.at(Timestamp::now())).await?;
    world
        .fail_job(&ns, &retry.resource_name, "no node of the LAN is Ready")
        .await?;
    match driver.check(&retry.at(Timestamp::now())).await?.progress {
        OpProgress::Failed { reason } => assert!(
            reason.contains(&retry.resource_name) && reason.contains("no node of the LAN"),
            "{reason}"
        ),
        other => panic!("expected Failed, got {other:?}"),
    }

    // Cancelled: the Job is gone and nothing is left to follow.
    let third = Op::new(m, Direction::On, "on-3", Timestamp::now());
    driver.start(&third.at(Timestamp::now())).await?;
    driver.cancel(&third.at(Timestamp::now())).await?;
    assert_eq!(
        driver.check(&third.at(Timestamp::now())).await?.progress,
        OpProgress::Absent
    );
    driver.cancel(&third.at(Timestamp::now())).await?;
    Ok(())
}

/// The relay's program, run by a real python3 with the environment the Job gives it, sends the
/// same bytes as the driver.
#[tokio::test]
async fn the_relay_program_sends_the_same_packet() -> anyhow::Result<()> {
    let python = std::env::var("KUBECTL_HOMELAB_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let (socket, port) = listener().await?;
    for password in ["", "a1:b2:c3:d4:e5:f6", "01:02:03:04"] {
        let out = tokio::process::Command::new(&python)
            .arg("-c")
            .arg(RELAY_SCRIPT)
            .env("WOL_MAC", MAC)
            .env("WOL_BROADCAST", "127.0.0.1")
            .env("WOL_PORT", port.to_string())
            .env("WOL_SECURE_ON", password)
            .output()
            .await;
        let out = match out {
            Ok(out) => out,
            Err(e) if std::env::var("KUBECTL_HOMELAB_REQUIRE_ASSETS").is_ok_and(|v| v == "1") => {
                anyhow::bail!("python3 is required to run the relay program: {e}")
            }
            Err(e) => {
                eprintln!("skipping: no python3 ({e})");
                return Ok(());
            }
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let secure_on =
            kubectl_homelab::operator::power::wol::parse_secure_on(password).unwrap_or_default();
        let expected = magic_packet(MAC_BYTES, Some(&secure_on));
        assert_eq!(receive(&socket).await?, expected, "password {password:?}");
        assert!(
            password.is_empty() || !String::from_utf8_lossy(&out.stdout).contains(password),
            "the relay prints no password"
        );
    }
    Ok(())
}

/// examples/wake-on-lan.yaml as written: minipc-1's packet (sent by the operator) arrives with
/// only the broadcast address pointed at loopback; minipc-2's relay Job is accepted by the API
/// server with the example's SecureOn Secret and LAN selector.
#[tokio::test]
async fn the_wake_on_lan_example_wakes_both_mini_pcs() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("wol-example").await?;
    let client = cp.client()?;
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/wake-on-lan.yaml");
    support::apply::apply_file(&client, &ns, &example, true).await?;
    let machines = Api::<Machine>::namespaced(client.clone(), &ns);

    let m1 = machines.get("minipc-1").await?;
    let kubectl_homelab::operator::api::PowerDriver::WakeOnLan(written) =
        m1.power_driver(Direction::On)?
    else {
        panic!("minipc-1 is woken by Wake-on-LAN");
    };
    let (socket, port) = listener().await?;
    let spec = WakeOnLan {
        broadcast: Some("127.0.0.1".to_owned()),
        port: Some(port),
        ..written.clone()
    };
    let op = Op::new(m1.clone(), Direction::On, "on-1", Timestamp::now());
    let report = WakeOnLanDriver::new(client.clone(), &spec, Some("minipc-1"))
        .start(&op.at(Timestamp::now()))
        .await?;
    assert_eq!(report.progress, OpProgress::Succeeded);
    assert_eq!(receive(&socket).await?, expected_packet(&[]));

    let m2 = machines.get("minipc-2").await?;
    let kubectl_homelab::operator::api::PowerDriver::WakeOnLan(relayed) =
        m2.power_driver(Direction::On)?
    else {
        panic!("minipc-2 is woken by Wake-on-LAN");
    };
    let op = Op::new(m2.clone(), Direction::On, "on-1", Timestamp::now());
    let driver = WakeOnLanDriver::new(client.clone(), relayed, Some("minipc-2"));
    assert_eq!(
        driver.start(&op.at(Timestamp::now())).await?.progress,
        OpProgress::Running
    );
    let job = Api::<Job>::namespaced(client, &ns)
        .get(&op.resource_name)
        .await?;
    let pod = job
        .spec
        .and_then(|s| s.template.spec)
        .context("the relay Job has a pod spec")?;
    assert_eq!(pod.host_network, Some(true));
    let env = pod.containers[0].env.clone().unwrap_or_default();
    let secret_ref = env
        .iter()
        .find_map(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
        .context("the SecureOn password comes from the Secret")?;
    assert_eq!(secret_ref.name, "minipc-2-secureon");
    Ok(())
}
