//! A proxy in front of the Redfish emulator that swallows `GracefulShutdown`, like an OS that
//! ignores the ACPI power button (the emulator honours every reset), to make the Redfish driver
//! escalate to `ForceOff`.
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::server::{self, Received};
use crate::support::pki::{Ca, CertPair};

/// A proxy in front of the BMC that swallows GracefulShutdown (answers 204, forwards nothing),
/// like an OS that ignores the ACPI power button, and records every ResetType it sees.
pub async fn ignoring_graceful_shutdown(
    upstream: String,
    tls: &CertPair,
    ca: &Ca,
) -> anyhow::Result<(server::Server, Arc<Mutex<Vec<String>>>)> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let client = upstream_client(ca)?;
    let log = seen.clone();
    let proxy = server::serve(Some(tls), move |req: Received| {
        let client = client.clone();
        let upstream = upstream.clone();
        let log = log.clone();
        async move {
            let reset = serde_json::from_slice::<serde_json::Value>(&req.body)
                .ok()
                .and_then(|v| v["ResetType"].as_str().map(str::to_owned));
            if let Some(reset) = &reset
                && let Ok(mut seen) = log.lock()
            {
                seen.push(reset.clone());
            }
            if reset.as_deref() == Some("GracefulShutdown") {
                return server::answer(204, "");
            }
            forward(&client, &upstream, req).await
        }
    })
    .await?;
    Ok((proxy, seen))
}

/// A proxy in front of the BMC that answers the first reset of `reset_type` with 503 (a BMC busy
/// or a request lost on the way, which the driver takes as transient) and forwards everything
/// else; records every ResetType it sees, the refused one too.
pub async fn refusing_first(
    upstream: String,
    reset_type: &'static str,
    tls: &CertPair,
    ca: &Ca,
) -> anyhow::Result<(server::Server, Arc<Mutex<Vec<String>>>)> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let client = upstream_client(ca)?;
    let log = seen.clone();
    let proxy = server::serve(Some(tls), move |req: Received| {
        let client = client.clone();
        let upstream = upstream.clone();
        let log = log.clone();
        async move {
            let reset = serde_json::from_slice::<serde_json::Value>(&req.body)
                .ok()
                .and_then(|v| v["ResetType"].as_str().map(str::to_owned));
            let first = match (&reset, log.lock()) {
                (Some(reset), Ok(mut seen)) => {
                    let first = *reset == reset_type && !seen.iter().any(|s| s == reset_type);
                    seen.push(reset.clone());
                    first
                }
                _ => false,
            };
            if first {
                return server::answer(503, "");
            }
            forward(&client, &upstream, req).await
        }
    })
    .await?;
    Ok((proxy, seen))
}

type Upstream = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<Bytes>,
>;

fn upstream_client(ca: &Ca) -> anyhow::Result<Upstream> {
    let tls = kubectl_homelab::operator::power::tls::client_config(
        kubectl_homelab::operator::api::TlsSettings {
            ca_bundle: Some(&ca.cert_pem),
            insecure_skip_verify: false,
        },
        "proxy",
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https),
    )
}

async fn forward(
    client: &Upstream,
    upstream: &str,
    req: Received,
) -> hyper::Response<http_body_util::Full<Bytes>> {
    use http_body_util::BodyExt as _;
    let mut builder = hyper::Request::builder()
        .method(req.method)
        .uri(format!("{upstream}{}", req.path_and_query));
    for (k, v) in &req.headers {
        if k != http::header::HOST {
            builder = builder.header(k, v);
        }
    }
    let Ok(request) = builder.body(http_body_util::Full::new(req.body)) else {
        return server::answer(500, "bad request to forward");
    };
    match client.request(request).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            // The emulator redirects a system's name to its id: keep its Location.
            let location = resp.headers().get(http::header::LOCATION).cloned();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let mut answer = server::answer(status, body);
            if let Some(l) = location {
                answer.headers_mut().insert(http::header::LOCATION, l);
            }
            answer
        }
        Err(e) => server::answer(502, format!("proxy: {e}")),
    }
}
