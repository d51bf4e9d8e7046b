//! Stand-ins for the meters homelab owners have on their sockets, each answering the JSON its
//! device documents, with a power the test sets:
//!
//! - Shelly Gen2 `GET /rpc/Switch.GetStatus?id=0`: `apower` (W), `aenergy.total` (Wh).
//! - Shelly Gen1 `GET /status`: `meters[0].power` (W; its `total` is in watt-minutes).
//! - Tasmota `GET /cm?cmnd=Status%208`: `StatusSNS.ENERGY.Power` (W), `.Total` (kWh).
//! - Home Assistant `GET /api/states/<entity>` with `Authorization: Bearer <token>`: `state` as
//!   a string, the unit in `attributes.unit_of_measurement` (401 `401: Unauthorized` otherwise).
//!
//! Plain HTTP on loopback, as these devices serve on a LAN. A stand-in can be stopped (its port
//! refuses connections) and started again on the same port, be made slow, and counts the
//! requests it answered.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::response::{IntoResponse as _, Response};
use http::StatusCode;
use serde_json::json;
use tokio::net::TcpListener;

/// Which device a stand-in plays.
#[derive(Clone, Debug, PartialEq)]
pub enum Device {
    ShellyGen2,
    ShellyGen1,
    Tasmota,
    /// Entity `sensor.<name>`, answering only `token`, reporting in `unit` (`W` or `kW`).
    HomeAssistant {
        entity: String,
        token: String,
        unit: String,
    },
}

impl Device {
    /// The path (and query) of the device's reading.
    pub fn path(&self) -> String {
        match self {
            Device::ShellyGen2 => "/rpc/Switch.GetStatus?id=0".to_owned(),
            Device::ShellyGen1 => "/status".to_owned(),
            Device::Tasmota => "/cm?cmnd=Status%208".to_owned(),
            Device::HomeAssistant { entity, .. } => format!("/api/states/{entity}"),
        }
    }
}

/// What the device measures now.
#[derive(Clone, Debug, Default)]
struct Measured {
    watts: f64,
    /// Energy counter in Wh (reported in the device's own unit).
    energy_wh: f64,
    delay: Duration,
}

/// A running stand-in; stopped on drop.
pub struct MeterServer {
    pub device: Device,
    addr: SocketAddr,
    measured: Arc<Mutex<Measured>>,
    requests: Arc<AtomicUsize>,
    authorization: Arc<Mutex<Vec<String>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl MeterServer {
    /// Starts a stand-in for `device` measuring `watts` and `energy_wh`.
    pub async fn start(device: Device, watts: f64, energy_wh: f64) -> anyhow::Result<MeterServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let mut s = MeterServer {
            device,
            addr: listener.local_addr()?,
            measured: Arc::new(Mutex::new(Measured {
                watts,
                energy_wh,
                delay: Duration::ZERO,
            })),
            requests: Arc::default(),
            authorization: Arc::default(),
            task: None,
        };
        s.serve(listener);
        Ok(s)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL of the device's reading.
    pub fn url(&self) -> String {
        format!("{}{}", self.base(), self.device.path())
    }

    pub fn set(&self, watts: f64, energy_wh: f64) {
        if let Ok(mut m) = self.measured.lock() {
            m.watts = watts;
            m.energy_wh = energy_wh;
        }
    }

    /// Every answer waits `delay` first.
    pub fn slow(&self, delay: Duration) {
        if let Ok(mut m) = self.measured.lock() {
            m.delay = delay;
        }
    }

    /// Requests answered (or being answered) so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// The `Authorization` headers received.
    pub fn authorization(&self) -> Vec<String> {
        self.authorization
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }

    /// The port refuses connections from now on.
    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Serves again on the same port.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let listener = TcpListener::bind(self.addr).await?;
        self.serve(listener);
        Ok(())
    }

    fn serve(&mut self, listener: TcpListener) {
        let (device, measured, requests, authorization) = (
            self.device.clone(),
            self.measured.clone(),
            self.requests.clone(),
            self.authorization.clone(),
        );
        let app = Router::new().fallback(move |req: Request| {
            let (device, measured, requests, authorization) = (
                device.clone(),
                measured.clone(),
                requests.clone(),
                authorization.clone(),
            );
            async move {
                requests.fetch_add(1, Ordering::SeqCst);
                let auth = req
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                if let (Some(a), Ok(mut log)) = (&auth, authorization.lock()) {
                    log.push(a.clone());
                }
                let m = measured.lock().map(|m| m.clone()).unwrap_or_default();
                tokio::time::sleep(m.delay).await;
                let path = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_default();
                answer(&device, &path, auth.as_deref(), &m)
            }
        });
        self.task = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }
}

impl Drop for MeterServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn json_answer(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The device's documented answer at `path`.
fn answer(device: &Device, path: &str, auth: Option<&str>, m: &Measured) -> Response {
    if path != device.path() {
        return (StatusCode::NOT_FOUND, "Not Found").into_response();
    }
    let w = m.watts;
    match device {
        Device::ShellyGen2 => json_answer(
            StatusCode::OK,
            json!({
                "id": 0, "source": "init", "output": true, "apower": w, "voltage": 230.1,
                "freq": 50.0, "current": w / 230.1, "pf": 0.95,
                "aenergy": {"total": m.energy_wh, "by_minute": [0.0, 0.0, 0.0],
                            "minute_ts": 1764979200},
                "temperature": {"tC": 41.3, "tF": 106.3}
            }),
        ),
        Device::ShellyGen1 => json_answer(
            StatusCode::OK,
            json!({
                "wifi_sta": {"connected": true, "ssid": "lab", "ip": "192.168.1.50", "rssi": -60},
                "relays": [{"ison": true, "has_timer": false, "overpower": false}],
                "meters": [{"power": w, "overpower": 0.0, "is_valid": true,
                            "timestamp": 1764979200, "counters": [w, w, w],
                            "total": (m.energy_wh * 60.0).round()}],
                "temperature": 45.1, "overtemperature": false
            }),
        ),
        Device::Tasmota => json_answer(
            StatusCode::OK,
            json!({
                "StatusSNS": {
                    "Time": "2026-12-05T23:00:00",
                    "ENERGY": {
                        "TotalStartTime": "2026-01-01T00:00:00",
                        "Total": m.energy_wh / 1000.0, "Yesterday": 1.2, "Today": 0.8,
                        "Power": w, "ApparentPower": w, "ReactivePower": 0,
                        "Factor": 0.98, "Voltage": 231, "Current": w / 231.0
                    }
                }
            }),
        ),
        Device::HomeAssistant {
            entity,
            token,
            unit,
        } => {
            if auth != Some(format!("Bearer {token}").as_str()) {
                return (StatusCode::UNAUTHORIZED, "401: Unauthorized").into_response();
            }
            let state = if unit == "kW" { w / 1000.0 } else { w };
            json_answer(
                StatusCode::OK,
                json!({
                    "entity_id": entity,
                    "state": format!("{state}"),
                    "attributes": {"state_class": "measurement", "unit_of_measurement": unit,
                                   "device_class": "power", "friendly_name": "Rack power"},
                    "last_changed": "2026-12-05T23:00:00.000000+00:00",
                    "last_updated": "2026-12-05T23:00:00.000000+00:00",
                    "context": {"id": "01JEKX6Q4T", "parent_id": null, "user_id": null}
                }),
            )
        }
    }
}
