//! Prometheus metrics of the operator (prometheus-client, OpenMetrics text on `/metrics`).
//!
//! One [`Metrics`] handle per process, cheap to clone; controllers, power drivers and the gRPC
//! layer ([`GrpcMetricsLayer`]) record into it, the health server encodes it.
use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

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
struct DriverLabels {
    driver: String,
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    group: String,
    phase: String,
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
    power_operations: Family<PowerOperationLabels, Counter>,
    power_operation_duration: HistogramFamily<DriverLabels>,
    boot_duration: HistogramFamily<GroupLabels>,
    machines: Family<PhaseLabels, Gauge>,
    /// The (group, phase) series set last time, so series that disappeared are removed.
    machines_set: Mutex<HashSet<PhaseLabels>>,
    reconcile_errors: Family<ControllerLabels, Counter>,
    node_not_ready: Family<GroupLabels, Counter>,
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
        let mut registry = Registry::with_prefix(PREFIX);
        let power_operations = Family::<PowerOperationLabels, Counter>::default();
        registry.register(
            "power_operations",
            "Power operations by driver, direction (on|off) and result (started|succeeded|failed|cancelled)",
            power_operations.clone(),
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
        let machines = Family::<PhaseLabels, Gauge>::default();
        registry.register(
            "machines",
            "Machines (Node CRs) by group and lifecycle phase",
            machines.clone(),
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
        Metrics {
            inner: Arc::new(Inner {
                registry,
                power_operations,
                power_operation_duration,
                boot_duration,
                machines,
                machines_set: Mutex::new(HashSet::new()),
                reconcile_errors,
                node_not_ready,
                grpc_calls,
                grpc_duration,
                leader,
            }),
        }
    }

    /// Counts one power operation event: `result` is `started`, `succeeded`, `failed` or
    /// `cancelled`; `direction` is `on` or `off`.
    pub fn power_operation(&self, driver: &str, direction: &str, result: &str) {
        self.inner
            .power_operations
            .get_or_create(&PowerOperationLabels {
                driver: driver.to_owned(),
                direction: direction.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// Records how long a finished power operation took.
    pub fn power_operation_duration(&self, driver: &str, direction: &str, seconds: f64) {
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
        self.inner
            .boot_duration
            .get_or_create(&GroupLabels {
                group: group.to_owned(),
            })
            .observe(seconds);
    }

    /// Replaces the machines-by-phase gauge with `counts` (group, phase, count): series not in
    /// `counts` (a deleted group, a phase no machine is in any more) are removed.
    pub fn set_machines_by_phase(&self, counts: &[(String, &'static str, i64)]) {
        let mut previous = self
            .inner
            .machines_set
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut now = HashSet::with_capacity(counts.len());
        for (group, phase, n) in counts {
            let labels = PhaseLabels {
                group: group.clone(),
                phase: (*phase).to_owned(),
            };
            self.inner.machines.get_or_create(&labels).set(*n);
            now.insert(labels);
        }
        for stale in previous.difference(&now) {
            self.inner.machines.remove(stale);
        }
        *previous = now;
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
        self.inner
            .node_not_ready
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
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry) {
            // Writing into a String cannot fail; a failing label encoder would be a bug here.
            tracing::error!(error = %e, "encoding the metrics failed");
        }
        out
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

    /// The value of the sample line starting with `series ` in `text`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn counters_carry_their_labels() {
        let m = Metrics::new();
        m.power_operation("job", "on", "started");
        m.power_operation("job", "on", "started");
        m.power_operation("job", "off", "failed");
        m.reconcile_error("machine");
        m.node_not_ready("lab/g");
        let t = m.encode();
        assert_eq!(
            sample(
                &t,
                r#"homelab_power_operations_total{driver="job",direction="on",result="started"}"#
            ),
            Some(2.0),
            "{t}"
        );
        assert_eq!(
            sample(
                &t,
                r#"homelab_power_operations_total{driver="job",direction="off",result="failed"}"#
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

    #[test]
    fn machines_by_phase_drops_series_that_disappeared() {
        let m = Metrics::new();
        m.set_machines_by_phase(&[
            ("lab/a".into(), "Ready", 2),
            ("lab/a".into(), "Booting", 1),
            ("lab/b".into(), "Off", 3),
        ]);
        m.set_machines_by_phase(&[("lab/a".into(), "Ready", 3)]);
        let t = m.encode();
        assert_eq!(
            sample(&t, r#"homelab_machines{group="lab/a",phase="Ready"}"#),
            Some(3.0),
            "{t}"
        );
        assert!(!t.contains(r#"phase="Booting""#), "{t}");
        assert!(!t.contains(r#"group="lab/b""#), "{t}");
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
