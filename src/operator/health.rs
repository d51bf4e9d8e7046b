//! The operator's admin HTTP server: `/healthz` (the process answers), `/readyz` (it can serve:
//! caches synced and, where mutations need it, leader) and `/metrics` (Prometheus).
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use super::metrics::{CONTENT_TYPE, Metrics};

/// Why the process is not ready; the text `/readyz` answers with.
pub type NotReady = String;

/// Decides readiness on each `/readyz` request.
pub type Readiness = Arc<dyn Fn() -> Result<(), NotReady> + Send + Sync>;

#[derive(Clone)]
struct AdminState {
    metrics: Metrics,
    readiness: Readiness,
}

/// The admin routes, for [`serve`] or a test.
pub fn router(metrics: Metrics, readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AdminState { metrics, readiness })
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    match (s.readiness)() {
        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics_text(State(s): State<AdminState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], s.metrics.encode())
}

#[derive(Debug, thiserror::Error)]
#[error("the health and metrics server on {address} failed: {source}")]
pub struct HealthError {
    pub address: String,
    #[source]
    pub source: std::io::Error,
}

/// Serves the admin routes on `listener` until `shutdown` resolves, then finishes the requests
/// in flight.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HealthError> {
    let address = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".to_owned());
    axum::serve(listener, router(metrics, readiness))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| HealthError { address, source })
}

/// A client for tests of the operator's HTTP servers.
#[cfg(test)]
pub(crate) mod test_http {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// One HTTP/1.1 GET over a real socket; returns the whole response.
    pub(crate) async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(e) => panic!("connect {addr}: {e}"),
        };
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        if let Err(e) = s.write_all(req.as_bytes()).await {
            panic!("write: {e}");
        }
        let mut out = String::new();
        if let Err(e) = s.read_to_string(&mut out).await {
            panic!("read: {e}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::test_http::get;

    #[tokio::test]
    async fn endpoints_answer_over_http() {
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("bind: {e}"),
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        };
        let ready = Arc::new(AtomicBool::new(false));
        let r = ready.clone();
        let readiness: Readiness = Arc::new(move || {
            if r.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("caches not synced".into())
            }
        });
        let metrics = Metrics::new();
        metrics.reconcile_error("machine");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, metrics, readiness, async {
            let _ = stopped.await;
        }));

        let h = get(addr, "/healthz").await;
        assert!(h.starts_with("HTTP/1.1 200"), "{h}");

        let r = get(addr, "/readyz").await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.contains("not ready: caches not synced"), "{r}");
        ready.store(true, Ordering::SeqCst);
        let r = get(addr, "/readyz").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");

        let m = get(addr, "/metrics").await;
        assert!(m.starts_with("HTTP/1.1 200"), "{m}");
        assert!(m.contains("application/openmetrics-text"), "{m}");
        assert!(
            m.contains(r#"homelab_reconcile_errors_total{controller="machine"} 1"#),
            "{m}"
        );

        let _ = stop.send(());
        match server.await {
            Ok(Ok(())) => {}
            other => panic!("server did not stop cleanly: {other:?}"),
        }
    }
}
