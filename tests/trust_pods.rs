//! The pods the operator creates, against a real kube-apiserver: their shapes pass the API
//! server's own Pod Security admission at the level each should (a `job` driver's pod at
//! `restricted`; a Wake-on-LAN relay restricted but for the host network its purpose needs; a
//! node agent only at `privileged`), a power Job mounts only a Secret the operator may itself
//! read (asked with a SelfSubjectAccessReview, which the operator's RBAC needs nothing extra
//! for), and no pod runs as the operator's own ServiceAccount.
mod support;
mod support_power;

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::api::rbac::v1::PolicyRule;
use kube::api::{Api, ListParams};
use kubectl_homelab::operator::api::{
    Direction, Machine, MinimalPodSpec, NodeAgent, VolumeMountSpec, WakeOnLan, WakeOnLanRelay,
};
use kubectl_homelab::operator::power::job::{JobDriver, JobKind, build_job};
use kubectl_homelab::operator::power::wol::{WakeOnLanDriver, relay_job};
use kubectl_homelab::operator::power::{Driver as _, OpProgress, PowerError};
use kubectl_homelab::operator::trust::TrustPolicy;
use kubectl_homelab::testing::{POWER_IMAGE, job};
use support::ControlPlane;
use support::pod_security::{namespace_enforcing, template, violations};
use support_power::{Op, create_secret};

const MAC: &str = "3c:7c:3f:1a:2b:01";

fn machine(ns: &str, name: &str) -> kubectl_homelab::testing::MachineBuilder {
    Machine::test(name)
        .namespace(ns)
        .uid(&format!("uid-{name}"))
}

#[tokio::test]
async fn a_job_drivers_pod_passes_restricted_pod_security() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = namespace_enforcing(cp, "pss-job", "restricted").await?;
    let spec = MinimalPodSpec {
        volumes: vec![VolumeMountSpec {
            name: "creds".to_owned(),
            mount_path: "/creds".to_owned(),
            secret_name: Some("plug-creds".to_owned()),
            config_map_name: None,
        }],
        ..job(POWER_IMAGE, &["/power"])
    };
    for direction in [Direction::On, Direction::Off] {
        let op = Op::new(
            machine(&ns, "m1").build(),
            direction,
            "x-1",
            Timestamp::now(),
        );
        let built = build_job(
            &op.at(Timestamp::now()),
            JobKind::Custom(&spec),
            Some("node-m1"),
        )?;
        assert_eq!(
            violations(cp, &ns, "restricted", template(&built)?).await?,
            None,
            "power {direction}"
        );
    }
    Ok(())
}

/// A job driver that asked for privilege (allowed by `--allow-privileged-jobs`) gets it, and
/// Pod Security sees exactly that and nothing else.
#[tokio::test]
async fn a_job_that_asked_for_privilege_breaks_restricted_only_by_what_it_asked()
-> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = namespace_enforcing(cp, "pss-jobpriv", "baseline").await?;
    let op = Op::new(
        machine(&ns, "m1").build(),
        Direction::On,
        "on-1",
        Timestamp::now(),
    );
    let host_network = MinimalPodSpec {
        host_network: Some(true),
        ..job(POWER_IMAGE, &[])
    };
    let built = build_job(
        &op.at(Timestamp::now()),
        JobKind::Custom(&host_network),
        None,
    )?;
    assert_eq!(
        violations(cp, &ns, "baseline", template(&built)?)
            .await?
            .as_deref(),
        Some("host namespaces (hostNetwork=true)")
    );
    let privileged = MinimalPodSpec {
        privileged: Some(true),
        ..job(POWER_IMAGE, &[])
    };
    let built = build_job(&op.at(Timestamp::now()), JobKind::Custom(&privileged), None)?;
    assert_eq!(
        violations(cp, &ns, "baseline", template(&built)?)
            .await?
            .as_deref(),
        Some("privileged (container \"power\" must not set securityContext.privileged=true)")
    );
    Ok(())
}

/// hostNetwork is not allowed at `baseline` (nor `restricted`), so the relay cannot pass
/// either; what is true is that the host network is its only violation of `restricted`, and
/// without it the same pod is restricted.
#[tokio::test]
async fn a_wake_on_lan_relay_is_restricted_but_for_the_host_network() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = namespace_enforcing(cp, "pss-relay", "restricted").await?;
    let via = WakeOnLanRelay {
        node_selector: BTreeMap::from([("homelab.dev/lan".to_owned(), "home".to_owned())]),
        image: None,
    };
    let wol = WakeOnLan {
        mac: MAC.to_owned(),
        secure_on_secret: Some("sopass".to_owned()),
        via: Some(via.clone()),
        ..WakeOnLan::default()
    };
    let op = Op::new(
        machine(&ns, "m1").wol(wol.clone()).build(),
        Direction::On,
        "on-1",
        Timestamp::now(),
    );
    let relay = template(&relay_job(
        &op.at(Timestamp::now()),
        &wol,
        &via,
        Some("node-m1"),
    )?)?;
    assert_eq!(relay.host_network, Some(true));
    assert_eq!(
        violations(cp, &ns, "restricted", relay.clone())
            .await?
            .as_deref(),
        Some("host namespaces (hostNetwork=true)")
    );
    let baseline = namespace_enforcing(cp, "pss-relay-base", "baseline").await?;
    assert_eq!(
        violations(cp, &baseline, "baseline", relay.clone())
            .await?
            .as_deref(),
        Some("host namespaces (hostNetwork=true)")
    );
    let off_host = PodSpec {
        host_network: None,
        ..relay
    };
    assert_eq!(violations(cp, &ns, "restricted", off_host).await?, None);
    Ok(())
}

/// The node agent is privileged and in the host's PID namespace by purpose: Pod Security
/// `baseline` refuses it for exactly that, and only a namespace at `privileged` runs it.
#[tokio::test]
async fn a_node_agent_needs_the_privileged_level_for_its_purpose_only() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = namespace_enforcing(cp, "pss-agent", "baseline").await?;
    let agent = NodeAgent::default();
    let op = Op::new(
        machine(&ns, "m1").node_agent_off().build(),
        Direction::Off,
        "off-1",
        Timestamp::now(),
    );
    let pod = template(&build_job(
        &op.at(Timestamp::now()),
        JobKind::NodeAgent(&agent),
        Some("node-m1"),
    )?)?;
    assert_eq!(
        violations(cp, &ns, "baseline", pod.clone())
            .await?
            .as_deref(),
        Some(
            "host namespaces (hostPID=true), privileged (container \"shutdown\" must not set \
             securityContext.privileged=true)"
        )
    );
    let privileged = namespace_enforcing(cp, "pss-agent-priv", "privileged").await?;
    assert_eq!(violations(cp, &privileged, "privileged", pod).await?, None);
    Ok(())
}

/// The operator's identity as the chart makes it: its Jobs, and `get` on the Secrets named in
/// `credentialSecrets`, nothing else (no rule for SelfSubjectAccessReviews).
async fn operator_with_chart_role(
    cp: &ControlPlane,
    ns: &str,
    credential_secrets: &[&str],
) -> anyhow::Result<support::Identity> {
    let id = cp.service_account(ns, "operator").await?;
    cp.grant(
        &id,
        Some(ns),
        vec![
            PolicyRule {
                api_groups: Some(vec!["batch".to_owned()]),
                resources: Some(vec!["jobs".to_owned()]),
                verbs: ["get", "list", "watch", "create", "delete"]
                    .map(str::to_owned)
                    .to_vec(),
                ..Default::default()
            },
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["secrets".to_owned()]),
                resource_names: Some(credential_secrets.iter().map(|s| (*s).to_owned()).collect()),
                verbs: vec!["get".to_owned()],
                ..Default::default()
            },
        ],
    )
    .await?;
    Ok(id)
}

fn mounting(secret: &str) -> MinimalPodSpec {
    MinimalPodSpec {
        volumes: vec![
            VolumeMountSpec {
                name: "settings".to_owned(),
                mount_path: "/settings".to_owned(),
                secret_name: None,
                config_map_name: Some("plug-settings".to_owned()),
            },
            VolumeMountSpec {
                name: "creds".to_owned(),
                mount_path: "/creds".to_owned(),
                secret_name: Some(secret.to_owned()),
                config_map_name: None,
            },
        ],
        ..job(POWER_IMAGE, &["/power"])
    }
}

fn driver<'a>(
    client: kube::Client,
    kind: JobKind<'a>,
    service_account: Option<&'a str>,
    trust: &'a TrustPolicy,
) -> JobDriver<'a> {
    JobDriver {
        client,
        jobs: kube::runtime::reflector::store::<Job>().0,
        kind,
        node_name: None,
        service_account,
        trust,
    }
}

async fn job_names(cp: &ControlPlane, ns: &str) -> anyhow::Result<Vec<String>> {
    Ok(Api::<Job>::namespaced(cp.client()?, ns)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|j| j.metadata.name)
        .collect())
}

#[tokio::test]
async fn a_power_job_mounts_only_a_secret_the_operator_may_read() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("trust-secrets").await?;
    let admin = cp.client()?;
    for name in ["plug-creds", "someone-elses"] {
        create_secret(&admin, &ns, name, &[("token", "t0ps3cret")]).await?;
    }
    let operator = operator_with_chart_role(cp, &ns, &["plug-creds"]).await?;
    let policy = TrustPolicy::default();

    let foreign = mounting("someone-elses");
    let m = machine(&ns, "m1").jobs(foreign.clone()).build();
    let op = Op::new(m, Direction::Off, "off-1", Timestamp::now());
    let refused = driver(operator.client()?, JobKind::Custom(&foreign), None, &policy)
        .start(&op.at(Timestamp::now()))
        .await;
    let Err(PowerError::Config(message)) = refused else {
        panic!("a Secret the operator cannot read is mounted: {refused:?}");
    };
    assert!(
        message.contains("spec.power.powerOff.job.volumes[1].secretName")
            && message.contains("someone-elses")
            && message.contains("credentialSecrets"),
        "{message}"
    );
    assert!(!message.contains("t0ps3cret"));
    assert_eq!(job_names(cp, &ns).await?, Vec::<String>::new());

    // The predecessor's field is named as such.
    let m = machine(&ns, "m2")
        .legacy_jobs(job(POWER_IMAGE, &[]), foreign.clone())
        .build();
    let op = Op::new(m, Direction::Off, "off-1", Timestamp::now());
    let refused = driver(operator.client()?, JobKind::Custom(&foreign), None, &policy)
        .start(&op.at(Timestamp::now()))
        .await;
    assert!(
        matches!(&refused, Err(PowerError::Config(m)) if m.contains("spec.shutdownPodSpec.volumes[1].secretName")),
        "{refused:?}"
    );

    let own = mounting("plug-creds");
    let m = machine(&ns, "m3").jobs(own.clone()).build();
    let op = Op::new(m, Direction::On, "on-1", Timestamp::now());
    let report = driver(operator.client()?, JobKind::Custom(&own), None, &policy)
        .start(&op.at(Timestamp::now()))
        .await?;
    assert_eq!(report.progress, OpProgress::Running);
    assert_eq!(job_names(cp, &ns).await?, ["m3-on-1"]);
    Ok(())
}

#[tokio::test]
async fn no_pod_runs_as_the_operators_service_account() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("trust-own-sa").await?;
    let operator = operator_with_chart_role(cp, &ns, &[]).await?;
    let policy = TrustPolicy {
        operator_service_account: Some((ns.clone(), "operator".to_owned())),
        job_service_accounts: vec!["operator".to_owned(), "plug".to_owned()],
        ..TrustPolicy::default()
    };

    // Named by the Node CR.
    let named = MinimalPodSpec {
        service_account: Some("operator".to_owned()),
        ..job(POWER_IMAGE, &[])
    };
    let op = Op::new(
        machine(&ns, "m1").jobs(named.clone()).build(),
        Direction::On,
        "on-1",
        Timestamp::now(),
    );
    let refused = driver(operator.client()?, JobKind::Custom(&named), None, &policy)
        .start(&op.at(Timestamp::now()))
        .await;
    assert!(
        matches!(&refused, Err(PowerError::Config(m)) if m.contains("spec.power.powerOn.job.serviceAccount")),
        "{refused:?}"
    );

    // Given by a misconfigured --pod-service-account, to a job, a node agent and a relay.
    let plain = job(POWER_IMAGE, &[]);
    let agent = NodeAgent::default();
    let via = WakeOnLanRelay::default();
    let wol = WakeOnLan {
        mac: MAC.to_owned(),
        via: Some(via),
        ..WakeOnLan::default()
    };
    let m = machine(&ns, "m2").jobs(plain.clone()).build();
    let on = Op::new(m.clone(), Direction::On, "on-1", Timestamp::now());
    let off = Op::new(m, Direction::Off, "off-1", Timestamp::now());
    let results = [
        driver(
            operator.client()?,
            JobKind::Custom(&plain),
            Some("operator"),
            &policy,
        )
        .start(&on.at(Timestamp::now()))
        .await,
        JobDriver {
            node_name: Some("node-m2"),
            ..driver(
                operator.client()?,
                JobKind::NodeAgent(&agent),
                Some("operator"),
                &policy,
            )
        }
        .start(&off.at(Timestamp::now()))
        .await,
        WakeOnLanDriver::new(operator.client()?, &wol, None)
            .with_service_account(Some("operator"))
            .with_trust(&policy)
            .start(&on.at(Timestamp::now()))
            .await,
    ];
    for refused in results {
        assert!(
            matches!(&refused, Err(PowerError::Config(m)) if m.contains("--pod-service-account")),
            "{refused:?}"
        );
    }
    assert_eq!(job_names(cp, &ns).await?, Vec::<String>::new());

    // Another listed ServiceAccount is fine, and its token is mounted.
    let plug = MinimalPodSpec {
        service_account: Some("plug".to_owned()),
        ..job(POWER_IMAGE, &[])
    };
    let op = Op::new(
        machine(&ns, "m3").jobs(plug.clone()).build(),
        Direction::On,
        "on-1",
        Timestamp::now(),
    );
    driver(
        operator.client()?,
        JobKind::Custom(&plug),
        Some("operator"),
        &policy,
    )
    .start(&op.at(Timestamp::now()))
    .await?;
    let created = Api::<Job>::namespaced(cp.client()?, &ns)
        .get("m3-on-1")
        .await?;
    let pod = template(&created)?;
    assert_eq!(pod.service_account_name.as_deref(), Some("plug"));
    assert_eq!(pod.automount_service_account_token, None);
    Ok(())
}

/// The relay reads its SecureOn password from a Secret through the kubelet (a `secretKeyRef`),
/// so it too gets only a Secret the operator may read itself; and its image, which runs on the
/// host's network, is checked again right before the relay Job is created.
#[tokio::test]
async fn a_wake_on_lan_relay_gets_only_an_allowed_image_and_a_readable_secret() -> anyhow::Result<()>
{
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("trust-relay").await?;
    let admin = cp.client()?;
    for name in ["minipc-secureon", "someone-elses"] {
        create_secret(&admin, &ns, name, &[("password", "01:02:03:04")]).await?;
    }
    let operator = operator_with_chart_role(cp, &ns, &["minipc-secureon"]).await?;
    let policy = TrustPolicy::default();
    let wol = |secret: &str, image: Option<&str>| WakeOnLan {
        mac: MAC.to_owned(),
        secure_on_secret: Some(secret.to_owned()),
        via: Some(WakeOnLanRelay {
            image: image.map(str::to_owned),
            ..WakeOnLanRelay::default()
        }),
        ..WakeOnLan::default()
    };
    let start = |name: &'static str, spec: WakeOnLan| {
        let client = operator.client();
        let policy = &policy;
        let ns = ns.clone();
        async move {
            let op = Op::new(
                machine(&ns, name).wol(spec.clone()).build(),
                Direction::On,
                "on-1",
                Timestamp::now(),
            );
            WakeOnLanDriver::new(client?, &spec, None)
                .with_trust(policy)
                .start(&op.at(Timestamp::now()))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
        }
    };

    let refused = start("m1", wol("someone-elses", None)).await;
    let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains("spec.power.powerOn.wakeOnLan.secureOnSecret")
            && message.contains("credentialSecrets"),
        "{message}"
    );
    let refused = start("m2", wol("minipc-secureon", Some("evil.example/net:1"))).await;
    let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains("spec.power.powerOn.wakeOnLan.via.image")
            && message.contains("ImageNotAllowed"),
        "{message}"
    );
    assert_eq!(job_names(cp, &ns).await?, Vec::<String>::new());

    let report = start("m3", wol("minipc-secureon", None)).await?;
    assert_eq!(report.progress, OpProgress::Running);
    assert_eq!(job_names(cp, &ns).await?, ["m3-on-1"]);
    Ok(())
}
