//! `cargo bench --bench sim`: one week of virtual time, 200 machines in 10 groups, about
//! 100,000 pods (diurnal), through the real FSM and provider core, in three cases: as is; with a
//! backlog that saturates the cluster for hours (pods pile up pending); and as is with what
//! `-o json --plot` costs (timeline, series, the two baseline runs, the JSON text and the SVG).
//! Target: at most 2 s each on one core. Prints the figures BENCHMARKS.md records.
//!
//! Without `--bench` (`cargo test --benches`) it runs a smoke version instead: one day, 20
//! machines, fewer pods, two runs, checking the outcome is sane.
use std::fmt::Write;
use std::time::Instant;

use kubectl_homelab::sim::scenario::{NoTraceFiles, Scenario};
use kubectl_homelab::sim::{RunOptions, run};

/// How big a run is: the measurement, or the smoke version `cargo test --benches` runs.
struct Size {
    /// Pods of the saturating backlog (4 CPUs, 8 Gi, 3-6 h each, all on day 2 at 08:00).
    backlog: u32,
    days: u32,
    machines: usize,
    groups: usize,
    /// Pods per hour at the diurnal peak and trough.
    peak: u32,
    trough: u32,
    runs: usize,
}

const BENCH: Size = Size {
    backlog: 3_000,
    days: 7,
    machines: 200,
    groups: 10,
    peak: 900,
    trough: 300,
    runs: 5,
};

const SMOKE: Size = Size {
    backlog: 300,
    days: 1,
    machines: 20,
    groups: 2,
    peak: 90,
    trough: 30,
    runs: 2,
};

fn scenario_yaml(size: &Size, backlog: bool) -> String {
    let mut y = format!(
        "name: bench {} machines\nseed: 1\nduration: {}h\n\
         simulation:\n  bootTime: {{uniform: {{min: 60s, max: 180s}}}}\n  shutdownTime: 30s\n  \
         powerActionTime: 5s\n  powerOnFailure: 0.01\n  neverBoots: 0.01\n\
         groups:\n",
        size.machines,
        size.days * 24
    );
    for g in 0..size.groups {
        let order = ["cheapest", "fastestBoot", "leastRecentlyUsed", "name"][g % 4];
        let _ = writeln!(
            y,
            "  - metadata: {{name: g{g}, namespace: lab}}\n    spec: {{minSize: 1, powerOnOrder: {order}}}"
        );
    }
    y.push_str("machines:\n");
    for m in 0..size.machines {
        let g = m % size.groups;
        let cpu = [4, 8, 16][g % 3];
        let on = if m < size.machines / 10 { "on" } else { "off" };
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
    let _ = write!(
        y,
        "workload:\n  - name: web\n    diurnal: {{peakRate: {}/h, troughRate: {}/h, peakAt: 14h}}\n    \
         cpu: 1\n    memory: 2Gi\n    duration: {{uniform: {{min: 5m, max: 90m}}}}\n",
        size.peak, size.trough
    );
    if backlog {
        let _ = write!(
            y,
            "  - name: backlog\n    burst: {{at: {}h, count: {}, spread: 10m}}\n    \
             cpu: 4\n    memory: 8Gi\n    duration: {{uniform: {{min: 3h, max: 6h}}}}\n",
            (size.days.min(2) - 1) * 24 + 8,
            size.backlog
        );
    }
    y
}

#[derive(Clone, Copy, PartialEq)]
enum Case {
    AsIs,
    Backlog,
    JsonPlot,
}

fn main() {
    let measure = std::env::args().any(|a| a == "--bench");
    let size = if measure { &BENCH } else { &SMOKE };
    for case in [Case::AsIs, Case::Backlog, Case::JsonPlot] {
        bench(size, measure, case);
    }
}

fn bench(size: &Size, measure: bool, case: Case) {
    let yaml = scenario_yaml(size, case == Case::Backlog);
    let t = Instant::now();
    let scenario = match Scenario::parse("bench.yaml", &yaml, &NoTraceFiles) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bench scenario does not parse: {e}");
            std::process::exit(1);
        }
    };
    let parse = t.elapsed();
    let options = if case == Case::JsonPlot {
        RunOptions {
            timeline: true,
            series: true,
            baselines: true,
            ..RunOptions::default()
        }
    } else {
        RunOptions::default()
    };
    let mut times = Vec::new();
    let mut last = None;
    let mut peak_pending = 0;
    for _ in 0..size.runs {
        let t = Instant::now();
        let report = match run(&scenario, options, &mut |_, _| {}) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        };
        if case == Case::JsonPlot {
            let json = serde_json::to_string_pretty(&report).unwrap_or_default();
            let svg = kubectl_homelab::sim::plot::svg(&report);
            if json.len() < 1000 || !svg.starts_with("<svg") {
                eprintln!("sim bench: JSON or SVG output missing");
                std::process::exit(1);
            }
            peak_pending = report.series.iter().map(|p| p.pending).max().unwrap_or(0);
        }
        times.push(t.elapsed());
        last = Some(report);
    }
    times.sort();
    let Some(r) = last else { return };
    let name = match case {
        Case::AsIs => "as is",
        Case::Backlog => "saturating backlog",
        Case::JsonPlot => "as is, with -o json --plot (timeline, series, baselines, JSON, SVG)",
    };
    // Sane outcome: pods came, machines booted to serve them, the CA loop and the FSM ran.
    let placed = r.pods_arrived.saturating_sub(r.pods_never_placed);
    if placed == 0
        || r.total.boots == 0
        || r.counters.scans == 0
        || r.counters.transitions == 0
        || r.counters.scale_ups == 0
    {
        eprintln!(
            "sim bench: implausible outcome: {} pods arrived, {} never placed, {} boots, {} scans, {} transitions, {} scale-ups",
            r.pods_arrived,
            r.pods_never_placed,
            r.total.boots,
            r.counters.scans,
            r.counters.transitions,
            r.counters.scale_ups
        );
        std::process::exit(1);
    }
    println!(
        "sim bench{} [{name}]: {} days, {} machines, {} pods, {} FSM transitions, {} CA scans",
        if measure {
            ""
        } else {
            " (smoke; `cargo bench --bench sim` measures)"
        },
        size.days,
        r.total.machines,
        r.pods_arrived,
        r.counters.transitions,
        r.counters.scans
    );
    println!(
        "  run time over {} runs: min {:.3} s, median {:.3} s, max {:.3} s (scenario parse {:.1} ms)",
        times.len(),
        times[0].as_secs_f64(),
        times[times.len() / 2].as_secs_f64(),
        times[times.len() - 1].as_secs_f64(),
        parse.as_secs_f64() * 1e3
    );
    println!(
        "  outcome: {} boots, {} failed, {} scale-ups, {} scale-downs, wait p50 {} ms p95 {} ms p99 {} ms, {} never placed, {:.1} kWh vs {:.1} always on",
        r.total.boots,
        r.total.failed_boots,
        r.counters.scale_ups,
        r.counters.scale_downs,
        r.wait.p50_ms,
        r.wait.p95_ms,
        r.wait.p99_ms,
        r.pods_never_placed,
        r.total.kwh,
        r.total.baseline_kwh
    );
    if case == Case::JsonPlot {
        println!("  peak pending pods {peak_pending}");
    }
}
