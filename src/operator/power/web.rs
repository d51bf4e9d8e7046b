//! The small HTTP client of the Redfish and HTTP drivers: one request with a timeout, optional
//! basic or bearer auth, the answer's status and body (bounded). Built on the hyper + rustls
//! stack kube already uses. Errors name the method and URL (never credentials: a URL with
//! `user:password@` is refused) and say whether the server was unreachable or slow.
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::secret::{SecretValue, error_chain};

/// Largest answer read (BMC and smart-plug answers are a few kB).
const MAX_BODY: usize = 1 << 20;
/// Same-origin redirects followed per request.
pub const MAX_REDIRECTS: usize = 3;

/// Credentials sent with a request.
#[derive(Clone, Debug, Default)]
pub enum Auth {
    #[default]
    None,
    Basic {
        username: SecretValue,
        password: SecretValue,
    },
    Bearer(SecretValue),
}

/// An answer.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{what}: no answer within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    #[error("{what}: unreachable: {why}")]
    Unreachable { what: String, why: String },
    /// The server's certificate is not trusted: a setting to fix, not a passing fault.
    #[error("{what}: the server's certificate is not trusted ({why})")]
    Untrusted { what: String, why: String },
}

impl WebError {
    /// A request we could not build or a certificate we do not trust is a configuration
    /// problem of the driver at `field`; the rest may pass.
    pub fn into_power(self, field: &str) -> super::PowerError {
        match self {
            WebError::BadRequest(m) => super::PowerError::Config(format!("{field}: {m}")),
            e @ WebError::Untrusted { .. } => super::PowerError::Config(format!(
                "{e}: set {field}.caBundle to the CA that signed it, or {field}.insecureSkipVerify: \
                 true to skip verification"
            )),
            other => super::PowerError::Transient(other.to_string()),
        }
    }
}

/// A client for one driver call.
pub struct WebClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl WebClient {
    pub fn new(tls: rustls::ClientConfig, timeout: Duration) -> WebClient {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        WebClient {
            client: Client::builder(TokioExecutor::new()).build(https),
            timeout,
        }
    }

    /// Sends one request, following up to [`MAX_REDIRECTS`] redirects that stay on the same
    /// scheme, host and port (a BMC redirecting a system's name to its id); credentials never
    /// go to another origin (its redirect is returned as the answer).
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        auth: &Auth,
        body: Option<Bytes>,
    ) -> Result<Answer, WebError> {
        let mut method = method;
        let mut body = body;
        let mut uri: Uri = url
            .parse()
            .map_err(|e| WebError::BadRequest(format!("{method} {url}: not a URL ({e})")))?;
        for _ in 0..MAX_REDIRECTS {
            let (answer, location) = self
                .send_once(method.clone(), &uri, headers, auth, body.clone())
                .await?;
            let Some(next) = location.and_then(|l| same_origin(&uri, &l)) else {
                return Ok(answer);
            };
            // 303, and 301/302 after a POST, turn into a GET without body (as browsers do).
            if answer.status == 303 || (matches!(answer.status, 301 | 302) && method != Method::GET)
            {
                method = Method::GET;
                body = None;
            }
            uri = next;
        }
        self.send_once(method, &uri, headers, auth, body)
            .await
            .map(|(answer, _)| answer)
    }

    async fn send_once(
        &self,
        method: Method,
        uri: &Uri,
        headers: &[(&str, &str)],
        auth: &Auth,
        body: Option<Bytes>,
    ) -> Result<(Answer, Option<String>), WebError> {
        let what = format!("{method} {uri}");
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(WebError::BadRequest(format!(
                "{method} {}: the URL holds credentials; put them in the Secret instead",
                uri.host().unwrap_or_default()
            )));
        }
        let mut request = Request::builder().method(method).uri(uri.clone());
        for (name, value) in headers {
            let name = HeaderName::try_from(*name)
                .map_err(|_| WebError::BadRequest(format!("{what}: bad header name {name:?}")))?;
            let value = HeaderValue::try_from(*value).map_err(|_| {
                WebError::BadRequest(format!("{what}: bad value for header {name}"))
            })?;
            request = request.header(name, value);
        }
        if let Some(value) = auth_header(auth) {
            let mut value = HeaderValue::try_from(value).map_err(|_| {
                WebError::BadRequest(format!(
                    "{what}: the credentials hold characters a header cannot carry"
                ))
            })?;
            value.set_sensitive(true);
            request = request.header(AUTHORIZATION, value);
        }
        let request = request
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| WebError::BadRequest(format!("{what}: {e}")))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                let why = error_chain(&e);
                if why.contains("invalid peer certificate") {
                    WebError::Untrusted {
                        what: what.clone(),
                        why,
                    }
                } else {
                    WebError::Unreachable {
                        what: what.clone(),
                        why,
                    }
                }
            })?;
            let status = response.status().as_u16();
            let location = response.status().is_redirection().then(|| {
                response
                    .headers()
                    .get(http::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .map(str::to_owned)
            });
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| WebError::Unreachable {
                    what: what.clone(),
                    why: format!("reading the answer: {e}"),
                })?
                .to_bytes();
            Ok((Answer { status, body }, location.flatten()))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(WebError::Timeout {
                what,
                timeout: self.timeout,
            }),
        }
    }
}

/// `location` resolved against `from`, when it stays on `from`'s scheme, host and port.
fn same_origin(from: &Uri, location: &str) -> Option<Uri> {
    let next: Uri = if location.starts_with('/') {
        let mut parts = from.clone().into_parts();
        parts.path_and_query = Some(location.parse().ok()?);
        Uri::from_parts(parts).ok()?
    } else {
        location.parse().ok()?
    };
    (next.scheme() == from.scheme() && next.authority() == from.authority()).then_some(next)
}

fn auth_header(auth: &Auth) -> Option<String> {
    match auth {
        Auth::None => None,
        Auth::Basic { username, password } => {
            let raw = format!("{}:{}", username.expose(), password.expose());
            Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            ))
        }
        Auth::Bearer(token) => Some(format!("Bearer {}", token.expose())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_same_origin_redirects_are_followed() {
        let from: Uri = "https://bmc:8443/redfish/v1/Systems/r730"
            .parse()
            .unwrap_or_default();
        let next = same_origin(&from, "/redfish/v1/Systems/abc");
        assert_eq!(
            next.map(|u| u.to_string()),
            Some("https://bmc:8443/redfish/v1/Systems/abc".to_owned())
        );
        assert!(same_origin(&from, "https://elsewhere/redfish/v1").is_none());
        assert!(same_origin(&from, "http://bmc:8443/redfish/v1").is_none());
    }
}
