//! Prometheus metrics of the operator (prometheus-client, OpenMetrics text on `/metrics`).
//!
//! One [`Metrics`] handle per process, cheap to clone; controllers, power drivers and the gRPC
//! layer ([`GrpcMetricsLayer`]) record into it, the health server encodes it. What the cluster
//! state already says (each machine's phase, `status.energy`, its meter's latest reading) is not
//! pushed: [`Metrics::watch_fleet`] hands the shared Node CR cache and meter readings to a
//! collector that reads them at scrape time, so a deleted machine's series end with it. Every
//! metric is listed in docs/metrics.md.
use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use kube::ResourceExt as _;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::operator::api::{EnergySource, Machine};
use crate::operator::machine::Phase;
use crate::operator::meter::{MeterState, Readings};

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Prefix of every metric name.
const PREFIX: &str = "homelab";

/// Power Jobs take seconds (a WoL packet) to minutes (an OS shutdown).
const POWER_OPERATION_BUCKETS: [f64; 12] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0,
];
/// From power-on to a Ready Node: 10 s (a small board) to the 30 min a slow server may need.
const BOOT_BUCKETS: [f64; 14] = [
    10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 420.0, 600.0, 900.0, 1200.0, 1800.0,
];
/// Reads answer from memory in well under a millisecond; mutations wait on the API server
/// (bounded by `--api-timeout`, 2.5 s by default, inside CA's 5 s deadline).
const GRPC_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PowerOperationLabels {
    driver: String,
    direction: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    commit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DriverLabels {
    driver: String,
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, Ord, PartialOrd, EncodeLabelSet)]
struct PhaseLabels {
    namespace: String,
    group: String,
    phase: String,
}

/// One machine (Node CR).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MachineLabels {
    namespace: String,
    group: String,
    machine: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MachinePhaseLabels {
    namespace: String,
    group: String,
    machine: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MachineSourceLabels {
    namespace: String,
    group: String,
    machine: String,
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, Ord, PartialOrd, EncodeLabelSet)]
struct NamespacedGroupLabels {
    namespace: String,
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, Ord, PartialOrd, EncodeLabelSet)]
struct CurrencyLabels {
    namespace: String,
    group: String,
    currency: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    method: String,
    code: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

struct Inner {
    registry: Registry,
    power_operations_started: Family<DriverLabels, Counter>,
    power_operations_ended: Family<PowerOperationLabels, Counter>,
    power_operation_duration: HistogramFamily<DriverLabels>,
    boot_duration: HistogramFamily<GroupLabels>,
    /// Group labels the pushed per-group series carry, so a group no machine is in any more
    /// loses them at the next scrape.
    pushed_groups: Mutex<HashSet<String>>,
    fleet: Arc<FleetCollector>,
    reconcile_errors: Family<ControllerLabels, Counter>,
    node_not_ready: Family<GroupLabels, Counter>,
    boot_limit_passed: Family<GroupLabels, Counter>,
    grpc_calls: Family<GrpcLabels, Counter>,
    grpc_duration: HistogramFamily<GrpcLabels>,
    leader: Gauge,
}

/// The operator's metrics. Clones share one registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn power_operation_histogram() -> Histogram {
    Histogram::new(POWER_OPERATION_BUCKETS)
}

fn boot_histogram() -> Histogram {
    Histogram::new(BOOT_BUCKETS)
}

fn grpc_histogram() -> Histogram {
    Histogram::new(GRPC_BUCKETS)
}

impl Metrics {
    pub fn new() -> Metrics {
        // Build info under the program's name, as exporters name theirs (`<program>_build_info`);
        // everything else under the `homelab_` prefix.
        let mut root = Registry::default();
        root.register(
            "kubectl_homelab_build",
            "The running operator's version and the git commit it was built from (`unknown` when \
             the build did not set HOMELAB_GIT_COMMIT)",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                commit: option_env!("HOMELAB_GIT_COMMIT")
                    .filter(|c| !c.is_empty())
                    .unwrap_or("unknown")
                    .to_owned(),
            }),
        );
        let registry = root.sub_registry_with_prefix(PREFIX);
        let power_operations_started = Family::<DriverLabels, Counter>::default();
        registry.register(
            "power_operations_started",
            "Power operations started, by driver and direction (on|off)",
            power_operations_started.clone(),
        );
        let power_operations_ended = Family::<PowerOperationLabels, Counter>::default();
        registry.register(
            "power_operations_ended",
            "Power operations that ended, by driver, direction (on|off) and result \
             (succeeded|failed|cancelled); an operation the Node overtook (it came up first) ends \
             without a result",
            power_operations_ended.clone(),
        );
        let power_operation_duration: HistogramFamily<DriverLabels> =
            Family::new_with_constructor(power_operation_histogram);
        registry.register_with_unit(
            "power_operation_duration",
            "Time from starting a power operation to its end (success or failure), by driver and direction",
            Unit::Seconds,
            power_operation_duration.clone(),
        );
        let boot_duration: HistogramFamily<GroupLabels> =
            Family::new_with_constructor(boot_histogram);
        registry.register_with_unit(
            "boot_duration",
            "Time from power-on to the machine's Node being Ready, by group",
            Unit::Seconds,
            boot_duration.clone(),
        );
        let reconcile_errors = Family::<ControllerLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that ended in an error, by controller",
            reconcile_errors.clone(),
        );
        let node_not_ready = Family::<GroupLabels, Counter>::default();
        registry.register(
            "node_not_ready",
            "Times the Node of a Ready machine went NotReady, by group",
            node_not_ready.clone(),
        );
        let boot_limit_passed = Family::<GroupLabels, Counter>::default();
        registry.register(
            "boot_limit_passed",
            "Power-ons that passed the machine's wear.maxBootsPerDay (no other machine could take the pods), by group",
            boot_limit_passed.clone(),
        );
        let grpc_calls = Family::<GrpcLabels, Counter>::default();
        registry.register(
            "grpc_requests",
            "Cluster Autoscaler gRPC calls by method and gRPC status code",
            grpc_calls.clone(),
        );
        let grpc_duration: HistogramFamily<GrpcLabels> =
            Family::new_with_constructor(grpc_histogram);
        registry.register_with_unit(
            "grpc_request_duration",
            "Time to answer a Cluster Autoscaler gRPC call, by method and gRPC status code",
            Unit::Seconds,
            grpc_duration.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease (or runs without leader election), else 0",
            leader.clone(),
        );
        let fleet = Arc::new(FleetCollector::default());
        registry.register_collector(Box::new(fleet.clone()));
        Metrics {
            inner: Arc::new(Inner {
                registry: root,
                power_operations_started,
                power_operations_ended,
                power_operation_duration,
                boot_duration,
                pushed_groups: Mutex::new(HashSet::new()),
                fleet,
                reconcile_errors,
                node_not_ready,
                boot_limit_passed,
                grpc_calls,
                grpc_duration,
                leader,
            }),
        }
    }

    /// Counts a power operation started (`direction` `on` or `off`).
    pub fn power_operation_started(&self, driver: &str, direction: &str) {
        self.inner
            .power_operations_started
            .get_or_create(&DriverLabels {
                driver: driver.to_owned(),
                direction: direction.to_owned(),
            })
            .inc();
    }

    /// Counts a power operation that ended with `result` (`succeeded`, `failed` or
    /// `cancelled`).
    pub fn power_operation_ended(&self, driver: &str, direction: &str, result: &str) {
        self.inner
            .power_operations_ended
            .get_or_create(&PowerOperationLabels {
                driver: driver.to_owned(),
                direction: direction.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// Counts a power operation that ended on its own (it succeeded or failed) and records how
    /// long it took.
    pub fn power_operation_finished(
        &self,
        driver: &str,
        direction: &str,
        succeeded: bool,
        seconds: f64,
    ) {
        let result = if succeeded { "succeeded" } else { "failed" };
        self.power_operation_ended(driver, direction, result);
        self.inner
            .power_operation_duration
            .get_or_create(&DriverLabels {
                driver: driver.to_owned(),
                direction: direction.to_owned(),
            })
            .observe(seconds);
    }

    /// Records one boot: power-on to a Ready Node.
    pub fn boot_duration(&self, group: &str, seconds: f64) {
        self.pushed_group(group);
        self.inner
            .boot_duration
            .get_or_create(&GroupLabels {
                group: group.to_owned(),
            })
            .observe(seconds);
    }

    /// Reads the Node CRs (`machines`, e.g. the shared cache's store) and the meters' latest
    /// readings at every scrape: machines by phase, each machine's phase, power, energy and
    /// boots, each group's savings and cost, and whether each meter answers. Until this is
    /// called those series are absent.
    pub fn watch_fleet(&self, machines: Store<Machine>, meters: Readings) {
        self.watch_machines(move || machines.state(), meters);
    }

    /// [`watch_fleet`](Self::watch_fleet) over any list of Node CRs.
    fn watch_machines(
        &self,
        machines: impl Fn() -> Vec<Arc<Machine>> + Send + Sync + 'static,
        meters: Readings,
    ) {
        let mut source = self
            .inner
            .fleet
            .source
            .write()
            .unwrap_or_else(|p| p.into_inner());
        *source = Some(FleetSource {
            machines: Box::new(machines),
            meters,
        });
    }

    fn pushed_group(&self, group: &str) {
        let mut pushed = self
            .inner
            .pushed_groups
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !pushed.contains(group) {
            pushed.insert(group.to_owned());
        }
    }

    /// Removes the pushed per-group series (boot durations, NotReady counts, boot limits passed) of groups no Node
    /// CR names any more, when the fleet is watched.
    fn prune_groups(&self) {
        let Some(live) = self.inner.fleet.groups() else {
            return;
        };
        let mut pushed = self
            .inner
            .pushed_groups
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        pushed.retain(|g| {
            if live.contains(g) {
                return true;
            }
            let labels = GroupLabels { group: g.clone() };
            self.inner.boot_duration.remove(&labels);
            self.inner.node_not_ready.remove(&labels);
            self.inner.boot_limit_passed.remove(&labels);
            false
        });
    }

    /// Counts a reconcile that returned an error.
    pub fn reconcile_error(&self, controller: &str) {
        self.inner
            .reconcile_errors
            .get_or_create(&ControllerLabels {
                controller: controller.to_owned(),
            })
            .inc();
    }

    /// Counts the Node of a Ready machine going NotReady (one episode, not every reconcile).
    pub fn node_not_ready(&self, group: &str) {
        self.pushed_group(group);
        self.inner
            .node_not_ready
            .get_or_create(&GroupLabels {
                group: group.to_owned(),
            })
            .inc();
    }

    /// Counts a power-on that passed the machine's `wear.maxBootsPerDay`.
    pub fn boot_limit_passed(&self, group: &str) {
        self.pushed_group(group);
        self.inner
            .boot_limit_passed
            .get_or_create(&GroupLabels {
                group: group.to_owned(),
            })
            .inc();
    }

    /// Records one answered gRPC call (`code` as gRPC names it, e.g. `OK`, `Unavailable`).
    pub fn grpc_call(&self, method: &str, code: &str, seconds: f64) {
        let labels = GrpcLabels {
            method: method.to_owned(),
            code: code.to_owned(),
        };
        self.inner.grpc_calls.get_or_create(&labels).inc();
        self.inner
            .grpc_duration
            .get_or_create(&labels)
            .observe(seconds);
    }

    /// Whether this replica currently leads.
    pub fn set_leader(&self, leader: bool) {
        self.inner.leader.set(i64::from(leader));
    }

    /// Everything in OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        self.prune_groups();
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry) {
            // Writing into a String cannot fail; a failing label encoder would be a bug here.
            tracing::error!(error = %e, "encoding the metrics failed");
        }
        out
    }
}

/// What the fleet collector reads at scrape time.
struct FleetSource {
    machines: Box<dyn Fn() -> Vec<Arc<Machine>> + Send + Sync>,
    meters: Readings,
}

/// The series read from the cluster state at scrape time ([`Metrics::watch_fleet`]).
#[derive(Default)]
struct FleetCollector {
    source: RwLock<Option<FleetSource>>,
}

impl std::fmt::Debug for FleetCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetCollector").finish_non_exhaustive()
    }
}

type FloatGauge = Gauge<f64, AtomicU64>;
type FloatCounter = Counter<f64, AtomicU64>;

/// One scrape's worth of fleet series.
#[derive(Default)]
struct Fleet {
    machines: Family<PhaseLabels, Gauge>,
    phase: Family<MachinePhaseLabels, Gauge>,
    watts: Family<MachineSourceLabels, FloatGauge>,
    joules: Family<MachineLabels, FloatCounter>,
    boots: Family<MachineLabels, Counter>,
    meter_up: Family<MachineLabels, Gauge>,
    group_saved: Family<NamespacedGroupLabels, FloatGauge>,
    group_boots: Family<NamespacedGroupLabels, Gauge>,
    group_cost: Family<CurrencyLabels, FloatGauge>,
    group_cost_saved: Family<CurrencyLabels, FloatGauge>,
}

/// Joules in a watt-hour.
const JOULES_PER_WATT_HOUR: f64 = 3600.0;

impl Fleet {
    /// The series of `machines`, with each meter's state from `meter` (by `namespace/name`).
    fn of(machines: &[Arc<Machine>], meter: impl Fn(&str) -> Option<MeterState>) -> Fleet {
        let fleet = Fleet::default();
        // Machines by group and phase: every phase of every group present, zeros included, so
        // a panel shows a phase emptying rather than its series vanishing.
        let mut by_phase: BTreeMap<PhaseLabels, i64> = BTreeMap::new();
        for m in machines {
            let namespace = m.namespace().unwrap_or_default();
            let group = m.group().unwrap_or_default().to_owned();
            let name = m.name_any();
            let current = m.lifecycle().phase();
            for p in Phase::ALL {
                let labels = PhaseLabels {
                    namespace: namespace.clone(),
                    group: group.clone(),
                    phase: p.as_str().to_owned(),
                };
                *by_phase.entry(labels).or_default() += i64::from(p == current);
                fleet
                    .phase
                    .get_or_create(&MachinePhaseLabels {
                        namespace: namespace.clone(),
                        group: group.clone(),
                        machine: name.clone(),
                        phase: p.as_str().to_owned(),
                    })
                    .set(i64::from(p == current));
            }
            let machine = MachineLabels {
                namespace: namespace.clone(),
                group: group.clone(),
                machine: name.clone(),
            };
            let state = meter(&format!("{namespace}/{name}"));
            if m.spec.meter.is_some() {
                let up = state.as_ref().and_then(MeterState::reading).is_some();
                fleet.meter_up.get_or_create(&machine).set(i64::from(up));
            }
            let energy = m.status.as_ref().and_then(|s| s.energy.as_deref());
            // The draw now: the meter's current reading, else what the status last accounted.
            let watts = match state.as_ref().and_then(MeterState::reading) {
                Some(r) => Some((r.watts, "meter")),
                None => energy.and_then(|e| {
                    let source = match e.source {
                        Some(EnergySource::Meter) => "meter",
                        Some(EnergySource::Unknown) => return None,
                        Some(EnergySource::Model) | None => "model",
                    };
                    e.watts.map(|w| (w, source))
                }),
            };
            if let Some((w, source)) = watts.filter(|(w, _)| w.is_finite()) {
                fleet
                    .watts
                    .get_or_create(&MachineSourceLabels {
                        namespace: namespace.clone(),
                        group: group.clone(),
                        machine: name.clone(),
                        source: source.to_owned(),
                    })
                    .set(w);
            }
            let Some(e) = energy else {
                continue;
            };
            // The operator carries status.energy across restarts, so these only grow while the
            // machine exists.
            fleet
                .joules
                .get_or_create(&machine)
                .inc_by(finite(e.watt_hours).max(0.0) * JOULES_PER_WATT_HOUR);
            fleet.boots.get_or_create(&machine).inc_by(e.boots);
            let group_labels = NamespacedGroupLabels {
                namespace: namespace.clone(),
                group: group.clone(),
            };
            fleet
                .group_saved
                .get_or_create(&group_labels)
                .inc_by(finite(e.baseline_watt_hours - e.watt_hours) * JOULES_PER_WATT_HOUR);
            fleet
                .group_boots
                .get_or_create(&group_labels)
                .inc_by(i64::try_from(e.boots).unwrap_or(i64::MAX));
            if e.currency.is_some() || e.cost != 0.0 || e.baseline_cost != 0.0 {
                let labels = CurrencyLabels {
                    namespace: namespace.clone(),
                    group: group.clone(),
                    currency: e.currency.clone().unwrap_or_default(),
                };
                fleet
                    .group_cost
                    .get_or_create(&labels)
                    .inc_by(finite(e.cost));
                fleet
                    .group_cost_saved
                    .get_or_create(&labels)
                    .inc_by(finite(e.baseline_cost - e.cost));
            }
        }
        for (labels, n) in by_phase {
            fleet.machines.get_or_create(&labels).set(n);
        }
        fleet
    }

    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        fn one<M: EncodeMetric>(
            encoder: &mut DescriptorEncoder,
            name: &str,
            help: &str,
            unit: Option<&Unit>,
            metric: &M,
        ) -> Result<(), std::fmt::Error> {
            metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
        }
        let e = &mut encoder;
        let watts = Unit::Other("watts".to_owned());
        one(
            e,
            "machines",
            "Machines (Node CRs) by namespace, group and lifecycle phase",
            None,
            &self.machines,
        )?;
        one(
            e,
            "machine_phase",
            "1 for the machine's current lifecycle phase, 0 for the others",
            None,
            &self.phase,
        )?;
        one(
            e,
            "machine_power",
            "The machine's draw now: its meter's current reading (source=meter), else the draw status.energy last accounted (source=model, or meter when a reading was)",
            Some(&watts),
            &self.watts,
        )?;
        one(
            e,
            "machine_energy",
            "Energy the machine used since its accounting began (status.energy.wattHours x 3600)",
            Some(&Unit::Joules),
            &self.joules,
        )?;
        one(
            e,
            "machine_boots",
            "Power-ons of the machine since its accounting began (status.energy.boots)",
            None,
            &self.boots,
        )?;
        one(
            e,
            "machine_meter_up",
            "1 while the machine's meter (spec.meter) answers, 0 while it fails or before its first reading",
            None,
            &self.meter_up,
        )?;
        one(
            e,
            "group_energy_saved",
            "Energy the group's machines saved against always on at idle draw (sum of (baselineWattHours - wattHours) x 3600); falls when a machine leaves the group or works above idle",
            Some(&Unit::Joules),
            &self.group_saved,
        )?;
        one(
            e,
            "group_boots",
            "Power-ons of the group's current machines since their accounting began",
            None,
            &self.group_boots,
        )?;
        one(
            e,
            "group_energy_cost",
            "What the group's machines' energy cost, in the status currency (sum of status.energy.cost)",
            None,
            &self.group_cost,
        )?;
        one(
            e,
            "group_energy_cost_saved",
            "Cost saved against always on at idle draw, in the status currency (sum of baselineCost - cost)",
            None,
            &self.group_cost_saved,
        )?;
        Ok(())
    }
}

/// `v`, or 0 when it is not a number (a hand-edited status).
fn finite(v: f64) -> f64 {
    if v.is_finite() { v } else { 0.0 }
}

impl FleetCollector {
    /// The group labels of the current machines; `None` while nothing is watched.
    fn groups(&self) -> Option<HashSet<String>> {
        let source = self.source.read().unwrap_or_else(|p| p.into_inner());
        let source = source.as_ref()?;
        Some(
            (source.machines)()
                .iter()
                .map(|m| m.group().unwrap_or_default().to_owned())
                .collect(),
        )
    }
}

impl Collector for FleetCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let source = self.source.read().unwrap_or_else(|p| p.into_inner());
        let Some(source) = source.as_ref() else {
            return Ok(());
        };
        let machines = (source.machines)();
        Fleet::of(&machines, |key| source.meters.get(key)).encode(encoder)
    }
}

/// The methods of the CloudProvider service, so a metric label never takes an arbitrary
/// request path.
const GRPC_METHODS: [&str; 15] = [
    "NodeGroups",
    "NodeGroupForNode",
    "PricingNodePrice",
    "PricingPodPrice",
    "GPULabel",
    "GetAvailableGPUTypes",
    "Cleanup",
    "Refresh",
    "NodeGroupTargetSize",
    "NodeGroupIncreaseSize",
    "NodeGroupDeleteNodes",
    "NodeGroupDecreaseTargetSize",
    "NodeGroupNodes",
    "NodeGroupTemplateNodeInfo",
    "NodeGroupGetOptions",
];

/// `/package.Service/Method` → `Method` if it is one of ours, else `other`.
fn grpc_method(path: &str) -> &'static str {
    let method = path.rsplit('/').next().unwrap_or_default();
    GRPC_METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

/// gRPC status code names as grpc-go spells them (what CA's logs and most dashboards use).
fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// The gRPC code of a unary response. tonic puts the status of every handler error into the
/// response headers (a trailers-only response); a response without it carries `OK` in its
/// trailers (only a failure while encoding the body could change that, which unary CA calls
/// with in-memory messages do not hit).
fn response_code<B>(response: &http::Response<B>) -> &'static str {
    match response.headers().get("grpc-status") {
        Some(v) => grpc_code_name(tonic::Code::from_bytes(v.as_bytes())),
        None => "OK",
    }
}

/// Tower layer counting and timing every gRPC call into [`Metrics::grpc_call`]; applied around
/// the CloudProvider service where the server is built.
#[derive(Clone, Debug)]
pub struct GrpcMetricsLayer {
    metrics: Metrics,
}

impl GrpcMetricsLayer {
    pub fn new(metrics: Metrics) -> GrpcMetricsLayer {
        GrpcMetricsLayer { metrics }
    }
}

impl<S> tower_layer::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`GrpcMetricsLayer`] produces.
#[derive(Clone, Debug)]
pub struct GrpcMetrics<S> {
    inner: S,
    metrics: Metrics,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for GrpcMetrics<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for GrpcMetrics<S>
where
    S: tower_service::Service<
            http::Request<ReqBody>,
            Response = http::Response<ResBody>,
            Error = Infallible,
        >,
    S::Future: Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<ResBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let method = grpc_method(req.uri().path());
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let response = fut.await?;
            metrics.grpc_call(
                method,
                response_code(&response),
                started.elapsed().as_secs_f64(),
            );
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::api::EnergyCounters;

    /// The value of the sample line starting with `series ` in `text`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn counters_carry_their_labels() {
        let m = Metrics::new();
        m.power_operation_started("job", "on");
        m.power_operation_started("job", "on");
        m.power_operation_finished("job", "on", true, 42.0);
        m.power_operation_ended("job", "off", "cancelled");
        m.reconcile_error("machine");
        m.node_not_ready("lab/g");
        let t = m.encode();
        assert_eq!(
            sample(
                &t,
                r#"homelab_power_operations_started_total{driver="job",direction="on"}"#
            ),
            Some(2.0),
            "{t}"
        );
        assert_eq!(
            sample(
                &t,
                r#"homelab_power_operations_ended_total{driver="job",direction="on",result="succeeded"}"#
            ),
            Some(1.0),
            "{t}"
        );
        assert_eq!(
            sample(
                &t,
                r#"homelab_power_operations_ended_total{driver="job",direction="off",result="cancelled"}"#
            ),
            Some(1.0),
            "{t}"
        );
        assert_eq!(
            sample(
                &t,
                r#"homelab_power_operation_duration_seconds_count{driver="job",direction="on"}"#
            ),
            Some(1.0),
            "{t}"
        );
        assert_eq!(
            sample(
                &t,
                r#"homelab_reconcile_errors_total{controller="machine"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&t, r#"homelab_node_not_ready_total{group="lab/g"}"#),
            Some(1.0)
        );
        assert!(t.ends_with("# EOF\n"), "OpenMetrics ends with EOF: {t}");
    }

    /// Summing the outcome counter over `result` counts each operation at most once: the
    /// starts are a counter of their own.
    #[test]
    fn starts_and_outcomes_are_separate_counters() {
        let m = Metrics::new();
        m.power_operation_started("wakeOnLan", "on");
        m.power_operation_finished("wakeOnLan", "on", false, 3.0);
        let t = m.encode();
        let ended: Vec<&str> = t
            .lines()
            .filter(|l| l.starts_with("homelab_power_operations_ended_total{"))
            .collect();
        assert_eq!(
            ended,
            [
                r#"homelab_power_operations_ended_total{driver="wakeOnLan",direction="on",result="failed"} 1"#
            ],
            "{t}"
        );
        assert!(!t.contains(r#"result="started""#), "{t}");
    }

    #[test]
    fn build_info_names_the_version() {
        let t = Metrics::new().encode();
        let line = format!(
            r#"kubectl_homelab_build_info{{version="{}",commit="#,
            env!("CARGO_PKG_VERSION")
        );
        assert!(t.contains(&line), "{t}");
    }

    #[test]
    fn boot_durations_fall_into_minute_scale_buckets() {
        let m = Metrics::new();
        m.boot_duration("lab/g", 95.0);
        m.boot_duration("lab/g", 1500.0);
        let t = m.encode();
        assert_eq!(
            sample(
                &t,
                r#"homelab_boot_duration_seconds_bucket{le="60.0",group="lab/g"}"#
            ),
            Some(0.0),
            "{t}"
        );
        assert_eq!(
            sample(
                &t,
                r#"homelab_boot_duration_seconds_bucket{le="120.0",group="lab/g"}"#
            ),
            Some(1.0),
            "{t}"
        );
        assert_eq!(
            sample(
                &t,
                r#"homelab_boot_duration_seconds_bucket{le="1800.0",group="lab/g"}"#
            ),
            Some(2.0),
            "{t}"
        );
        assert_eq!(
            sample(&t, r#"homelab_boot_duration_seconds_count{group="lab/g"}"#),
            Some(2.0)
        );
    }

    fn with_energy(m: Machine, e: EnergyCounters) -> Arc<Machine> {
        let mut m = m;
        m.status.get_or_insert_with(Default::default).energy = Some(Box::new(e));
        Arc::new(m)
    }

    /// A fleet of `lab/a` (Ready, metered, with energy counters), `lab/b` (Off, no status
    /// energy) and `lab/c` (in group `h`, Booting, a meter that fails).
    fn fleet() -> (Vec<Arc<Machine>>, Readings) {
        let a = with_energy(
            Machine::test("a")
                .group("g")
                .phase(Phase::Ready)
                .spec_with(|s| {
                    s.meter = Some(Box::new(crate::operator::api::Meter::default()));
                })
                .build(),
            EnergyCounters {
                watt_hours: 2.0,
                baseline_watt_hours: 5.0,
                boots: 3,
                cost: 0.25,
                baseline_cost: 1.0,
                currency: Some("EUR".into()),
                watts: Some(40.0),
                source: Some(EnergySource::Model),
                ..EnergyCounters::default()
            },
        );
        let b = Arc::new(Machine::test("b").group("g").phase(Phase::Off).build());
        let c = with_energy(
            Machine::test("c")
                .group("h")
                .phase(Phase::Booting)
                .spec_with(|s| {
                    s.meter = Some(Box::new(crate::operator::api::Meter::default()));
                })
                .build(),
            EnergyCounters {
                watt_hours: 1.0,
                watts: Some(90.0),
                source: Some(EnergySource::Meter),
                ..EnergyCounters::default()
            },
        );
        let readings = Readings::default();
        let at = jiff::Timestamp::UNIX_EPOCH;
        readings.set(
            "lab/a",
            MeterState::Ok(crate::operator::meter::Reading {
                watts: 55.5,
                energy_wh: None,
                at,
            }),
        );
        readings.set(
            "lab/c",
            MeterState::Failed {
                error: "timed out".into(),
                since: at,
                last: None,
            },
        );
        (vec![a, b, c], readings)
    }

    #[test]
    fn the_fleet_is_read_at_scrape_time() {
        let m = Metrics::new();
        assert!(
            !m.encode().contains("homelab_machine_phase"),
            "nothing watched yet"
        );
        let (machines, readings) = fleet();
        let shared = Arc::new(Mutex::new(machines));
        let source = shared.clone();
        m.watch_machines(
            move || source.lock().map(|l| l.clone()).unwrap_or_default(),
            readings,
        );
        let t = m.encode();
        let expect = [
            (
                r#"homelab_machines{namespace="lab",group="g",phase="Ready"}"#,
                1.0,
            ),
            (
                r#"homelab_machines{namespace="lab",group="g",phase="Off"}"#,
                1.0,
            ),
            (
                r#"homelab_machines{namespace="lab",group="g",phase="Booting"}"#,
                0.0,
            ),
            (
                r#"homelab_machine_phase{namespace="lab",group="g",machine="a",phase="Ready"}"#,
                1.0,
            ),
            (
                r#"homelab_machine_phase{namespace="lab",group="g",machine="a",phase="Off"}"#,
                0.0,
            ),
            // The meter's current reading wins over the accounted draw.
            (
                r#"homelab_machine_power_watts{namespace="lab",group="g",machine="a",source="meter"}"#,
                55.5,
            ),
            // A failing meter: the draw status.energy last accounted, from a reading then.
            (
                r#"homelab_machine_power_watts{namespace="lab",group="h",machine="c",source="meter"}"#,
                90.0,
            ),
            (
                r#"homelab_machine_energy_joules_total{namespace="lab",group="g",machine="a"}"#,
                7200.0,
            ),
            (
                r#"homelab_machine_boots_total{namespace="lab",group="g",machine="a"}"#,
                3.0,
            ),
            (
                r#"homelab_machine_meter_up{namespace="lab",group="g",machine="a"}"#,
                1.0,
            ),
            (
                r#"homelab_machine_meter_up{namespace="lab",group="h",machine="c"}"#,
                0.0,
            ),
            (
                r#"homelab_group_energy_saved_joules{namespace="lab",group="g"}"#,
                10800.0,
            ),
            (r#"homelab_group_boots{namespace="lab",group="g"}"#, 3.0),
            (
                r#"homelab_group_energy_cost{namespace="lab",group="g",currency="EUR"}"#,
                0.25,
            ),
            (
                r#"homelab_group_energy_cost_saved{namespace="lab",group="g",currency="EUR"}"#,
                0.75,
            ),
        ];
        for (series, value) in expect {
            assert_eq!(sample(&t, series), Some(value), "{series} in\n{t}");
        }
        // No meter, no energy: no meter_up, no draw, no counters.
        assert!(
            !t.contains(r#"homelab_machine_meter_up{namespace="lab",group="g",machine="b"}"#),
            "{t}"
        );
        assert!(
            !t.contains(r#"homelab_machine_power_watts{namespace="lab",group="g",machine="b""#),
            "{t}"
        );
        assert!(
            !t.contains(
                r#"homelab_machine_energy_joules_total{namespace="lab",group="g",machine="b"}"#
            ),
            "{t}"
        );
        assert!(
            t.contains("# TYPE homelab_machine_energy_joules counter"),
            "{t}"
        );
        assert!(
            t.contains("# UNIT homelab_machine_energy_joules joules"),
            "{t}"
        );

        // Machine c deleted: its series and its group's go at the next scrape, pushed ones too.
        m.boot_duration("h", 60.0);
        m.node_not_ready("h");
        m.boot_duration("g", 60.0);
        assert!(
            m.encode()
                .contains(r#"homelab_boot_duration_seconds_count{group="h"}"#)
        );
        if let Ok(mut l) = shared.lock() {
            l.retain(|x| x.name_any() != "c");
        }
        let t = m.encode();
        assert!(!t.contains(r#"machine="c""#), "{t}");
        assert!(!t.contains(r#"group="h""#), "{t}");
        assert!(
            t.contains(r#"homelab_boot_duration_seconds_count{group="g"} 1"#),
            "{t}"
        );
    }

    #[test]
    fn grpc_calls_are_counted_and_timed_by_method_and_code() {
        let m = Metrics::new();
        m.grpc_call("NodeGroups", "OK", 0.0002);
        m.grpc_call("NodeGroupIncreaseSize", "Unavailable", 0.01);
        let t = m.encode();
        assert_eq!(
            sample(
                &t,
                r#"homelab_grpc_requests_total{method="NodeGroups",code="OK"}"#
            ),
            Some(1.0),
            "{t}"
        );
        assert_eq!(
            sample(
                &t,
                r#"homelab_grpc_request_duration_seconds_count{method="NodeGroupIncreaseSize",code="Unavailable"}"#
            ),
            Some(1.0),
            "{t}"
        );
    }

    #[test]
    fn method_labels_are_bounded_to_the_service_methods() {
        assert_eq!(
            grpc_method("/clusterautoscaler.cloudprovider.v1.externalgrpc.CloudProvider/Refresh"),
            "Refresh"
        );
        assert_eq!(grpc_method("/x.Y/DropTables"), "other");
        assert_eq!(grpc_method(""), "other");
    }

    #[test]
    fn response_code_reads_trailers_only_statuses() {
        let err: http::Response<()> = tonic::Status::unavailable("not the leader").into_http();
        assert_eq!(response_code(&err), "Unavailable");
        let ok = http::Response::new(());
        assert_eq!(response_code(&ok), "OK");
    }
}
