//! Prometheus metrics of the operator. (Interface placeholder on the operator branch; the
//! prometheus-client implementation lands from the runtime branch.)
#[derive(Debug, Default)]
pub struct Metrics;

impl Metrics {
    pub fn power_operation(&self, _driver: &str, _direction: &str, _result: &str) {}
    pub fn boot_duration(&self, _group: &str, _seconds: f64) {}
    pub fn reconcile_error(&self, _controller: &str) {}
    pub fn set_machines_by_phase(&self, _counts: &[(String, &'static str, i64)]) {}
}
