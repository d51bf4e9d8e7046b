//! The loop that runs the controllers only while this replica leads, and the shutdown flags it
//! and `operator::run` pass around.
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::watch;

use super::leader::Leadership;

/// Resolves when the controllers should stop gracefully (SIGTERM).
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A future resolving once `rx` reads `true` (or its sender is gone).
pub fn when_set(mut rx: watch::Receiver<bool>) -> Shutdown {
    Box::pin(async move { set(&mut rx).await })
}

/// Resolves once `rx` reads `true` (or its sender is gone), holding no borrow of the value.
pub async fn set(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// How long to wait before starting the controllers again after they failed.
const RESTART_DELAY: Duration = Duration::from_secs(5);

/// Runs `controllers` whenever `leadership` holds, until `stopping` reads `true`.
///
/// - Leadership lost: the controllers' future is dropped at once (no grace: another replica
///   may already act); they start again when leadership returns.
/// - `stopping`: the [`Shutdown`] given to them resolves, and they get `grace` to return
///   before being dropped.
/// - They return an error: logged, and started again after a pause if still leading.
pub async fn run_while_leader<F, Fut>(
    leadership: Leadership,
    mut stopping: watch::Receiver<bool>,
    grace: Duration,
    mut controllers: F,
) where
    F: FnMut(Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let stop_requested = |rx: &watch::Receiver<bool>| *rx.borrow();
    loop {
        tokio::select! {
            biased;
            () = set(&mut stopping) => return,
            () = leadership.acquired() => {}
        }
        if stop_requested(&stopping) {
            return;
        }
        tracing::info!("leading: starting the controllers");
        let mut run = std::pin::pin!(controllers(when_set(stopping.clone())));
        let failed = tokio::select! {
            biased;
            () = leadership.lost() => {
                tracing::warn!("leadership lost: controllers stopped");
                false
            }
            () = set(&mut stopping) => {
                match tokio::time::timeout(grace, &mut run).await {
                    Ok(Ok(())) => tracing::info!("controllers stopped"),
                    Ok(Err(e)) => tracing::warn!(error = format!("{e:#}"), "controllers stopped with an error"),
                    Err(_) => tracing::warn!("controllers did not stop within {grace:?}; dropped"),
                }
                return;
            }
            r = &mut run => match r {
                Ok(()) => {
                    tracing::warn!("the controllers returned while leading; starting them again");
                    true
                }
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "the controllers failed; starting them again");
                    true
                }
            }
        };
        if failed {
            tokio::select! {
                () = set(&mut stopping) => return,
                () = tokio::time::sleep(RESTART_DELAY) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records what the fake controllers saw: starts, graceful stops, drops.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<&'static str>>>);

    impl Log {
        fn push(&self, s: &'static str) {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push(s);
        }
        fn entries(&self) -> Vec<&'static str> {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
        }
    }

    struct OnDrop(Log);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.push("dropped");
        }
    }

    /// Controllers that run until their shutdown resolves.
    fn controllers(
        log: Log,
    ) -> impl FnMut(Shutdown) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> {
        move |shutdown| {
            let log = log.clone();
            Box::pin(async move {
                log.push("started");
                let guard = OnDrop(log.clone());
                shutdown.await;
                log.push("shut down");
                drop(guard);
                Ok(())
            })
        }
    }

    async fn until(log: &Log, n: usize) {
        while log.entries().len() < n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn controllers_run_only_while_leading_and_stop_at_once_on_loss() {
        let (lead, lead_rx) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let log = Log::default();
        let task = tokio::spawn(run_while_leader(
            Leadership::from_receiver(lead_rx),
            stop_rx,
            Duration::from_secs(10),
            controllers(log.clone()),
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(log.entries().is_empty(), "a follower runs no controllers");

        lead.send_replace(true);
        until(&log, 1).await;
        lead.send_replace(false);
        until(&log, 2).await;
        assert_eq!(
            log.entries(),
            ["started", "dropped"],
            "lost leadership drops the controllers without a graceful stop"
        );

        lead.send_replace(true);
        until(&log, 3).await;
        let _ = stop.send(true);
        if let Err(e) = task.await {
            panic!("{e}");
        }
        assert_eq!(
            log.entries(),
            ["started", "dropped", "started", "shut down", "dropped"],
            "SIGTERM lets them stop gracefully"
        );
    }
}
