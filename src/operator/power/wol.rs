//! The `wakeOnLan` driver: the magic packet (6×0xFF, then the MAC 16 times, then the optional
//! 4- or 6-byte SecureOn password) sent as a UDP broadcast to the machine's LAN.
//!
//! A pod on the cluster network cannot reach the LAN's broadcast domain, so the packet goes
//! either from the operator's own process (which then runs with hostNetwork) or, with `via`, from
//! a short-lived Job on the host network of another Ready node of the same LAN (docs/pitfalls.md,
//! pitfall 21). WoL has no readback: the evidence of power-on is the Node registering, so sending
//! the packet (or the relay Job completing) is the action's success.
use std::net::Ipv4Addr;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Container, EnvVar, EnvVarSource, NodeAffinity, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, PodSpec, PodTemplateSpec, SecretKeySelector, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams, PropagationPolicy};
use tokio::net::UdpSocket;

use super::secret;
use super::{Driver, OpContext, OpProgress, PowerError, Report};
use crate::operator::api::{Machine, SECRET_KEY_PASSWORD, WakeOnLan, WakeOnLanRelay, parse_mac};
use crate::operator::error_chain;
use crate::operator::trust::TrustPolicy;

/// Labels of the relay Job: the same as every power Job's, so the operator's Job watch (selected
/// on the managed-by label) sees it and its completion wakes the controller.
pub use super::job::{
    DIRECTION_LABEL, MACHINE_LABEL, MANAGED_BY, MANAGED_BY_LABEL, OPERATION_LABEL,
};
use super::job::{
    api_error, belongs_to, ensure_readable, job_metadata, job_name as relay_job_name, progress,
    refuse, refuse_operator_account, restricted_container_security, restricted_pod_security,
};

/// A relay sends one packet: a Job still not done after this is stuck (no node to run on, image
/// not pulled) and fails, so the lifecycle retries instead of waiting for the boot deadline.
pub const RELAY_DEADLINE_SECONDS: i64 = 120;
const RELAY_BACKOFF_LIMIT: i32 = 2;
const RELAY_TTL_SECONDS: i32 = 600;

/// The relay container's program (Python, so any `python3` image runs it): the same packet as
/// [`magic_packet`], the password read from the environment (a `secretKeyRef`, so it is never in
/// the Job's spec) and never printed.
pub const RELAY_SCRIPT: &str = r#"import os, socket, sys
def octets(text):
    return bytes.fromhex(text.strip().replace(":", "").replace("-", ""))
mac = octets(os.environ["WOL_MAC"])
password = octets(os.environ.get("WOL_SECURE_ON", ""))
if len(mac) != 6 or len(password) not in (0, 4, 6):
    sys.exit("WOL_MAC must be 6 octets and the SecureOn password 4 or 6 octets")
packet = b"\xff" * 6 + mac * 16 + password
target = (os.environ["WOL_BROADCAST"], int(os.environ["WOL_PORT"]))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.sendto(packet, target)
print("sent a %d-byte magic packet to %s:%d" % (len(packet), target[0], target[1]))
"#;

/// The magic packet for `mac`, with the SecureOn password appended when there is one.
pub fn magic_packet(mac: [u8; 6], secure_on: Option<&[u8]>) -> Vec<u8> {
    let mut packet = Vec::with_capacity(6 + 16 * 6 + 6);
    packet.extend_from_slice(&[0xff; 6]);
    for _ in 0..16 {
        packet.extend_from_slice(&mac);
    }
    packet.extend_from_slice(secure_on.unwrap_or_default());
    packet
}

/// A SecureOn password: 4 or 6 hex octets separated by `:` or `-`. The error never repeats the
/// value.
pub fn parse_secure_on(text: &str) -> Result<Vec<u8>, &'static str> {
    const PROBLEM: &str =
        "must be 4 or 6 hex octets separated by ':' or '-', e.g. 01:02:03:04:05:06";
    let text = text.trim();
    let parts: Vec<&str> = text.split([':', '-']).collect();
    if !(parts.len() == 4 || parts.len() == 6) {
        return Err(PROBLEM);
    }
    parts
        .iter()
        .map(|p| {
            if p.len() == 2 {
                u8::from_str_radix(p, 16).map_err(|_| PROBLEM)
            } else {
                Err(PROBLEM)
            }
        })
        .collect()
}

/// The Wake-on-LAN driver for one machine (power-on only).
pub struct WakeOnLanDriver<'a> {
    client: Client,
    spec: &'a WakeOnLan,
    /// The machine's Kubernetes node name, when known: the relay never runs there.
    node_name: Option<&'a str>,
    /// ServiceAccount of the relay pod (`run-operator --pod-service-account`).
    service_account: Option<&'a str>,
    /// What Node CRs may ask for: checked again right before the relay Job is created.
    trust: &'a TrustPolicy,
}

/// The policy of a driver built without [`WakeOnLanDriver::with_trust`]: the documented
/// defaults.
static DEFAULT_TRUST: std::sync::LazyLock<TrustPolicy> =
    std::sync::LazyLock::new(TrustPolicy::default);

impl<'a> WakeOnLanDriver<'a> {
    /// `client` reads the SecureOn Secret (only that one, by name) and, with `via`, creates,
    /// reads and deletes the relay Job in the machine's namespace.
    pub fn new(
        client: Client,
        spec: &'a WakeOnLan,
        node_name: Option<&'a str>,
    ) -> WakeOnLanDriver<'a> {
        WakeOnLanDriver {
            client,
            spec,
            node_name,
            service_account: None,
            trust: &DEFAULT_TRUST,
        }
    }

    /// Checks the relay against `policy` (`Settings.trust`) before creating it.
    pub fn with_trust(mut self, policy: &'a TrustPolicy) -> Self {
        self.trust = policy;
        self
    }

    /// Runs the relay pod as `name` (else the namespace's `default`).
    pub fn with_service_account(mut self, name: Option<&'a str>) -> Self {
        self.service_account = name;
        self
    }

    fn field(cx: &OpContext<'_>) -> String {
        format!("{}.wakeOnLan", cx.machine.spec.power_field(cx.direction))
    }

    fn jobs(&self, cx: &OpContext<'_>) -> Api<Job> {
        Api::namespaced(self.client.clone(), namespace(cx.machine))
    }

    /// Sends the packet from this process.
    async fn send(&self, cx: &OpContext<'_>) -> Result<Report, PowerError> {
        let field = Self::field(cx);
        let mac = parse_mac(&format!("{field}.mac"), &self.spec.mac)
            .map_err(|e| PowerError::Config(e.to_string()))?;
        let password = match &self.spec.secure_on_secret {
            None => None,
            Some(name) => {
                let s = secret::read(
                    &self.client,
                    namespace(cx.machine),
                    name,
                    &format!("{field}.secureOnSecret"),
                )
                .await?;
                let text = s.get(SECRET_KEY_PASSWORD)?;
                Some(parse_secure_on(text.expose()).map_err(|problem| {
                    PowerError::Config(format!(
                        "Secret {} (named by {field}.secureOnSecret): key `{SECRET_KEY_PASSWORD}` {problem}",
                        s.object()
                    ))
                })?)
            }
        };
        let broadcast: Ipv4Addr = self.spec.broadcast().parse().map_err(|_| {
            PowerError::Config(format!(
                "{field}.broadcast: {:?} is not an IPv4 address",
                self.spec.broadcast()
            ))
        })?;
        let target = (broadcast, self.spec.port());
        let packet = magic_packet(mac, password.as_deref());
        let sent = async {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
            socket.set_broadcast(true)?;
            socket.send_to(&packet, target).await
        }
        .await;
        match sent {
            Ok(_) => Ok(Report::new(OpProgress::Succeeded)),
            Err(e) => Err(PowerError::Transient(format!(
                "sending the Wake-on-LAN packet to {}:{} failed: {}; if the operator's pod is \
                 not on the host network, set {field}.via to send it from a node of the LAN",
                target.0,
                target.1,
                error_chain(&e)
            ))),
        }
    }
}

fn namespace(machine: &Machine) -> &str {
    machine.metadata.namespace.as_deref().unwrap_or("default")
}

impl Driver for WakeOnLanDriver<'_> {
    fn kind(&self) -> &'static str {
        "wakeOnLan"
    }

    async fn start(&self, cx: &OpContext<'_>) -> Result<Report, PowerError> {
        let Some(via) = &self.spec.via else {
            cx.ensure_leader()?;
            return self.send(cx).await;
        };
        let mut job = relay_job(cx, self.spec, via, self.node_name)?;
        super::job::default_service_account(&mut job, self.service_account);
        // The trust boundary, again right before the pod is created: an allowed image (it runs
        // on the host's network), never the operator's ServiceAccount, and a SecureOn Secret
        // only if the operator may read it itself.
        let field = Self::field(cx);
        refuse(&self.trust.check_relay(&format!("{field}.via"), via))?;
        let pod = job.spec.as_ref().and_then(|s| s.template.spec.as_ref());
        refuse_operator_account(pod, None, namespace(cx.machine), self.trust)?;
        if let Some(secret) = &self.spec.secure_on_secret {
            ensure_readable(
                &self.client,
                namespace(cx.machine),
                &[(format!("{field}.secureOnSecret"), secret.as_str())],
            )
            .await?;
        }
        let name = relay_job_name(cx.resource_name);
        cx.ensure_leader()?;
        match self.jobs(cx).create(&PostParams::default(), &job).await {
            Ok(_) => Ok(Report::new(OpProgress::Running)),
            // Created before a restart: adopt it.
            Err(kube::Error::Api(s)) if s.code == 409 => self.check(cx).await,
            Err(e) => Err(api_error(
                &format!("creating the Wake-on-LAN relay Job {name}"),
                e,
            )),
        }
    }

    async fn check(&self, cx: &OpContext<'_>) -> Result<Report, PowerError> {
        // Without a relay nothing is left to look at: the packet is sent again if asked.
        if self.spec.via.is_none() {
            return Ok(Report::new(OpProgress::Absent));
        }
        let name = relay_job_name(cx.resource_name);
        match self.jobs(cx).get_opt(&name).await {
            Ok(Some(job)) if belongs_to(&job, cx) => Ok(Report::new(progress(&job))),
            Ok(_) => Ok(Report::new(OpProgress::Absent)),
            Err(e) => Err(api_error(
                &format!("reading the Wake-on-LAN relay Job {name}"),
                e,
            )),
        }
    }

    async fn cancel(&self, cx: &OpContext<'_>) -> Result<(), PowerError> {
        if self.spec.via.is_none() {
            return Ok(());
        }
        let name = relay_job_name(cx.resource_name);
        // Background propagation deletes its pod too, so a late packet is not sent.
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        cx.ensure_leader()?;
        match self.jobs(cx).delete(&name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(api_error(
                &format!("deleting the Wake-on-LAN relay Job {name}"),
                e,
            )),
        }
    }
}

/// The relay Job for `cx` (pure, so its shape is tested without an API server).
pub fn relay_job(
    cx: &OpContext<'_>,
    spec: &WakeOnLan,
    via: &WakeOnLanRelay,
    target_node: Option<&str>,
) -> Result<Job, PowerError> {
    let field = format!("{}.wakeOnLan", cx.machine.spec.power_field(cx.direction));
    let mac = parse_mac(&format!("{field}.mac"), &spec.mac)
        .map_err(|e| PowerError::Config(e.to_string()))?;
    let (metadata, labels) = job_metadata(cx, relay_job_name(cx.resource_name))?;
    let mac_text = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let env_value = |name: &str, value: String| EnvVar {
        name: name.to_owned(),
        value: Some(value),
        value_from: None,
    };
    let mut env = vec![
        env_value("WOL_MAC", mac_text),
        env_value("WOL_BROADCAST", spec.broadcast().to_owned()),
        env_value("WOL_PORT", spec.port().to_string()),
    ];
    if let Some(secret) = &spec.secure_on_secret {
        env.push(EnvVar {
            name: "WOL_SECURE_ON".to_owned(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.clone(),
                    key: SECRET_KEY_PASSWORD.to_owned(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
        });
    }
    // Never on the machine being woken (a stale Node object of it may still look Ready).
    let affinity = target_node.map(|node| Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_fields: Some(vec![NodeSelectorRequirement {
                        key: "metadata.name".to_owned(),
                        operator: "NotIn".to_owned(),
                        values: Some(vec![node.to_owned()]),
                    }]),
                    match_expressions: None,
                }],
            }),
            ..NodeAffinity::default()
        }),
        ..Affinity::default()
    });
    let container = Container {
        name: "wake-on-lan".to_owned(),
        image: Some(via.image().to_owned()),
        command: Some(vec![
            "python3".to_owned(),
            "-c".to_owned(),
            RELAY_SCRIPT.to_owned(),
        ]),
        env: Some(env),
        // Restricted: a UDP broadcast needs no capability (the program sets SO_BROADCAST on
        // its own socket), only the host's network.
        security_context: Some(SecurityContext {
            read_only_root_filesystem: Some(true),
            ..restricted_container_security()
        }),
        ..Container::default()
    };
    Ok(Job {
        metadata,
        spec: Some(JobSpec {
            backoff_limit: Some(RELAY_BACKOFF_LIMIT),
            active_deadline_seconds: Some(RELAY_DEADLINE_SECONDS),
            ttl_seconds_after_finished: Some(RELAY_TTL_SECONDS),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    // The LAN's broadcast domain is only reachable from the host's network.
                    host_network: Some(true),
                    restart_policy: Some("Never".to_owned()),
                    automount_service_account_token: Some(false),
                    node_selector: (!via.node_selector.is_empty())
                        .then(|| via.node_selector.clone()),
                    affinity,
                    security_context: Some(restricted_pod_security()),
                    containers: vec![container],
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_on_takes_four_or_six_octets_and_never_echoes_the_value() {
        assert_eq!(parse_secure_on("01:02:03:04"), Ok(vec![1, 2, 3, 4]));
        assert_eq!(
            parse_secure_on("a1-b2-c3-d4-e5-f6\n"),
            Ok(vec![0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6])
        );
        for bad in ["a1:b2:c3", "a1:b2:c3:d4:e5", "zz:b2:c3:d4", "a1b2:c3:d4"] {
            let err = parse_secure_on(bad).err().unwrap_or_default();
            assert!(!err.is_empty() && !err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn the_relay_is_on_the_host_network_and_otherwise_restricted() -> Result<(), PowerError> {
        let via = WakeOnLanRelay::default();
        let wol = WakeOnLan {
            mac: "aa:bb:cc:dd:ee:ff".to_owned(),
            via: Some(via.clone()),
            ..WakeOnLan::default()
        };
        let m = Machine::test("m1").uid("uid-1").wol(wol.clone()).build();
        let op = crate::operator::machine::Operation {
            kind: crate::operator::machine::OperationKind::PowerOn,
            id: "on-1".to_owned(),
            started: jiff::Timestamp::UNIX_EPOCH,
            deadline: jiff::Timestamp::UNIX_EPOCH + jiff::SignedDuration::from_mins(5),
            completed: None,
        };
        let cx = OpContext {
            machine: &m,
            direction: crate::operator::api::Direction::On,
            op: &op,
            resource_name: "m1-on-1",
            now: op.started,
            fence: None,
        };
        let job = relay_job(&cx, &wol, &via, Some("node-m1"))?;
        let pod = job
            .spec
            .and_then(|s| s.template.spec)
            .unwrap_or_else(|| panic!("a relay Job without a pod"));
        assert_eq!(pod.host_network, Some(true));
        assert_eq!(pod.host_pid, None);
        assert_eq!(pod.automount_service_account_token, Some(false));
        let psc = pod.security_context.unwrap_or_default();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.seccomp_profile.map(|p| p.type_).as_deref(),
            Some("RuntimeDefault")
        );
        let sc = pod.containers[0]
            .security_context
            .clone()
            .unwrap_or_default();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.privileged, None);
        assert_eq!(
            sc.capabilities.map(|c| (c.add, c.drop)),
            Some((None, Some(vec!["ALL".to_owned()])))
        );
        // A broadcast needs SO_BROADCAST, which the program sets itself, and no capability.
        assert!(RELAY_SCRIPT.contains("setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)"));
        Ok(())
    }

    #[test]
    fn long_resource_names_fit_and_stay_distinct() {
        let a = relay_job_name(&format!("{}-on-1", "m".repeat(80)));
        let b = relay_job_name(&format!("{}-on-2", "m".repeat(80)));
        assert!(a.len() <= 63 && b.len() <= 63 && a != b);
    }
}
