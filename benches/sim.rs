//! `cargo bench --bench sim`: one week of virtual time, 200 machines in 10 groups, about
//! 100,000 pods (diurnal), through the real FSM and provider core. Target: about 1 s on one
//! core. Prints the figures BENCHMARKS.md records.
use std::fmt::Write;
use std::time::Instant;

use kubectl_homelab::sim::scenario::{NoTraceFiles, Scenario};
use kubectl_homelab::sim::{RunOptions, run};

fn scenario_yaml() -> String {
    let mut y = String::from(
        "name: bench 200 machines\nseed: 1\nduration: 7d\n\
         simulation:\n  bootTime: {uniform: {min: 60s, max: 180s}}\n  shutdownTime: 30s\n  \
         powerActionTime: 5s\n  powerOnFailure: 0.01\n  neverBoots: 0.01\n\
         groups:\n",
    );
    for g in 0..10 {
        let order = ["cheapest", "fastestBoot", "leastRecentlyUsed", "name"][g % 4];
        let _ = writeln!(
            y,
            "  - metadata: {{name: g{g}, namespace: lab}}\n    spec: {{minSize: 1, powerOnOrder: {order}}}"
        );
    }
    y.push_str("machines:\n");
    for m in 0..200 {
        let g = m % 10;
        let cpu = [4, 8, 16][g % 3];
        let on = if m < 20 { "on" } else { "off" };
        let _ = writeln!(
            y,
            "  - metadata: {{name: m{m:03}, namespace: lab, labels: {{group: g{g}}}}}\n    spec:\n      \
             powerState: \"{on}\"\n      capacity: {{cpu: \"{cpu}\", memory: {}Gi}}\n      \
             watts: {{idle: {}, busy: {}, off: 1}}\n      pricing: {{hourlyRate: \"0.0{}\"}}",
            cpu * 4,
            5 + cpu,
            10 + cpu * 8,
            1 + m % 9
        );
    }
    y.push_str(
        "workload:\n  - name: web\n    diurnal: {peakRate: 900/h, troughRate: 300/h, peakAt: 14h}\n    \
         cpu: 1\n    memory: 2Gi\n    duration: {uniform: {min: 5m, max: 90m}}\n",
    );
    y
}

fn main() {
    let yaml = scenario_yaml();
    let t = Instant::now();
    let scenario = match Scenario::parse("bench.yaml", &yaml, &NoTraceFiles) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bench scenario does not parse: {e}");
            std::process::exit(1);
        }
    };
    let parse = t.elapsed();
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..5 {
        let t = Instant::now();
        let report = match run(&scenario, RunOptions::default(), &mut |_, _| {}) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        };
        times.push(t.elapsed());
        last = Some(report);
    }
    times.sort();
    let Some(r) = last else { return };
    println!(
        "sim bench: 7 days, {} machines, {} pods, {} FSM transitions, {} CA scans",
        r.total.machines, r.pods_arrived, r.counters.transitions, r.counters.scans
    );
    println!(
        "  run time over 5 runs: min {:.3} s, median {:.3} s, max {:.3} s (scenario parse {:.1} ms)",
        times[0].as_secs_f64(),
        times[2].as_secs_f64(),
        times[4].as_secs_f64(),
        parse.as_secs_f64() * 1e3
    );
    println!(
        "  outcome: {} boots, {} failed, {} scale-ups, {} scale-downs, wait p50 {} ms p95 {} ms, {:.1} kWh vs {:.1} always on",
        r.total.boots,
        r.total.failed_boots,
        r.counters.scale_ups,
        r.counters.scale_downs,
        r.wait.p50_ms,
        r.wait.p95_ms,
        r.total.kwh,
        r.total.baseline_kwh
    );
}
