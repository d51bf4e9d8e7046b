//! A Redfish mockup served by `sushy-static` (of the pinned sushy-tools in the venv
//! [`super::sushy::venv`] installs): the DMTF mockup layout, one `index.json` per resource, read
//! from disk at every GET. The sushy emulator itself serves no Chassis power (its Chassis has
//! only `Thermal`), so the meter tests read power from a mockup, copied from
//! tests/data/redfish-meter-mockup into a temporary directory where a test rewrites readings.
//!
//! `sushy-static` checks no credentials, and over TLS it ends its HTTP/1.0 answers by closing
//! the socket without a TLS `close_notify`, which rustls rightly takes as a truncated answer. So
//! it serves plain HTTP on loopback, behind a front that does what a BMC does: TLS, and basic
//! auth checked on every request (401 with a Redfish error otherwise).
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};

use super::server::{self, Received, Server};
use super::sushy::{venv, wait_listening};
use crate::support::pki::CertPair;
use crate::support::process::{Managed, free_ports};

/// A running mockup server, stopped on drop.
pub struct RedfishMockup {
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    dir: tempfile::TempDir,
    _front: Server,
    _process: Managed,
}

impl RedfishMockup {
    /// Serves a copy of tests/data/`mockup` over TLS with `tls` to basic-auth `user`: `Ok(None)`
    /// when sushy-tools is not available and not required.
    pub async fn start(
        mockup: &str,
        tls: &CertPair,
        user: (&str, &str),
    ) -> anyhow::Result<Option<RedfishMockup>> {
        let Some(venv) = tokio::task::spawn_blocking(venv).await?? else {
            return Ok(None);
        };
        let dir = tempfile::tempdir()?;
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(mockup);
        copy_tree(&source, &dir.path().join("mockup"))?;
        let port = free_ports(1)?[0];
        let path = |p: &Path| p.display().to_string();
        let args = vec![
            "--interface".to_owned(),
            "127.0.0.1".to_owned(),
            "--port".to_owned(),
            port.to_string(),
            "--mockup-files".to_owned(),
            path(&dir.path().join("mockup")),
        ];
        let mut process = Managed::spawn(
            "sushy-static",
            &venv.join("bin/sushy-static"),
            &args,
            &dir.path().join("sushy-static.log"),
        )?;
        wait_listening(&mut process, port).await?;
        let front = front(tls, port, user).await?;
        Ok(Some(RedfishMockup {
            url: front.url.clone(),
            dir,
            _front: front,
            _process: process,
        }))
    }

    /// The file of resource `path` (`/redfish/v1/Chassis/1U/Power`).
    fn file(&self, path: &str) -> PathBuf {
        let rel = path.trim_start_matches("/redfish/v1").trim_matches('/');
        self.dir.path().join("mockup").join(rel).join("index.json")
    }

    /// Sets field `pointer` (JSON Pointer, `/PowerWatts/Reading`) of resource `path` to `value`.
    pub fn set(&self, path: &str, pointer: &str, value: serde_json::Value) -> anyhow::Result<()> {
        let file = self.file(path);
        let text = std::fs::read_to_string(&file).with_context(|| file.display().to_string())?;
        let mut json: serde_json::Value = serde_json::from_str(&text)?;
        let slot = json
            .pointer_mut(pointer)
            .with_context(|| format!("{path} has no {pointer}"))?;
        *slot = value;
        // Replaced whole, so a GET never reads half a file.
        let tmp = file.with_extension("json.tmp");
        std::fs::write(&tmp, json.to_string())?;
        std::fs::rename(&tmp, &file)?;
        Ok(())
    }
}

/// TLS and basic auth in front of `sushy-static` on loopback `port`.
async fn front(tls: &CertPair, port: u16, user: (&str, &str)) -> anyhow::Result<Server> {
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{}:{}", user.0, user.1)
        )
    );
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    server::serve(Some(tls), move |req: Received| {
        let (basic, client) = (basic.clone(), client.clone());
        async move {
            let auth = req.headers.get(http::header::AUTHORIZATION);
            if auth.and_then(|a| a.to_str().ok()) != Some(basic.as_str()) {
                return server::answer(
                    401,
                    r#"{"error": {"code": "Base.1.0.GeneralError", "message": "unauthorized",
                        "@Message.ExtendedInfo": [{"MessageId": "Base.1.8.AccessDenied",
                        "Message": "While accessing the resource, the service denied access."}]}}"#,
                );
            }
            let Ok(request) = hyper::Request::builder()
                .method(req.method)
                .uri(format!("http://127.0.0.1:{port}{}", req.path_and_query))
                .body(Full::new(req.body))
            else {
                return server::answer(500, "");
            };
            match client.request(request).await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let body = resp.into_body().collect().await.map(|b| b.to_bytes());
                    server::answer(status, body.unwrap_or_default())
                }
                Err(e) => server::answer(502, format!("sushy-static: {e}")),
            }
        }
    })
    .await
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| from.display().to_string())? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
