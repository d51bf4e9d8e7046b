//! The operator's controllers in-process, as `run-operator` runs them once it leads: one watch
//! cache scoped to a namespace, the machine and group controllers over it.
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kubectl_homelab::operator::cache::Scope;
use kubectl_homelab::operator::controller::{self, Settings};
use kubectl_homelab::operator::node::drain::DrainClient;
use kubectl_homelab::operator::provider::cluster::ClusterSource;

use super::{Background, ControlPlane};

/// How long the cache may take to sync.
const SYNC: Duration = Duration::from_secs(30);

/// The controllers with `settings` (and its trust policy) on namespace `ns`, as the admin; they
/// stop when the returned task is dropped.
pub async fn start(cp: &ControlPlane, ns: &str, settings: Settings) -> anyhow::Result<Background> {
    let config = super::control_plane::load_kubeconfig(cp.kubeconfig()).await?;
    let drain = DrainClient::new(config.clone())?;
    let client = Client::try_from(config)?;
    let source = Arc::new(
        ClusterSource::start(client, Scope::Namespace(ns.to_owned()))
            .with_trust(settings.trust.clone()),
    );
    source.wait_until_ready(SYNC).await?;
    Ok(Background::from(tokio::spawn(controller::run(
        source,
        drain,
        settings,
        None,
        kubectl_homelab::operator::leader::Leadership::always(),
        std::future::pending(),
    ))))
}
