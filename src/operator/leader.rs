//! Leader election on a `coordination.k8s.io/v1` Lease (kube-lease-manager), and the
//! [`Leadership`] flag the rest of the operator reads.
//!
//! kube-lease-manager acquires and renews the Lease, but only reports a change of holder when it
//! next talks to the API server: while renewals fail it keeps saying "leader", and a Lease taken
//! over meanwhile is noticed at its next renewal. So [`Election`] also watches the Lease object
//! and fences leadership on what it shows: this replica leads only while the Lease names it and
//! its last renewal is younger than the lease duration minus half the renewal grace. A renewal
//! that does not land, or a Lease someone else holds, stops acting at once.
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kube::Api;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Default Lease name.
pub const DEFAULT_LEASE_NAME: &str = "kubectl-homelab-operator";
/// How long a Lease stays valid after its last renewal (client-go's default too).
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long before expiry the holder renews.
pub const DEFAULT_RENEW_GRACE: Duration = Duration::from_secs(5);
/// How long releasing the Lease at shutdown may take.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether this replica may act (reconcile, answer mutating gRPC calls). Cheap to clone.
///
/// Two things are published: a flag, which the controllers' start and stop follow, and the
/// time until which the Lease as last seen lets this replica act. [`Leadership::is_leader`]
/// reads both against the clock at the moment it is asked, so a process paused past its Lease
/// (SIGSTOP, CPU throttling) does not act on a flag its fence task has not had the chance to
/// lower yet.
#[derive(Clone, Debug)]
pub struct Leadership {
    rx: watch::Receiver<bool>,
    /// Until when this replica may act (`None` inside: not at all). Absent when no Lease bounds
    /// it ([`Leadership::always`], [`Leadership::from_receiver`]): the flag alone decides.
    until: Option<watch::Receiver<Option<Timestamp>>>,
    /// Keeps the channel open for [`Leadership::always`], so `changed()` never reports a
    /// closed channel as a change.
    _sender: Option<Arc<watch::Sender<bool>>>,
}

impl Leadership {
    /// Leader for good: a single replica run with `--leader-elect=false`.
    pub fn always() -> Leadership {
        let (tx, rx) = watch::channel(true);
        Leadership {
            rx,
            until: None,
            _sender: Some(Arc::new(tx)),
        }
    }

    /// A flag driven by `rx` (tests, or another election mechanism).
    pub fn from_receiver(rx: watch::Receiver<bool>) -> Leadership {
        Leadership {
            rx,
            until: None,
            _sender: None,
        }
    }

    /// A flag driven by `rx`, bounded by the held-until time `until` publishes.
    pub fn fenced(
        rx: watch::Receiver<bool>,
        until: watch::Receiver<Option<Timestamp>>,
    ) -> Leadership {
        Leadership {
            rx,
            until: Some(until),
            _sender: None,
        }
    }

    /// True while this replica leads: the flag is up and, when a Lease bounds it, the clock
    /// now is before the held-until time. Call it right before acting.
    pub fn is_leader(&self) -> bool {
        self.is_leader_at(Timestamp::now())
    }

    /// [`Leadership::is_leader`] at `now`.
    pub fn is_leader_at(&self, now: Timestamp) -> bool {
        *self.rx.borrow()
            && self
                .until
                .as_ref()
                .is_none_or(|u| u.borrow().is_some_and(|t| now < t))
    }

    /// A receiver that sees every change (`true` = leader).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.rx.clone()
    }

    /// Resolves once this replica leads (never, if the election ended).
    pub async fn acquired(&self) {
        let mut rx = self.rx.clone();
        if rx.wait_for(|l| *l).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Resolves once this replica does not lead (at once if it does not now); also when the
    /// election ended.
    pub async fn lost(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|l| !*l).await;
    }
}

/// Which Lease to hold, as whom, and its timing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    /// Unique per replica: written into `spec.holderIdentity`.
    pub identity: String,
    pub duration: Duration,
    /// Renew this long before the Lease expires. Half of it is the fence margin (see
    /// [`LeaseSettings::fence_margin`]), and that half is the clock skew tolerated between
    /// replicas.
    pub renew_grace: Duration,
}

impl LeaseSettings {
    /// Rejects timings kube-lease-manager cannot work with (it panics on them).
    pub fn validate(&self) -> Result<(), LeaderError> {
        let whole = |d: Duration| d.as_secs() > 0 && d.subsec_nanos() == 0;
        if !whole(self.duration) || !whole(self.renew_grace) || self.renew_grace >= self.duration {
            return Err(LeaderError::Timing {
                duration: self.duration,
                grace: self.renew_grace,
            });
        }
        if self.identity.is_empty() {
            return Err(LeaderError::EmptyIdentity);
        }
        Ok(())
    }

    /// The time before expiry at which the fence stops acting: half the renewal grace, so a
    /// renewal that lands on time (a full grace before expiry) never drops leadership and one
    /// that fails does before any other replica may take over. Another replica takes over
    /// once the Lease expires by its own clock; this one stops `fence_margin` earlier by its
    /// clock, so the two never act at once while their clocks differ by less than this margin:
    /// it is the clock skew tolerated (docs/architecture.md, "Leader election").
    pub fn fence_margin(&self) -> SignedDuration {
        SignedDuration::try_from(self.renew_grace / 2).unwrap_or(SignedDuration::ZERO)
    }
}

/// A unique holder identity: the pod name (`POD_NAME`, else `HOSTNAME`) plus the process id and
/// start time, so a restarted container never inherits the Lease of the process it replaces.
pub fn default_identity() -> String {
    let host = ["POD_NAME", "HOSTNAME"]
        .into_iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|v| !v.is_empty())
        .unwrap_or_else(|| "kubectl-homelab".to_owned());
    let started = Timestamp::now().as_nanosecond();
    format!(
        "{host}_{}_{:x}",
        std::process::id(),
        started.rem_euclid(1 << 32)
    )
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error(
        "--lease-duration {duration:?} and --lease-renew-grace {grace:?} must be whole seconds \
         greater than zero, the grace shorter than the duration (e.g. 15s and 5s)"
    )]
    Timing { duration: Duration, grace: Duration },
    #[error("the leader election identity is empty; pass --lease-identity or set POD_NAME")]
    EmptyIdentity,
    #[error(
        "Lease {namespace}/{name}: cannot read or create it: {source}; grant get, list, watch, \
         create, update and patch on leases.coordination.k8s.io in namespace {namespace} \
         (or choose another with --lease-namespace, or run one replica with --leader-elect=false)"
    )]
    Lease {
        namespace: String,
        name: String,
        #[source]
        source: LeaseManagerError,
    },
}

/// A running election. Drop it only after [`Election::release`]: dropping it aborts the
/// election without releasing the Lease (the next leader then waits for it to expire).
pub struct Election {
    leadership: Leadership,
    settings: LeaseSettings,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Election {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Election")
            .field("settings", &self.settings)
            .field("leader", &self.leadership.is_leader())
            .finish_non_exhaustive()
    }
}

impl Drop for Election {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

impl Election {
    /// Creates the Lease if needed and starts competing for it.
    pub async fn start(
        client: kube::Client,
        settings: LeaseSettings,
    ) -> Result<Election, LeaderError> {
        settings.validate()?;
        let lease_error = |source| LeaderError::Lease {
            namespace: settings.namespace.clone(),
            name: settings.name.clone(),
            source,
        };
        let manager = LeaseManagerBuilder::new(client.clone(), &settings.name)
            .with_namespace(&settings.namespace)
            .with_identity(&settings.identity)
            .with_duration(settings.duration.as_secs())
            .with_grace(settings.renew_grace.as_secs())
            .build()
            .await
            .map_err(lease_error)?;
        let (manager_rx, manager_task) = manager.watch().await;
        let (tx, rx) = watch::channel(false);
        let (until_tx, until_rx) = watch::channel(None);
        let (stop, stopped) = oneshot::channel();
        let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
        let task = tokio::spawn(fence(
            settings.clone(),
            api,
            manager_rx,
            manager_task,
            Published {
                leader: tx,
                until: until_tx,
            },
            stopped,
        ));
        Ok(Election {
            leadership: Leadership::fenced(rx, until_rx),
            settings,
            stop: Some(stop),
            task: Some(task),
        })
    }

    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    /// Stops acting at once, then releases the Lease so another replica can take over without
    /// waiting for it to expire.
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::warn!(error = %e, "the leader election task failed");
        }
    }
}

/// When the Lease, as last seen, stops counting for `settings.identity` (`None`: not ours).
fn held_until(spec: Option<&LeaseSpec>, settings: &LeaseSettings) -> Option<Timestamp> {
    let spec = spec?;
    if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
        return None;
    }
    let renewed = spec.renew_time.as_ref()?.0;
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds?));
    renewed
        .checked_add(duration)
        .ok()?
        .checked_sub(settings.fence_margin())
        .ok()
}

type ManagerTask = JoinHandle<Result<LeaseManager, LeaseManagerError>>;

/// What the fence publishes: the flag, and until when it holds.
struct Published {
    leader: watch::Sender<bool>,
    until: watch::Sender<Option<Timestamp>>,
}

/// Publishes `leader = the manager says so && the Lease shows our fresh renewal`, and the
/// time that renewal runs out (minus the fence margin), until `stopped`; then publishes
/// `false` and releases the Lease.
async fn fence(
    settings: LeaseSettings,
    api: Api<Lease>,
    mut manager_rx: watch::Receiver<bool>,
    manager_task: ManagerTask,
    published: Published,
    mut stopped: oneshot::Receiver<()>,
) {
    let Published {
        leader: tx,
        until: until_tx,
    } = published;
    let config = watcher::Config::default().fields(&format!("metadata.name={}", settings.name));
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    let mut lease: Option<LeaseSpec> = None;
    let mut manager_says = *manager_rx.borrow_and_update();
    let mut manager_alive = true;
    loop {
        let now = Timestamp::now();
        let until = if manager_says {
            held_until(lease.as_ref(), &settings)
        } else {
            None
        };
        let leader = until.is_some_and(|t| t > now);
        // The time first: a reader that sees the flag up also sees the bound.
        until_tx.send_if_modified(|u| std::mem::replace(u, until) != until);
        let changed = tx.send_if_modified(|l| std::mem::replace(l, leader) != leader);
        if changed {
            log_change(leader, manager_says, lease.as_ref(), &settings);
        }
        // Wake when the fence runs out (the next renewal normally arrives before).
        let wake = match until {
            Some(t) if leader => Duration::try_from(t.duration_since(now)).unwrap_or_default(),
            _ => Duration::from_secs(3600),
        };
        tokio::select! {
            biased;
            _ = &mut stopped => break,
            r = manager_rx.changed(), if manager_alive => match r {
                Ok(()) => manager_says = *manager_rx.borrow_and_update(),
                Err(_) => {
                    // Only happens if kube-lease-manager's task ended; without it nothing
                    // renews the Lease, so never lead again.
                    tracing::error!(lease = %settings.name, "the Lease manager stopped; not leading any more");
                    manager_alive = false;
                    manager_says = false;
                }
            },
            ev = events.next() => match ev {
                Some(Ok(watcher::Event::Apply(l) | watcher::Event::InitApply(l))) => lease = l.spec,
                Some(Ok(watcher::Event::Delete(_))) => lease = None,
                Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => {}
                Some(Err(e)) => tracing::warn!(
                    lease = %settings.name,
                    error = %e,
                    "watching the Lease failed; retrying (leadership ends when the last renewal seen expires)"
                ),
                None => {
                    tracing::error!(lease = %settings.name, "the Lease watch ended; not leading any more");
                    manager_alive = false;
                    manager_says = false;
                }
            },
            () = tokio::time::sleep(wake) => {}
        }
    }
    // Stop acting before releasing, so nobody acts while another replica already leads.
    until_tx.send_replace(None);
    tx.send_replace(false);
    // kube-lease-manager releases the Lease once its channel has no receiver left.
    drop(manager_rx);
    match tokio::time::timeout(RELEASE_TIMEOUT, manager_task).await {
        Ok(Ok(Ok(_))) => tracing::info!(lease = %settings.name, "Lease released"),
        Ok(Ok(Err(e))) => {
            tracing::warn!(lease = %settings.name, error = %e, "releasing the Lease failed; the next leader waits for it to expire")
        }
        Ok(Err(e)) => {
            tracing::warn!(lease = %settings.name, error = %e, "the Lease manager task failed")
        }
        Err(_) => tracing::warn!(
            lease = %settings.name,
            "releasing the Lease took longer than {RELEASE_TIMEOUT:?}; the next leader waits for it to expire"
        ),
    }
}

fn log_change(
    leader: bool,
    manager_says: bool,
    lease: Option<&LeaseSpec>,
    settings: &LeaseSettings,
) {
    let holder = lease
        .and_then(|l| l.holder_identity.as_deref())
        .unwrap_or("nobody");
    if leader {
        tracing::info!(identity = %settings.identity, lease = %settings.name, "became the leader");
    } else if manager_says {
        tracing::warn!(
            identity = %settings.identity,
            lease = %settings.name,
            holder,
            "stopped leading: the Lease does not show a current renewal by this replica"
        );
    } else {
        tracing::info!(identity = %settings.identity, lease = %settings.name, holder, "not the leader");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn settings() -> LeaseSettings {
        LeaseSettings {
            name: "l".into(),
            namespace: "ns".into(),
            identity: "me".into(),
            duration: Duration::from_secs(15),
            renew_grace: Duration::from_secs(4),
        }
    }

    fn spec(holder: &str, renewed: Timestamp, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(renewed)),
            lease_duration_seconds: Some(secs),
            ..Default::default()
        }
    }

    #[test]
    fn our_lease_counts_until_expiry_minus_half_the_grace() {
        let t = Timestamp::UNIX_EPOCH;
        let s = settings();
        assert_eq!(
            held_until(Some(&spec("me", t, 15)), &s),
            Some(t + SignedDuration::from_secs(13))
        );
    }

    #[test]
    fn a_lease_held_by_another_or_empty_is_not_ours() {
        let t = Timestamp::UNIX_EPOCH;
        let s = settings();
        assert_eq!(held_until(Some(&spec("other", t, 15)), &s), None);
        assert_eq!(held_until(Some(&LeaseSpec::default()), &s), None);
        assert_eq!(held_until(None, &s), None);
    }

    #[test]
    fn timings_the_lease_manager_would_panic_on_are_rejected() {
        let mut s = settings();
        s.renew_grace = s.duration;
        assert!(matches!(s.validate(), Err(LeaderError::Timing { .. })));
        let mut s = settings();
        s.duration = Duration::from_millis(1500);
        assert!(matches!(s.validate(), Err(LeaderError::Timing { .. })));
        let mut s = settings();
        s.renew_grace = Duration::ZERO;
        assert!(s.validate().is_err());
        assert!(settings().validate().is_ok());
    }

    #[test]
    fn identities_differ_between_processes_of_one_pod() {
        let a = default_identity();
        assert!(a.contains(&format!("_{}_", std::process::id())), "{a}");
    }

    /// A process paused past its Lease resumes with the flag still up (its fence task has not
    /// run yet): the held-until time, read against the clock when asked, already says no.
    #[test]
    fn a_flag_left_up_past_the_held_until_time_does_not_lead() {
        let t = Timestamp::now();
        let (_flag_tx, flag) = watch::channel(true);
        let (_until_tx, until) = watch::channel(held_until(
            Some(&spec("me", t - SignedDuration::from_secs(60), 15)),
            &settings(),
        ));
        let l = Leadership::fenced(flag, until);
        assert!(
            !l.is_leader(),
            "a Lease renewed 60 s ago for 15 s still leads"
        );
        assert!(l.is_leader_at(t - SignedDuration::from_secs(50)));
        let (_flag_tx, flag) = watch::channel(true);
        let (_until_tx, until) = watch::channel(None);
        assert!(!Leadership::fenced(flag, until).is_leader());
    }

    /// The fence margin is half the renewal grace, the clock skew the settings document.
    #[test]
    fn the_fence_margin_is_half_the_renewal_grace() {
        assert_eq!(settings().fence_margin(), SignedDuration::from_secs(2));
    }

    #[tokio::test]
    async fn always_leads_and_never_reports_loss() {
        let l = Leadership::always();
        assert!(l.is_leader());
        l.acquired().await;
        // A closed channel would make `changed()` return at once, read as "leadership changed".
        assert!(matches!(l.subscribe().has_changed(), Ok(false)));
    }
}
