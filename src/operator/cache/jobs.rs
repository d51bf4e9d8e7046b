//! The watch on the operator's own power Jobs (selected by label), trimmed to what the machine
//! controller reads of them: their labels and status. Only `run-operator` starts it.
use futures::{Stream, StreamExt as _};
use k8s_openapi::api::batch::v1::Job;
use kube::Client;
use kube::ResourceExt as _;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};

use super::Scope;
use crate::operator::api::Machine;
use crate::operator::power::job::{MACHINE_LABEL, job_selector};

/// Starts the Job watch: its store, and a stream naming the Node CR each changed Job acts for
/// (to queue that machine). The watch runs while the stream is polled.
pub fn watch(
    client: Client,
    scope: &Scope,
) -> (
    Store<Job>,
    impl Stream<Item = ObjectRef<Machine>> + Send + 'static,
) {
    let (reader, writer) = reflector::store();
    let config = watcher::Config::default().labels(&job_selector());
    let stream = watcher(scope.api::<Job>(client), config)
        .default_backoff()
        .modify(|j: &mut Job| {
            j.metadata.managed_fields = None;
            j.spec = None;
        })
        .reflect(writer)
        .applied_objects()
        .filter_map(|r| async move {
            match r {
                Ok(job) => {
                    let name = job.labels().get(MACHINE_LABEL)?.clone();
                    Some(ObjectRef::new(&name).within(&job.namespace()?))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "power Job watch failed; retrying with backoff");
                    None
                }
            }
        });
    (reader, stream)
}
