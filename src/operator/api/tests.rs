//! Unit tests of the pure helpers on `Machine` and `Group`.
use jiff::SignedDuration;

use super::*;
use crate::operator::machine::PowerState;
use crate::testing::job;

#[test]
fn group_label_and_membership() {
    let m = Machine::test("m1").group("g1").build();
    assert_eq!(m.group(), Some("g1"));
    assert_eq!(Machine::test("m2").build().group(), None);
    assert_eq!(
        Machine::test("m3").group("").build().group(),
        None,
        "an empty label is no group"
    );
    let g = Group::test("g1").build();
    assert!(g.has_member(&m));
    assert!(
        !g.has_member(&Machine::test("m1").namespace("other").group("g1").build()),
        "other namespace"
    );
    assert!(!g.has_member(&Machine::test("m1").group("g2").build()));
    assert!(g.validate().is_empty());
    let long = Group::test(&"g".repeat(64)).build();
    let e = long.validate();
    assert_eq!(e.len(), 1);
    assert!(e[0].to_string().contains("metadata.name"), "{}", e[0]);
}

#[test]
fn provider_id_prefers_spec_then_last_seen_then_default() {
    let mut m = Machine::test("m1").build();
    assert_eq!(m.expected_provider_id(), "homelab://lab/m1");
    m.status = Some(MachineStatus {
        node: Some(Box::new(NodeSnapshot {
            name: "node-a".to_owned(),
            provider_id: Some("k3s://node-a".to_owned()),
            seen: jiff::Timestamp::UNIX_EPOCH,
            ..NodeSnapshot::default()
        })),
        ..MachineStatus::default()
    });
    assert_eq!(m.expected_provider_id(), "k3s://node-a");
    assert_eq!(m.node_name(), Some("node-a"));
    m.spec.provider_id = Some("homelab://custom".to_owned());
    assert_eq!(m.expected_provider_id(), "homelab://custom");
    m.spec.provider_id = Some(String::new());
    assert_eq!(
        m.expected_provider_id(),
        "k3s://node-a",
        "empty spec value is unset"
    );
    m.spec.kubernetes_node_name = Some("declared".to_owned());
    assert_eq!(m.node_name(), Some("declared"));
}

#[test]
fn desired_power_defaults_to_on_when_absent() {
    let m: Machine = serde_json::from_value(serde_json::json!({
        "apiVersion": "infra.homecluster.dev/v1alpha1", "kind": "Node",
        "metadata": {"name": "m", "namespace": "lab"},
        "spec": {"startupPodSpec": {"image": "a"}, "shutdownPodSpec": {"image": "b"}}
    }))
    .expect("minimal Node deserializes");
    assert_eq!(m.desired_power(), PowerState::On);
    assert_eq!(m.observed_power(), None);
    assert_eq!(
        m.lifecycle(),
        crate::operator::machine::Lifecycle::default()
    );
}

#[test]
fn power_driver_resolution_and_errors() {
    let mut m = Machine::test("m1")
        .legacy_jobs(job("on", &[]), job("off", &[]))
        .build();
    assert!(matches!(m.power_driver(Direction::On), Ok(PowerDriver::Job(j)) if j.image == "on"));
    assert!(matches!(m.power_driver(Direction::Off), Ok(PowerDriver::Job(j)) if j.image == "off"));

    // power.powerOn together with startupPodSpec is refused.
    m.spec.power = Some(Box::new(PowerSpec {
        power_on: Some(PowerOn {
            wake_on_lan: Some(Box::new(WakeOnLan {
                mac: "aa:bb:cc:dd:ee:ff".to_owned(),
                ..WakeOnLan::default()
            })),
            ..PowerOn::default()
        }),
        ..PowerSpec::default()
    }));
    let e = m.power_driver(Direction::On).unwrap_err().to_string();
    assert!(
        e.contains("Node lab/m1") && e.contains("spec.power.powerOn") && e.contains("not both"),
        "{e}"
    );

    m.spec.startup_pod_spec = None;
    let Ok(PowerDriver::WakeOnLan(w)) = m.power_driver(Direction::On) else {
        panic!("expected wakeOnLan");
    };
    assert_eq!(
        (w.broadcast(), w.port()),
        (DEFAULT_WOL_BROADCAST, DEFAULT_WOL_PORT)
    );

    // Two drivers in one direction.
    if let Some(on) = m.spec.power.as_mut().and_then(|p| p.power_on.as_mut()) {
        on.http = Some(Box::new(HttpAction {
            url: "http://plug/on".to_owned(),
            ..HttpAction::default()
        }));
    }
    let e = m.power_driver(Direction::On).unwrap_err().to_string();
    assert!(e.contains("2 drivers set (wakeOnLan, http)"), "{e}");

    // No way to power off.
    m.spec.shutdown_pod_spec = None;
    let e = m.power_driver(Direction::Off).unwrap_err().to_string();
    assert!(
        e.contains("no way to power off") && e.contains("shutdownPodSpec"),
        "{e}"
    );
    assert_eq!(m.validate().len(), 2, "{:?}", m.validate());
}

/// `bootTimeout: auto` is the default until three boots were recorded, then the learned p95
/// plus half of it.
#[test]
fn an_auto_boot_timeout_is_learned_from_recent_boots() {
    let auto = |boots: &[u32]| {
        Machine::test("m1")
            .boot_timeout("auto")
            .recent_boots(boots)
            .build()
            .boot_timeout()
    };
    assert_eq!(auto(&[]), Ok(DEFAULT_BOOT_TIMEOUT));
    assert_eq!(auto(&[200, 240]), Ok(DEFAULT_BOOT_TIMEOUT));
    assert_eq!(auto(&[200, 220, 240]), Ok(SignedDuration::from_secs(360)));
    let m = Machine::test("m1").boot_timeout("auto").build();
    assert!(m.validate().is_empty(), "{:?}", m.validate());
}

#[test]
fn timeouts_default_and_parse() {
    let mut m = Machine::test("m1").build();
    assert_eq!(m.boot_timeout(), Ok(DEFAULT_BOOT_TIMEOUT));
    assert_eq!(m.shutdown_timeout(), Ok(SignedDuration::from_secs(300)));
    m.spec.boot_timeout = Some("1h30m".to_owned());
    assert_eq!(m.boot_timeout(), Ok(SignedDuration::from_secs(5400)));
    m.spec.boot_timeout = Some("0s".to_owned());
    let e = m.boot_timeout().unwrap_err().to_string();
    assert!(e.contains("Node lab/m1 spec.bootTimeout"), "{e}");
    m.spec.shutdown_timeout = Some("5 minutes".to_owned());
    let e = m.shutdown_timeout().unwrap_err().to_string();
    assert!(
        e.contains("spec.shutdownTimeout") && e.contains("\"5 minutes\""),
        "{e}"
    );
}

#[test]
fn rates_parse_with_field_errors() {
    let mut m = Machine::test("m1").build();
    assert_eq!(m.hourly_rate(), Ok(None));
    m.spec.pricing = Some(Pricing {
        hourly_rate: Some("0.12".to_owned()),
        pod_rate: Some("abc".to_owned()),
    });
    assert_eq!(m.hourly_rate(), Ok(Some(0.12)));
    let e = m.pod_rate().unwrap_err().to_string();
    assert!(e.contains("spec.pricing.podRate"), "{e}");
}

#[test]
fn size_bounds_default_and_cap() {
    let spec = GroupSpec::default();
    assert_eq!(spec.size_bounds(3), SizeBounds { min: 0, max: 3 });
    let spec = GroupSpec {
        min_size: Some(1),
        max_size: Some(5),
        ..GroupSpec::default()
    };
    assert_eq!(
        spec.size_bounds(3),
        SizeBounds { min: 1, max: 3 },
        "max capped at members"
    );
    assert!(spec.check_size_bounds("", 3).is_ok());
    let spec = GroupSpec {
        min_size: Some(4),
        ..GroupSpec::default()
    };
    assert_eq!(
        spec.size_bounds(2),
        SizeBounds { min: 2, max: 2 },
        "min capped at max"
    );
    let e = spec
        .check_size_bounds("Group lab/g ", 2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("spec.minSize") && e.contains("only 2"), "{e}");
    assert_eq!(
        GroupSpec::default().size_bounds(0),
        SizeBounds { min: 0, max: 0 }
    );
}

#[test]
fn autoscaling_options_parse_only_what_is_set() {
    let none = GroupSpec::default()
        .autoscaling_options("")
        .expect("empty parses");
    assert!(!none.any_set());
    let spec = GroupSpec {
        scale_down_utilization_threshold: Some("0.5".to_owned()),
        scale_down_unneeded_time: Some("10m".to_owned()),
        zero_or_max_node_scaling: Some(false),
        ..GroupSpec::default()
    };
    let o = spec.autoscaling_options("").expect("parses");
    assert!(o.any_set());
    assert_eq!(o.scale_down_utilization_threshold, Some(0.5));
    assert_eq!(
        o.scale_down_unneeded_time,
        Some(SignedDuration::from_secs(600))
    );
    assert_eq!(o.zero_or_max_node_scaling, Some(false));
    assert_eq!(o.max_node_provision_time, None);
    let bad = GroupSpec {
        scale_down_utilization_threshold: Some("70".to_owned()),
        ..GroupSpec::default()
    };
    let g = Group {
        spec: bad,
        ..Group::test("g1").build()
    };
    let e = g.autoscaling_options().unwrap_err().to_string();
    assert!(
        e.contains("Group lab/g1 spec.scaleDownUtilizationThreshold") && e.contains("\"0.7\""),
        "{e}"
    );
    assert_eq!(g.validate().len(), 1);
}

#[test]
fn recent_boots_are_bounded() {
    let mut s = MachineStatus::default();
    assert_eq!(s.mean_boot_seconds(), None);
    for i in 1..=15 {
        s.record_boot(i);
    }
    assert_eq!(s.recent_boot_seconds.len(), RECENT_BOOTS_MAX);
    assert_eq!(s.recent_boot_seconds.first(), Some(&6));
    assert_eq!(s.mean_boot_seconds(), Some(10.5));
}

#[test]
fn status_round_trips_with_flattened_lifecycle() {
    let json = serde_json::json!({
        "powerState": "on", "progress": "ready", "health": "healthy",
        "phase": "Ready", "phaseSince": "2026-01-01T00:00:00Z", "attempt": 2,
        "recentBootSeconds": [90, 95],
        "node": {"name": "n1", "providerID": "homelab://lab/m1", "seen": "2026-01-01T00:00:00Z",
                  "capacity": {"cpu": "8", "memory": "32Gi"}},
        "observedGeneration": 3
    });
    let s: MachineStatus = serde_json::from_value(json.clone()).expect("status parses");
    assert_eq!(s.lifecycle.phase(), crate::operator::machine::Phase::Ready);
    assert_eq!(s.lifecycle.attempt, 2);
    assert_eq!(s.progress, Some(StatusProgress::Ready));
    assert_eq!(serde_json::to_value(&s).expect("ser"), json);
}

#[test]
fn node_agent_and_http_defaults() {
    let a = NodeAgent::default();
    assert_eq!(a.image(), DEFAULT_NODE_AGENT_IMAGE);
    assert_eq!(
        a.command(),
        vec!["systemctl".to_owned(), "poweroff".to_owned()]
    );
    assert_eq!(HttpAction::default().method(), HttpMethod::Post);
    assert_eq!(
        job("x", &[]).ttl_seconds_after_finished(),
        DEFAULT_JOB_TTL_SECONDS
    );
    assert_eq!(
        serde_json::to_value(HttpMethod::Delete).expect("ser"),
        serde_json::json!("DELETE")
    );
    for o in PowerOnOrder::ALL {
        assert_eq!(
            serde_json::to_value(o).expect("ser"),
            serde_json::json!(o.as_str())
        );
    }
}

/// The reflector caches every Node CR in full. A machine uses one driver per direction, so the
/// others must not cost their inline size in each cached object (PowerSpec alone was 1,232 bytes,
/// a third of the operator's live heap at 2,000 machines; BENCHMARKS.md).
#[test]
fn unused_power_drivers_take_no_room_in_a_cached_node_cr() {
    let pointer = std::mem::size_of::<usize>();
    // One pointer per driver (job, wakeOnLan or nodeAgent, redfish, http, ipmi).
    assert!(std::mem::size_of::<PowerOn>() <= 5 * pointer);
    assert!(std::mem::size_of::<PowerOff>() <= 5 * pointer);
    // 320 bytes on 64-bit today; an inline PowerSpec or pod spec would add 128 to 1,200 more.
    assert!(std::mem::size_of::<MachineSpec>() < 448);
}

/// Likewise for the status parts a machine may not have yet (a Node snapshot before its first
/// boot, energy counters without `watts`, a driver readback before its first operation): boxed,
/// they cost a pointer each while absent instead of 312 bytes together.
#[test]
fn absent_status_parts_take_no_room_in_a_cached_node_cr() {
    // 368 bytes on 64-bit today, of which the lifecycle is 224; 656 with the three inline.
    assert!(std::mem::size_of::<MachineStatus>() < 400);
}

/// The CRs' maps are flat vectors now; their JSON is still a map with sorted keys, as a
/// `BTreeMap` wrote it, whatever order the file gave.
#[test]
fn cr_maps_read_any_order_and_write_sorted_keys() {
    let spec: MachineSpec = serde_json::from_value(serde_json::json!({
        "powerState": "off",
        "capacity": {"pods": "110", "cpu": "4", "memory": "8Gi"},
        "labels": {"zone": "attic", "gpu": "true"}
    }))
    .expect("spec");
    assert_eq!(spec.capacity.get("cpu").map(|q| q.0.as_str()), Some("4"));
    let written = serde_json::to_string(&spec).expect("ser");
    assert!(
        written.contains(r#""capacity":{"cpu":"4","memory":"8Gi","pods":"110"}"#),
        "{written}"
    );
    assert!(
        written.contains(r#""labels":{"gpu":"true","zone":"attic"}"#),
        "{written}"
    );
}

fn bmc(endpoint: &str) -> Redfish {
    Redfish {
        endpoint: endpoint.to_owned(),
        credentials_secret: "bmc".to_owned(),
        ..Redfish::default()
    }
}

fn plug(url: &str, status_url: Option<&str>, secret: Option<&str>) -> HttpAction {
    HttpAction {
        url: url.to_owned(),
        secret: secret.map(str::to_owned),
        status: status_url.map(|u| HttpStatusCheck {
            url: u.to_owned(),
            field: "$.on".to_owned(),
            value: "true".to_owned(),
        }),
        ..HttpAction::default()
    }
}

#[test]
fn redfish_credentials_go_over_https_unless_allow_insecure() {
    let field = "spec.power.powerOn.redfish";
    assert_eq!(bmc("https://10.0.0.20").check_https(field), Ok(()));
    let plain = bmc("http://10.0.0.20");
    let e = plain.check_https(field).expect_err("http:// is refused");
    let text = e.to_string();
    assert!(
        text.starts_with("spec.power.powerOn.redfish.endpoint: ")
            && text.contains("clear text")
            && text.contains("use https://")
            && text.contains("spec.power.powerOn.redfish.allowInsecure: true"),
        "{text}"
    );
    assert_eq!(plain.validate(field), vec![e]);
    assert!(!plain.plaintext_credentials());
    let allowed = Redfish {
        allow_insecure: Some(true),
        ..plain
    };
    assert_eq!(allowed.check_https(field), Ok(()));
    assert!(allowed.validate(field).is_empty());
    assert!(allowed.plaintext_credentials());
    let explicit_false = Redfish {
        allow_insecure: Some(false),
        ..bmc("http://10.0.0.20")
    };
    assert!(explicit_false.check_https(field).is_err());
}

#[test]
fn http_credentials_go_over_https_unless_no_secret_or_allow_insecure() {
    let field = "spec.power.powerOff.http";
    // No secret: nothing to protect.
    assert_eq!(
        plug("http://plug/off", Some("http://plug/status"), None).check_https(field),
        Ok(())
    );
    assert_eq!(
        plug("https://plug/off", Some("https://plug/status"), Some("s")).check_https(field),
        Ok(())
    );
    let e = plug("http://plug/off", None, Some("s"))
        .check_https(field)
        .expect_err("url over http:// with a secret");
    assert!(
        e.to_string().starts_with("spec.power.powerOff.http.url: ")
            && e.to_string()
                .contains("spec.power.powerOff.http.allowInsecure: true"),
        "{e}"
    );
    // The readback gets the same credentials.
    let readback = plug("https://plug/off", Some("http://plug/status"), Some("s"));
    let e = readback
        .check_https(field)
        .expect_err("status.url over http://");
    assert!(
        e.to_string()
            .starts_with("spec.power.powerOff.http.status.url: "),
        "{e}"
    );
    assert_eq!(readback.validate(field), vec![e]);
    let allowed = HttpAction {
        allow_insecure: Some(true),
        ..readback
    };
    assert_eq!(allowed.check_https(field), Ok(()));
    assert_eq!(allowed.plaintext_credentials(), vec!["status.url"]);
}

fn power(on: Option<Redfish>, off: Option<HttpAction>) -> PowerSpec {
    PowerSpec {
        power_on: on.map(|r| PowerOn {
            redfish: Some(Box::new(r)),
            ..PowerOn::default()
        }),
        power_off: off.map(|h| PowerOff {
            http: Some(Box::new(h)),
            ..PowerOff::default()
        }),
        ..PowerSpec::default()
    }
}

#[test]
fn insecure_transport_names_each_exposed_credential_and_its_fix() {
    // Verified TLS, or no credentials at all: nothing to say.
    assert_eq!(
        power(
            Some(bmc("https://bmc")),
            Some(plug("https://plug/off", None, Some("s")))
        )
        .insecure_transport(),
        None
    );
    let no_secret = HttpAction {
        insecure_skip_verify: Some(true),
        ..plug("http://plug/off", None, None)
    };
    assert_eq!(power(None, Some(no_secret)).insecure_transport(), None);
    // An unverified certificate.
    let skip = Redfish {
        insecure_skip_verify: Some(true),
        ..bmc("https://bmc")
    };
    let found = power(Some(skip.clone()), None)
        .insecure_transport()
        .expect("insecureSkipVerify with credentials");
    assert_eq!(found.reason, REASON_CERTIFICATE_NOT_VERIFIED);
    assert!(
        found
            .message
            .contains("spec.power.powerOn.redfish.insecureSkipVerify: true")
            && found
                .message
                .contains("spec.power.powerOn.redfish.caBundle"),
        "{}",
        found.message
    );
    // Clear text outranks an unverified certificate; both are named.
    let clear = HttpAction {
        allow_insecure: Some(true),
        ..plug("http://plug/off", Some("http://plug/status"), Some("s"))
    };
    let found = power(Some(skip), Some(clear))
        .insecure_transport()
        .expect("plaintext credentials");
    assert_eq!(found.reason, REASON_PLAINTEXT_CREDENTIALS);
    assert!(
        found.message.contains(
            "spec.power.powerOff.http.url and spec.power.powerOff.http.status.url are http://"
        ) && found.message.contains("use https://")
            && found
                .message
                .contains("spec.power.powerOn.redfish.insecureSkipVerify"),
        "{}",
        found.message
    );
    let bmc_clear = Redfish {
        allow_insecure: Some(true),
        ..bmc("http://bmc")
    };
    let found = power(Some(bmc_clear), None)
        .insecure_transport()
        .expect("an http:// BMC");
    assert_eq!(found.reason, REASON_PLAINTEXT_CREDENTIALS);
    assert!(
        found
            .message
            .contains("spec.power.powerOn.redfish.endpoint is http://bmc"),
        "{}",
        found.message
    );
    // allowInsecure on an https:// endpoint changes nothing.
    let unused = Redfish {
        allow_insecure: Some(true),
        ..bmc("https://bmc")
    };
    assert_eq!(power(Some(unused), None).insecure_transport(), None);
}

/// A Node CR written before the rename, with the quoted keys `"on"` / `"off"` under `power` and
/// `"off"` under `watts`: the accessors read the legacy fields, the drivers resolve from them,
/// messages name the keys as written, and it serializes back with the same keys.
#[test]
fn a_legacy_quoted_on_off_cr_resolves_its_drivers_through_the_accessors() {
    let text = r#"
apiVersion: infra.homecluster.dev/v1alpha1
kind: Node
metadata: {name: m1, namespace: lab}
spec:
  powerState: "off"
  power:
    "on":
      wakeOnLan: {mac: "aa:bb:cc:dd:ee:ff"}
    "off":
      redfish: {endpoint: "http://bmc", credentialsSecret: bmc}
  watts: {idle: 9, "off": 0.8}
"#;
    let m: Machine = crate::yaml::from_str("legacy.yaml", text).expect("legacy CR parses");
    let power = m.spec.power.as_deref().expect("power");
    assert!(power.power_on.is_none() && power.legacy_on.is_some());
    assert!(power.on().is_some() && power.off().is_some());
    assert!(matches!(
        m.power_driver(Direction::On),
        Ok(PowerDriver::WakeOnLan(w)) if w.mac == "aa:bb:cc:dd:ee:ff"
    ));
    assert!(matches!(
        m.power_driver(Direction::Off),
        Ok(PowerDriver::Redfish(r)) if r.endpoint == "http://bmc"
    ));
    let watts = m.spec.watts.expect("watts");
    assert_eq!((watts.standby(), watts.standby_watts()), (0.8, Some(0.8)));
    // Messages name the field as the CR writes it.
    assert_eq!(m.spec.power_field(Direction::On), "spec.power.on");
    let errors: Vec<String> = m.validate().iter().map(ToString::to_string).collect();
    assert!(
        errors.len() == 1 && errors[0].contains("Node lab/m1 spec.power.off.redfish.endpoint"),
        "{errors:?}"
    );
    assert_eq!(
        m.spec.deprecated_keys(),
        [
            ("spec.power.on", "spec.power.powerOn"),
            ("spec.power.off", "spec.power.powerOff"),
            ("spec.watts.off", "spec.watts.standby"),
        ]
    );
    // Written back (a status write never carries spec; a whole-object write keeps the keys).
    let json = serde_json::to_value(&m.spec).expect("serializes");
    assert!(json["power"]["on"]["wakeOnLan"].is_object(), "{json}");
    assert!(json["power"].get("powerOn").is_none(), "{json}");
    assert_eq!(json["watts"]["off"], 0.8);
}

#[test]
fn new_keys_win_their_names_and_both_names_of_one_field_are_refused() {
    let m = Machine::test("m1").build();
    assert_eq!(m.spec.power_field(Direction::Off), "spec.power.powerOff");
    assert!(m.spec.deprecated_keys().is_empty());
    assert_eq!(m.spec.deprecated_fields(), None);
    let mut both = m.clone();
    if let Some(p) = both.spec.power.as_deref_mut() {
        p.legacy_on = p.power_on.clone();
    }
    both.spec.watts = Some(Watts {
        standby: Some(1.0),
        legacy_off: Some(2.0),
        ..Watts::default()
    });
    let errors: Vec<String> = both.validate().iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].contains("spec.power") && errors[0].contains(cel::POWER_ON_NOT_LEGACY_MESSAGE)
    );
    assert!(
        errors[1].contains("spec.watts") && errors[1].contains(cel::STANDBY_NOT_LEGACY_MESSAGE)
    );
    // The new field is the one read.
    assert_eq!(both.spec.watts.map(|w| w.standby()), Some(1.0));
}

/// Every `format` in both generated CRDs is one the API server knows for its type, so applying
/// them prints no `Warning: unrecognized format`. The status energy counters are `u64`, which
/// schemars writes as `uint64`.
#[test]
fn generated_crds_use_only_formats_the_api_server_knows() {
    fn walk(node: &serde_json::Value, path: &str, bad: &mut Vec<String>, seen: &mut usize) {
        match node {
            serde_json::Value::Object(map) => {
                if let Some(format) = map.get("format").and_then(|f| f.as_str()) {
                    *seen += 1;
                    let type_ = map.get("type").and_then(|t| t.as_str());
                    if !is_known_format(type_, format) {
                        bad.push(format!("{path}: {type_:?} {format}"));
                    }
                }
                for (k, v) in map {
                    walk(v, &format!("{path}.{k}"), bad, seen);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(v, &format!("{path}[{i}]"), bad, seen);
                }
            }
            _ => {}
        }
    }
    let (mut bad, mut seen) = (Vec::new(), 0);
    for crd in crds() {
        let json = serde_json::to_value(&crd).expect("CRD serializes");
        walk(
            &json,
            crd.metadata.name.as_deref().unwrap_or("?"),
            &mut bad,
            &mut seen,
        );
    }
    assert!(seen > 10, "the walk found formats: {seen}");
    assert!(bad.is_empty(), "unknown formats: {bad:#?}");
    // The checker itself: what the API server warns about.
    assert!(!is_known_format(Some("integer"), "uint64"));
    assert!(
        !is_known_format(Some("string"), "k8s-short-name"),
        "not before 1.34"
    );
    assert!(is_known_format(Some("string"), "date-time"));
    assert!(is_known_format(Some("number"), "double"));
}

/// An IPMI session with cipher suite 0 (allowed by `allowInsecure`) is reported like clear-text
/// credentials; suites 3 and 17 are not reported.
#[test]
fn an_unprotected_ipmi_session_is_insecure_transport() {
    let ipmi = |suite: i32, allow: Option<bool>| PowerSpec {
        power_off: Some(PowerOff {
            ipmi: Some(Box::new(Ipmi {
                host: "10.0.0.3".to_owned(),
                credentials_secret: "bmc".to_owned(),
                cipher_suite: Some(suite),
                allow_insecure: allow,
                ..Ipmi::default()
            })),
            ..PowerOff::default()
        }),
        ..PowerSpec::default()
    };
    let found = ipmi(0, Some(true))
        .insecure_transport()
        .expect("cipher suite 0");
    assert_eq!(found.reason, REASON_PLAINTEXT_CREDENTIALS);
    assert!(
        found
            .message
            .contains("spec.power.powerOff.ipmi.cipherSuite is 0")
            && found.message.contains("use cipher suite 17 or 3"),
        "{}",
        found.message
    );
    assert_eq!(ipmi(3, None).insecure_transport(), None);
    assert_eq!(ipmi(17, Some(true)).insecure_transport(), None);
}

#[test]
fn an_unknown_time_zone_names_the_group_field_and_the_fix() {
    let mut g = Group::test("g").namespace("lab").build();
    g.spec.time_zone = Some("Europe/Berln".into());
    g.spec.schedule = vec![ScheduleWindow {
        name: "w".into(),
        from: "08:00".into(),
        to: "09:00".into(),
        ..ScheduleWindow::default()
    }];
    let errors: Vec<String> = g.validate().iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("Group lab/g spec.timeZone: \"Europe/Berln\""),
        "{}",
        errors[0]
    );
    assert!(errors[0].contains("Europe/Berlin"), "{}", errors[0]);
    use crate::operator::policy::schedule::{Schedule, ScheduleError};
    assert!(matches!(
        Schedule::of_group(&g),
        Err(ScheduleError::Zone(_))
    ));
    g.spec.time_zone = Some("Europe/Berlin".into());
    assert_eq!(g.validate(), vec![]);
    assert_eq!(Schedule::of_group(&g).map(|s| s.windows.len()), Ok(1));
    g.spec.schedule[0].to = "25:00".into();
    let errors: Vec<String> = g.validate().iter().map(ToString::to_string).collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("Group lab/g spec.schedule[0].to")),
        "{errors:?}"
    );
}
