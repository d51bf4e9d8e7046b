//! One duration grammar everywhere: a value the CRDs take is what scenario files and
//! command-line flags take, and the other way round.
mod support;

use clap::Parser as _;
use kubectl_homelab::commands::Cli;
use kubectl_homelab::operator::api::parse_duration;
use kubectl_homelab::sim::units::Duration as ScenarioDuration;

/// Values people write, including the ones a looser parser (days, spaces, words, ISO 8601)
/// used to take in some places and not in others.
const VALUES: &[&str] = &[
    "10m",
    "1h30m",
    "1.5h",
    "15m0s",
    "0",
    "0s",
    "300ms",
    "2us",
    "2µs",
    ".5s",
    "1.s",
    "168h",
    "2562047h",
    // Refused everywhere:
    "2562048h",
    "7d",
    "2d12h",
    "10 minutes",
    "2 minutes",
    "PT2M",
    "-5m",
    "+5m",
    "600",
    "1h 2m",
    " 2s",
    "2s ",
    "",
    "soon",
];

fn cli_accepts(args: &[&str]) -> bool {
    let mut argv = vec!["kubectl-homelab"];
    argv.extend_from_slice(args);
    Cli::try_parse_from(argv).is_ok()
}

fn scenario_accepts(value: &str) -> bool {
    // A JSON string is a YAML scalar with the same meaning.
    let yaml = serde_json::Value::from(value).to_string();
    serde_yaml::from_str::<ScenarioDuration>(&yaml).is_ok()
}

#[test]
fn flags_and_scenario_files_accept_what_the_crd_parser_accepts() {
    let mut disagreements = Vec::new();
    for &value in VALUES {
        let crd = parse_duration("spec.maxNodeProvisionTime", value).is_ok();
        // The simulator's clock ticks in milliseconds.
        let at_least_a_tick = parse_duration("", value).is_ok_and(|d| d.as_millis() > 0);
        let checks = [
            ("scenario file", scenario_accepts(value), crd),
            (
                "serve-grpc --api-timeout",
                cli_accepts(&["serve-grpc", "--api-timeout", value]),
                crd,
            ),
            (
                "serve-grpc --sync-timeout",
                cli_accepts(&["serve-grpc", "--sync-timeout", value]),
                crd,
            ),
            // A simulation must run for at least one tick, so 0 is refused there.
            (
                "simulate --duration",
                cli_accepts(&["simulate", "--duration", value]),
                at_least_a_tick,
            ),
        ];
        for (place, accepted, expected) in checks {
            if accepted != expected {
                disagreements.push(format!(
                    "{value:?}: {place} {} it, the CRD parser {}",
                    if accepted { "accepts" } else { "refuses" },
                    if crd { "accepts" } else { "refuses" },
                ));
            }
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}

#[test]
fn a_value_with_days_is_refused_with_the_hours_to_write() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-homelab"))
        .args(["simulate", "--duration", "7d"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--duration") && err.contains("168h"), "{err}");
}

/// The API server (its CEL rules and the schema's pattern) takes exactly what the parser takes.
#[tokio::test]
async fn the_api_server_accepts_exactly_what_the_parser_accepts() -> anyhow::Result<()> {
    use kube::api::{Api, PostParams};
    use kubectl_homelab::operator::api::Group;

    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("durations").await?;
    let groups: Api<Group> = Api::namespaced(cp.client()?, &ns);
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let mut disagreements = Vec::new();
    for (i, &value) in VALUES.iter().enumerate() {
        let group: Group = serde_json::from_value(serde_json::json!({
            "apiVersion": "infra.homecluster.dev/v1alpha1",
            "kind": "Group",
            "metadata": {"name": format!("g{i}")},
            "spec": {"maxNodeProvisionTime": value},
        }))?;
        let stored = match groups.create(&dry_run, &group).await {
            Ok(_) => true,
            Err(kube::Error::Api(s)) if s.code == 422 => false,
            Err(e) => return Err(e.into()),
        };
        let parsed = parse_duration("spec.maxNodeProvisionTime", value).is_ok();
        if stored != parsed {
            disagreements.push(format!(
                "{value:?}: the API server {}, the parser {}",
                if stored { "stores it" } else { "refuses it" },
                if parsed { "accepts it" } else { "refuses it" },
            ));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
    Ok(())
}
