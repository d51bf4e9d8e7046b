//! Shared test harness: a real control plane (etcd + kube-apiserver, optionally kube-scheduler)
//! built by `tests/k8s-bins/build.sh`, identities with chosen RBAC, and a simulated world
//! (kubelets, Job runner). Use it from an integration test with `mod support;`.
//!
//! ```ignore
//! mod support;
//!
//! #[tokio::test]
//! async fn something() -> anyhow::Result<()> {
//!     let Some(cp) = support::shared().await? else { return Ok(()) }; // skipped: no binaries
//!     let ns = cp.namespace("something").await?;
//!     let client = cp.client()?;
//!     // ...
//!     Ok(())
//! }
//! ```
//!
//! Binaries come from `$KUBECTL_HOMELAB_TEST_ASSETS` (else the build script's cache dir). Without
//! them a test is skipped, unless `KUBECTL_HOMELAB_REQUIRE_ASSETS=1`, which makes it fail.

// Each test binary uses a different part of the harness.
#![allow(dead_code, unused_imports)]

pub mod apply;
pub mod assets;
pub mod ca;
pub mod chart;
pub mod control_plane;
pub mod debian;
pub mod helm;
pub mod identity;
pub mod machines;
pub mod operator;
pub mod pki;
pub mod pod_security;
pub mod process;
pub mod spares;
pub mod world;

use std::sync::OnceLock;

use anyhow::Context as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

pub use assets::Assets;
pub use ca::{CaOptions, ClusterAutoscaler, Provider, ProviderCommand, Transport};
pub use control_plane::{ControlPlane, FIELD_MANAGER, Options};
pub use identity::Identity;
pub use machines::{Boot, Machines, MachinesConfig, ProviderIdBy};
pub use world::{Background, FakeNode, JobOutcome, World};

/// Polls `check` every 250 ms until it returns `Some`, for at most `timeout`; the error names
/// `what` was awaited.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: std::time::Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("waited {timeout:?} for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// The runtime a bench's `main` drives its work on: two workers, as the machines the figures
/// come from have two cores. Exits the process when tokio cannot start.
pub fn bench_runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start tokio: {e}");
            std::process::exit(1);
        }
    }
}

/// The binaries a control plane needs.
const CONTROL_PLANE_BINARIES: &[&str] = &["etcd", "kube-apiserver", "kube-scheduler"];

/// Our CRDs, as `crd gen` prints them.
pub fn our_crds() -> Vec<CustomResourceDefinition> {
    kubectl_homelab::operator::api::crds()
}

/// The shared control plane of this test binary: `Ok(None)` when skipped, `Err` (as text, so
/// every test sees it) when it failed to start.
static SHARED: OnceLock<Result<Option<ControlPlane>, String>> = OnceLock::new();

/// The control plane shared by all tests of this test binary (started on first use, with our
/// CRDs and without a scheduler, killed when the binary exits). `Ok(None)`: binaries missing,
/// test skipped. Give every test its own namespace ([`ControlPlane::namespace`]); tests that
/// need cluster-scoped state of their own (Nodes, a scheduler) should use [`own`] instead.
pub async fn shared() -> anyhow::Result<Option<&'static ControlPlane>> {
    if SHARED.get().is_none() {
        // Started on its own thread and runtime: the first caller's runtime ends with its test,
        // and nothing of the control plane may depend on it.
        tokio::task::spawn_blocking(|| {
            SHARED.get_or_init(|| {
                let result = start_blocking();
                if let Ok(Some(_)) = &result {
                    // Statics are never dropped: kill the processes and remove the temp dir at
                    // exit. (If the process dies harder, PR_SET_PDEATHSIG still kills them.)
                    // SAFETY: registers a plain extern "C" fn that does not unwind.
                    unsafe { libc::atexit(shutdown_shared) };
                }
                result.map_err(|e| format!("{e:#}"))
            });
        })
        .await
        .context("starting the shared control plane")?;
    }
    match SHARED.get() {
        Some(Ok(cp)) => Ok(cp.as_ref()),
        Some(Err(e)) => anyhow::bail!("the shared control plane failed to start: {e}"),
        None => anyhow::bail!("the shared control plane was not initialised"),
    }
}

extern "C" fn shutdown_shared() {
    // An atexit handler must not unwind into C.
    let _ = std::panic::catch_unwind(|| {
        if let Some(Ok(Some(cp))) = SHARED.get() {
            cp.shutdown();
        }
    });
}

fn start_blocking() -> anyhow::Result<Option<ControlPlane>> {
    let Some(assets) = Assets::locate(CONTROL_PLANE_BINARIES)? else {
        return Ok(None);
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a runtime to start the shared control plane")?;
    rt.block_on(ControlPlane::start(&assets, &Options::default()))
        .map(Some)
}

/// A control plane of the test's own (dropped, and so killed, when the test ends, also by a
/// panic). `Ok(None)`: binaries missing, test skipped.
pub async fn own(opts: Options) -> anyhow::Result<Option<ControlPlane>> {
    let Some(assets) = Assets::locate(CONTROL_PLANE_BINARIES)? else {
        return Ok(None);
    };
    ControlPlane::start(&assets, &opts).await.map(Some)
}
