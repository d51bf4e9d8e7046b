//! Shared code for the provider's loopback tests and benchmark: inventories, a server on an
//! ephemeral 127.0.0.1 port, a generated tonic client.
#![allow(dead_code)]
use std::net::SocketAddr;
use std::sync::Arc;

use kubectl_homelab::operator::machine::{Lifecycle, Phase, PowerState};
use kubectl_homelab::operator::provider::inventory::default_provider_id;
use kubectl_homelab::operator::provider::proto::cloud_provider_client::CloudProviderClient;
use kubectl_homelab::operator::provider::{
    GroupOptions, GroupView, InventorySource, MachineView, NodeView, PowerOnOrder, Provider,
    ServeError, TemplateHints, TlsOptions, serve, serve_provider,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub const NS: &str = "lab";

pub fn group(name: &str, min: u32, max: Option<u32>) -> GroupView {
    GroupView {
        id: String::new(),
        namespace: NS.into(),
        name: name.into(),
        min_size: min,
        max_size: max,
        power_on_order: PowerOnOrder::Name,
        options: GroupOptions::default(),
        template: TemplateHints::default(),
        power_on_failure_cooldown: None,
        scale_down_disabled: false,
        paused: false,
        wear: None,
        schedule: None,
    }
}

pub fn machine(name: &str, group: &str, desired: PowerState, phase: Phase) -> MachineView {
    let mut m = MachineView::new(NS, name, Some(group));
    m.desired = desired;
    m.lifecycle = Lifecycle {
        phase: Some(phase),
        ..Default::default()
    };
    m
}

pub fn node_for(m: &MachineView, ready: bool) -> NodeView {
    NodeView {
        name: m.node_name.clone(),
        provider_id: m.provider_id.clone(),
        ready,
        labels: [("kubernetes.io/hostname".to_string(), m.node_name.clone())].into(),
        capacity: [
            ("cpu".to_string(), "4".to_string()),
            ("memory".to_string(), "16Gi".to_string()),
        ]
        .into(),
        ..Default::default()
    }
}

/// The instance id (= providerID) of machine `name` with the default scheme.
pub fn pid(name: &str) -> String {
    default_provider_id(NS, name)
}

/// `groups` groups of `per_group` machines; in each group the first `on` machines are on,
/// registered and Ready. Group `gNN`, machine `gNN-mMMM`. min 0, max = members.
pub fn big(
    groups: usize,
    per_group: usize,
    on: usize,
) -> (Vec<GroupView>, Vec<MachineView>, Vec<NodeView>) {
    let mut gs = Vec::new();
    let mut ms = Vec::new();
    let mut ns = Vec::new();
    for g in 0..groups {
        let gname = format!("g{g:02}");
        gs.push(group(&gname, 0, None));
        for i in 0..per_group {
            let name = format!("{gname}-m{i:03}");
            let m = if i < on {
                let m = machine(&name, &gname, PowerState::On, Phase::Ready);
                ns.push(node_for(&m, true));
                m
            } else {
                machine(&name, &gname, PowerState::Off, Phase::Off)
            };
            ms.push(m);
        }
    }
    (gs, ms, ns)
}

pub struct Running {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    pub handle: JoinHandle<Result<(), ServeError>>,
}

impl Running {
    pub async fn stop(mut self) -> Result<(), String> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.handle.await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Serves `source` on 127.0.0.1 with an ephemeral port.
pub async fn start<S: InventorySource>(source: Arc<S>, tls: Option<TlsOptions>) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind 127.0.0.1:0: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("local_addr: {e}"));
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(serve(listener, source, tls, async move {
        let _ = rx.await;
    }));
    Running {
        addr,
        shutdown: Some(tx),
        handle,
    }
}

/// Serves an already built provider (custom options) on 127.0.0.1, plaintext.
pub async fn start_with<S: InventorySource>(provider: Provider<S>) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind 127.0.0.1:0: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("local_addr: {e}"));
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(serve_provider(listener, provider, None, async move {
        let _ = rx.await;
    }));
    Running {
        addr,
        shutdown: Some(tx),
        handle,
    }
}

/// A plaintext (h2c) client, as CA uses without `cert` in its cloud-config.
pub async fn client(addr: SocketAddr) -> CloudProviderClient<Channel> {
    let ch = Channel::from_shared(format!("http://{addr}"))
        .unwrap_or_else(|e| panic!("uri: {e}"))
        .connect_lazy();
    CloudProviderClient::new(ch)
}
