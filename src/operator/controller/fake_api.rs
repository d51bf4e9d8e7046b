//! A fake API server for the controllers' unit tests: the context's client is a mocked service
//! (`tower_test::mock`), and a test scripts the requests it expects a reconcile to make, in
//! order, with the answer to each. Events are accepted whenever they come and kept apart, so a
//! script lists only the requests that change what the test is about.
use std::time::Duration;

use http::{Method, Request, Response};
use http_body_util::BodyExt as _;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub(crate) type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// A client over a fake API server, and the server's end.
pub(crate) fn client() -> (kube::Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), ApiServer { handle })
}

/// One request a test expects, and the answer to it.
#[derive(Debug)]
pub(crate) struct Exchange {
    method: Method,
    path: String,
    status: u16,
    answer: Value,
    /// Answer with the request's own body (a create the API server accepts as sent).
    echo: bool,
}

/// Expect `method` on `path` (the URI's path, without its query); answered with `{}` unless
/// told otherwise.
pub(crate) fn expect(method: Method, path: &str) -> Exchange {
    Exchange {
        method,
        path: path.to_owned(),
        status: 200,
        answer: json!({}),
        echo: false,
    }
}

impl Exchange {
    /// Answer with `body` (status 200, or 201 for a POST).
    pub(crate) fn answer(mut self, body: Value) -> Exchange {
        if self.method == Method::POST {
            self.status = 201;
        }
        self.answer = body;
        self
    }

    /// Answer with the request's body (status 201): the object is created as sent.
    pub(crate) fn echo(mut self) -> Exchange {
        self.status = 201;
        self.echo = true;
        self
    }

    /// Answer with an API error of `code` (a `Status` object, as the API server sends).
    pub(crate) fn fails(mut self, code: u16, reason: &str) -> Exchange {
        self.status = code;
        self.answer = status_body(code, reason);
        self
    }
}

fn status_body(code: u16, reason: &str) -> Value {
    json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
            "message": reason, "code": code })
}

/// A request as the server received it.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub method: Method,
    /// Path and query.
    pub uri: String,
    /// The JSON body (`null` when empty).
    pub body: Value,
}

impl Seen {
    /// The body at a JSON pointer (`/spec/unschedulable`), `null` when absent.
    pub(crate) fn at(&self, pointer: &str) -> &Value {
        self.body.pointer(pointer).unwrap_or(&Value::Null)
    }
}

/// What the server saw, once the test is done with it.
#[derive(Debug, Default)]
pub(crate) struct Log {
    /// The scripted requests, in order.
    pub requests: Vec<Seen>,
    /// Event writes (events.k8s.io), in order.
    pub events: Vec<Seen>,
    /// Requests that did not match the script, and scripted ones never made.
    pub problems: Vec<String>,
}

impl Log {
    /// The reasons of the Events written, in order.
    pub(crate) fn event_reasons(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|e| e.at("/reason").as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

/// The server's end of the mocked client.
pub(crate) struct ApiServer {
    handle: Handle,
}

/// A running script: [`finish`](Self::finish) it once the code under test returned.
pub(crate) struct Serving {
    done: oneshot::Sender<()>,
    task: JoinHandle<Log>,
}

impl ApiServer {
    /// Answers requests by `script`, in order, until finished. A request that is not the next
    /// one scripted is answered 500 and recorded as a problem.
    pub(crate) fn serve(mut self, script: Vec<Exchange>) -> Serving {
        let (done, mut finished) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut log = Log::default();
            let mut script = script.into_iter();
            loop {
                let (request, respond) = tokio::select! {
                    r = self.handle.next_request() => match r {
                        Some(r) => r,
                        None => break,
                    },
                    _ = &mut finished => break,
                };
                let (parts, body) = request.into_parts();
                let bytes = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let seen = Seen {
                    method: parts.method.clone(),
                    uri: parts.uri.to_string(),
                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                };
                let (status, answer) = if parts.uri.path().starts_with("/apis/events.k8s.io/") {
                    let answer = seen.body.clone();
                    log.events.push(seen);
                    (201, answer)
                } else {
                    match script.next() {
                        Some(e) if e.method == parts.method && e.path == parts.uri.path() => {
                            let answer = if e.echo { seen.body.clone() } else { e.answer };
                            log.requests.push(seen);
                            (e.status, answer)
                        }
                        next => {
                            log.problems.push(format!(
                                "unexpected {} {} (the script expected {next:?}); body {}",
                                seen.method, seen.uri, seen.body
                            ));
                            (500, status_body(500, "not in the test's script"))
                        }
                    }
                };
                let response = Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&answer).unwrap_or_default()));
                match response {
                    Ok(r) => respond.send_response(r),
                    Err(e) => log.problems.push(format!("building a response: {e}")),
                }
            }
            log.problems
                .extend(script.map(|e| format!("never requested: {} {}", e.method, e.path)));
            log
        });
        Serving { done, task }
    }
}

impl Serving {
    /// Stops serving and returns what the server saw. Panics (the test fails) if the script
    /// was not followed.
    pub(crate) async fn finish(self) -> Log {
        // The server may have stopped on its own (every client dropped).
        let _ = self.done.send(());
        let log = tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .unwrap_or_else(|_| panic!("the fake API server did not stop"))
            .unwrap_or_else(|e| panic!("the fake API server failed: {e}"));
        assert!(
            log.problems.is_empty(),
            "the requests differ from the script:\n{}\nrequests made: {:#?}",
            log.problems.join("\n"),
            log.requests
                .iter()
                .map(|s| format!("{} {}", s.method, s.uri))
                .collect::<Vec<_>>()
        );
        log
    }
}
