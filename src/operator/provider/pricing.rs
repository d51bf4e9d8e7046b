//! The price of a pod, for CA's `PricingPodPrice` call. CA's `price` expander
//! (`expander/price/price.go`, `priceBased.BestOptions`) drops a whole scale-up option when a pod's price fails, and divides
//! by the pods' price plus the price of its stabilization pod, so every answer is > 0.
//!
//! A pod costs `spec.pricing.podRate` per hour when a machine sets one (the lowest set), else the
//! share of the cheapest machine it would take (its CPU or memory request against that machine's
//! capacity, whichever is larger) times that machine's hourly rate. Pure and deterministic.
use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_pb::api::core::v1 as pb;
use k8s_pb::apimachinery::pkg::api::resource::Quantity;
use prost::Message;

use super::error::ProviderError;
use super::inventory::{Inventory, MachineView};
use crate::operator::interned::Strings;

/// The smallest price answered: a pod with no requests in a homelab without prices still costs
/// something, so CA's ratio stays defined.
pub const MIN_POD_PRICE: f64 = 1e-9;

/// What a pod asks for, in cores and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PodRequests {
    pub cpu: f64,
    pub memory: f64,
}

/// Kubernetes quantities are parsed by the crate's one parser, shared with the simulator.
pub use crate::quantity::parse_quantity;

fn sum_into(total: &mut PodRequests, requests: &BTreeMap<String, Quantity>) {
    let get = |k: &str| {
        requests
            .get(k)
            .and_then(|q| q.string.as_deref())
            .and_then(parse_quantity)
            .unwrap_or(0.0)
    };
    total.cpu += get("cpu");
    total.memory += get("memory");
}

impl PodRequests {
    /// The effective requests the scheduler uses: the containers' sum or the largest init
    /// container, whichever is larger, plus the pod overhead.
    pub fn of(pod: &pb::Pod) -> PodRequests {
        let Some(spec) = pod.spec.as_ref() else {
            return PodRequests::default();
        };
        let mut sum = PodRequests::default();
        for c in &spec.containers {
            if let Some(r) = &c.resources {
                sum_into(&mut sum, &r.requests);
            }
        }
        for c in &spec.init_containers {
            let mut one = PodRequests::default();
            if let Some(r) = &c.resources {
                sum_into(&mut one, &r.requests);
            }
            sum.cpu = sum.cpu.max(one.cpu);
            sum.memory = sum.memory.max(one.memory);
        }
        sum_into(&mut sum, &spec.overhead);
        sum
    }

    /// Decodes CA's `pod_bytes` (a protobuf `k8s.io.api.core.v1.Pod`, no envelope).
    pub fn decode(bytes: &[u8]) -> Result<PodRequests, ProviderError> {
        pb::Pod::decode(bytes)
            .map(|p| PodRequests::of(&p))
            .map_err(|e| ProviderError::BadPod {
                message: e.to_string(),
            })
    }
}

/// The capacity CA would see for the machine: its registered Node's allocatable, else what it
/// looked like when last seen, else its declared capacity.
fn best_capacity<'a>(inv: &'a Inventory, m: &'a MachineView) -> Option<Strings> {
    let non_empty = |c: &'a Strings| (!c.is_empty()).then(|| c.clone());
    inv.node(&m.provider_id)
        .and_then(|n| non_empty(&n.allocatable).or_else(|| non_empty(&n.capacity)))
        .or_else(|| {
            m.last_seen
                .as_ref()
                .and_then(|s| non_empty(&s.allocatable).or_else(|| non_empty(&s.capacity)))
        })
        .or_else(|| (!m.hints.capacity.is_empty()).then(|| m.hints.capacity.iter().collect()))
}

/// The price of a pod over `[start, end)`; always > 0.
pub fn pod_price(
    inv: &Inventory,
    pod: &PodRequests,
    start: Timestamp,
    end: Timestamp,
) -> Result<f64, ProviderError> {
    if end < start {
        return Err(ProviderError::InvalidWindow {
            node: "pod".to_owned(),
            start: start.to_string(),
            end: end.to_string(),
        });
    }
    let hours = end.duration_since(start).as_secs_f64() / 3600.0;
    let members = || inv.groups().flat_map(|g| g.machines.iter());
    let pod_rate = members()
        .filter_map(|m| m.pod_rate)
        .filter(|r| *r > 0.0)
        .min_by(f64::total_cmp);
    let per_hour = match pod_rate {
        Some(rate) => rate,
        None => {
            // The cheapest priced machine (ties: by name), else any machine: its share.
            let cheapest = members()
                .filter(|m| m.hourly_rate.is_some())
                .min_by(|a, b| {
                    let (x, y) = (a.hourly_rate.unwrap_or(0.0), b.hourly_rate.unwrap_or(0.0));
                    x.total_cmp(&y).then_with(|| a.key.cmp(&b.key))
                });
            match cheapest {
                Some(m) => {
                    let share = best_capacity(inv, m).map_or(0.0, |cap| {
                        let frac = |key: &str, want: f64| {
                            cap.get(key)
                                .and_then(parse_quantity)
                                .filter(|c| *c > 0.0)
                                .map_or(0.0, |c| want / c)
                        };
                        frac("cpu", pod.cpu).max(frac("memory", pod.memory))
                    });
                    share * m.hourly_rate.unwrap_or(0.0)
                }
                None => 0.0,
            }
        }
    };
    let price = per_hour * hours;
    Ok(if price.is_finite() && price > MIN_POD_PRICE {
        price
    } else {
        MIN_POD_PRICE
    })
}
