//! Real counterparts for the network power drivers: the sushy-tools Redfish emulator
//! ([`sushy`]), small HTTP(S) servers started in the test ([`serve`]), and fixtures (an operation
//! to hand a driver); for the meters, a Redfish mockup with chassis power ([`redfish_mockup`]) and
//! stand-ins for Shelly, Tasmota and Home Assistant ([`meter_servers`]). Use it next to the control-plane harness:
//! `mod support; mod support_power;`.
#![allow(dead_code)]

pub mod ipmi_sim;
pub mod meter_servers;
pub mod proxy;
pub mod redfish_mockup;
pub mod server;
pub mod sushy;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::PolicyRule;
use kube::api::{Api, PostParams};
use kubectl_homelab::operator::api::{Direction, Machine};
use kubectl_homelab::operator::machine::{Operation, OperationKind};
use kubectl_homelab::operator::power::{OpContext, PowerError, Report};

use crate::support::{ControlPlane, Identity};

/// The operation `id` (`on-1`, `off-2`) started at `started`.
pub fn operation(direction: Direction, id: &str, started: Timestamp) -> Operation {
    Operation {
        kind: match direction {
            Direction::On => OperationKind::PowerOn,
            Direction::Off => OperationKind::PowerOff,
        },
        id: id.to_owned(),
        started,
        deadline: started + jiff::SignedDuration::from_mins(10),
        completed: None,
    }
}

/// Builds the `OpContext` a controller would pass.
pub struct Op {
    pub machine: Machine,
    pub direction: Direction,
    pub op: Operation,
    pub resource_name: String,
}

impl Op {
    pub fn new(machine: Machine, direction: Direction, id: &str, started: Timestamp) -> Op {
        let resource_name = format!("{}-{id}", machine.metadata.name.as_deref().unwrap_or("m"));
        Op {
            machine,
            direction,
            op: operation(direction, id, started),
            resource_name,
        }
    }

    /// The context at `now`.
    pub fn at(&self, now: Timestamp) -> OpContext<'_> {
        OpContext {
            machine: &self.machine,
            direction: self.direction,
            op: &self.op,
            resource_name: &self.resource_name,
            now,
            fence: None,
        }
    }
}

/// Creates an Opaque Secret with `pairs`.
pub async fn create_secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    pairs: &[(&str, &str)],
) -> anyhow::Result<()> {
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        string_data: Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await?;
    Ok(())
}

/// An operator identity that may read exactly the Secrets `names` in `namespace` (the RBAC the
/// README asks for: `get` by resourceNames), and nothing else.
pub async fn operator_reading(
    cp: &ControlPlane,
    namespace: &str,
    names: &[&str],
) -> anyhow::Result<Identity> {
    let id = cp.service_account(namespace, "operator").await?;
    cp.grant(
        &id,
        Some(namespace),
        vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["secrets".to_owned()]),
            resource_names: Some(names.iter().map(|n| (*n).to_owned()).collect()),
            verbs: vec!["get".to_owned()],
            ..Default::default()
        }],
    )
    .await?;
    Ok(id)
}

/// Everything a driver said (reports and errors), so a test can assert that no secret value
/// appears in any of it.
#[derive(Default)]
pub struct Transcript(Vec<String>);

impl Transcript {
    pub fn record(&mut self, result: &Result<Report, PowerError>) -> Result<Report, String> {
        self.0.push(format!("{result:?}"));
        match result {
            Ok(r) => Ok(r.clone()),
            Err(e) => {
                self.0.push(e.to_string());
                Err(e.to_string())
            }
        }
    }

    /// Panics naming the line that holds `secret`.
    pub fn assert_never_shows(&self, secret: &str) {
        for line in &self.0 {
            assert!(
                !line.contains(secret),
                "a secret value leaked into driver output: {line}"
            );
        }
    }

    pub fn lines(&self) -> &[String] {
        &self.0
    }
}
