//! `--plot`: a hand-written SVG of machines powered / nodes Ready (top panel) and pending pods
//! (bottom panel) over virtual time, with axes, gridlines, labels and a title.
use std::fmt::Write;

use super::report::{Report, SeriesPoint};
use super::units::{DAY, HOUR, Millis};

const W: f64 = 1000.0;
const H: f64 = 560.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 45.0;
const TOP_PANEL: (f64, f64) = (70.0, 270.0);
const BOTTOM_PANEL: (f64, f64) = (330.0, 500.0);
const COLUMNS: usize = 900;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Per column: the highest value of each series during that slice of time (so a short burst
/// stays visible), carried forward from the last point before it.
fn columns(series: &[SeriesPoint], end: Millis) -> Vec<(u32, u32, u32)> {
    let mut out = vec![(0, 0, 0); COLUMNS];
    let mut i = 0;
    let mut current = (0, 0, 0);
    for (c, col) in out.iter_mut().enumerate() {
        let slice_end = end * (c as u64 + 1) / COLUMNS as u64;
        let mut m = current;
        while i < series.len() && series[i].at < slice_end {
            let p = series[i];
            current = (p.powered, p.ready, p.pending);
            m = (m.0.max(p.powered), m.1.max(p.ready), m.2.max(p.pending));
            i += 1;
        }
        *col = m;
    }
    out
}

fn nice_max(v: u32) -> u32 {
    let v = v.max(1);
    let steps = [1, 2, 5];
    let mut scale = 1;
    loop {
        for s in steps {
            if s * scale >= v {
                return s * scale;
            }
        }
        scale *= 10;
    }
}

fn x_of(c: usize) -> f64 {
    LEFT + (W - LEFT - RIGHT) * c as f64 / COLUMNS as f64
}

fn y_of(v: u32, max: u32, panel: (f64, f64)) -> f64 {
    panel.1 - (panel.1 - panel.0) * f64::from(v) / f64::from(max)
}

fn step_path(
    cols: &[(u32, u32, u32)],
    pick: impl Fn(&(u32, u32, u32)) -> u32,
    max: u32,
    panel: (f64, f64),
    close: bool,
) -> String {
    let mut d = String::new();
    let mut prev_y = None;
    for (c, col) in cols.iter().enumerate() {
        let y = y_of(pick(col), max, panel);
        let x = x_of(c);
        match prev_y {
            None => {
                if close {
                    let _ = write!(d, "M{x:.1},{:.1} L{x:.1},{y:.1}", panel.1);
                } else {
                    let _ = write!(d, "M{x:.1},{y:.1}");
                }
            }
            Some(py) if py != y => {
                let _ = write!(d, " L{x:.1},{py:.1} L{x:.1},{y:.1}");
            }
            _ => {}
        }
        prev_y = Some(y);
    }
    if let Some(py) = prev_y {
        let x = x_of(cols.len());
        let _ = write!(d, " L{x:.1},{py:.1}");
        if close {
            let _ = write!(d, " L{x:.1},{:.1} Z", panel.1);
        }
    }
    d
}

fn y_axis(svg: &mut String, max: u32, panel: (f64, f64), label: &str) {
    let ticks = if max <= 5 { max } else { 5 };
    for i in 0..=ticks {
        let v = max * i / ticks.max(1);
        let y = y_of(v, max, panel);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="12" fill="#444">{v}</text>"##,
            W - RIGHT,
            LEFT - 8.0,
            y + 4.0
        );
    }
    let mid = (panel.0 + panel.1) / 2.0;
    let _ = writeln!(
        svg,
        r##"<text x="18" y="{mid:.1}" transform="rotate(-90 18 {mid:.1})" text-anchor="middle" font-size="13" fill="#222">{}</text>"##,
        esc(label)
    );
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{:.1}" x2="{LEFT}" y2="{:.1}" stroke="#333"/><line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/>"##,
        panel.0,
        panel.1,
        panel.1,
        W - RIGHT,
        panel.1
    );
}

fn x_axis(svg: &mut String, end: Millis, start_label: &dyn Fn(Millis) -> String) {
    let step = if end > 3 * DAY {
        DAY
    } else if end > 12 * HOUR {
        6 * HOUR
    } else if end > 3 * HOUR {
        HOUR
    } else {
        (end / 6).max(1)
    };
    let mut t = 0;
    while t <= end {
        let x = LEFT + (W - LEFT - RIGHT) * t as f64 / end.max(1) as f64;
        for panel in [TOP_PANEL, BOTTOM_PANEL] {
            let _ = writeln!(
                svg,
                r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#eeeeee"/>"##,
                panel.0, panel.1
            );
        }
        let _ = writeln!(
            svg,
            r##"<text x="{x:.1}" y="{:.1}" text-anchor="middle" font-size="12" fill="#444">{}</text>"##,
            BOTTOM_PANEL.1 + 18.0,
            esc(&start_label(t))
        );
        t += step;
    }
}

/// The plot as an SVG document.
pub fn svg(r: &Report) -> String {
    let end = r.duration_ms.max(1);
    let cols = columns(&r.series, end);
    let total_machines = r.total.machines;
    let machines_max = nice_max(total_machines);
    let pending_max = nice_max(cols.iter().map(|c| c.2).max().unwrap_or(0));
    let start = r.start;
    let label = move |t: Millis| {
        let ts = start
            .checked_add(jiff::SignedDuration::from_millis(
                i64::try_from(t).unwrap_or(0),
            ))
            .unwrap_or(start);
        if end > 3 * DAY {
            ts.strftime("%a %d %b").to_string()
        } else {
            ts.strftime("%a %H:%M").to_string()
        }
    };
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">"##
    );
    let _ = writeln!(svg, r##"<rect width="{W}" height="{H}" fill="white"/>"##);
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="28" font-size="18" font-weight="bold" fill="#111">{}</text>"##,
        esc(&format!("kubectl homelab simulate: {}", r.scenario))
    );
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="48" font-size="13" fill="#444">{}</text>"##,
        esc(&format!(
            "{} of virtual time, seed {}: {:.1} kWh vs {:.1} kWh always on ({:.0}% saved); pod wait p95 {}",
            r.duration,
            r.seed,
            r.total.kwh,
            r.total.baseline_kwh,
            r.total.savings_percent,
            super::units::format_millis(r.wait.p95_ms)
        ))
    );
    x_axis(&mut svg, end, &label);
    y_axis(&mut svg, machines_max, TOP_PANEL, "machines");
    y_axis(&mut svg, pending_max, BOTTOM_PANEL, "pending pods");
    // Top: machines powered (filled) and nodes Ready (line); the dashed line is the fleet.
    let _ = writeln!(
        svg,
        r##"<path d="{}" fill="#f4a261" fill-opacity="0.45" stroke="#e76f51" stroke-width="1.2"/>"##,
        step_path(&cols, |c| c.0, machines_max, TOP_PANEL, true)
    );
    let _ = writeln!(
        svg,
        r##"<path d="{}" fill="none" stroke="#2a9d8f" stroke-width="1.6"/>"##,
        step_path(&cols, |c| c.1, machines_max, TOP_PANEL, false)
    );
    let fleet_y = y_of(total_machines, machines_max, TOP_PANEL);
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{fleet_y:.1}" x2="{:.1}" y2="{fleet_y:.1}" stroke="#888" stroke-dasharray="6 4"/>"##,
        W - RIGHT
    );
    // Bottom: pending pods.
    let _ = writeln!(
        svg,
        r##"<path d="{}" fill="#457b9d" fill-opacity="0.5" stroke="#1d3557" stroke-width="1"/>"##,
        step_path(&cols, |c| c.2, pending_max, BOTTOM_PANEL, true)
    );
    // Direct labels (no legend hunt).
    let _ = writeln!(
        svg,
        r##"<rect x="{:.1}" y="{:.1}" width="12" height="12" fill="#f4a261" fill-opacity="0.6" stroke="#e76f51"/><text x="{:.1}" y="{:.1}" font-size="12" fill="#222">powered on (incl. booting / shutting down)</text>"##,
        LEFT + 10.0,
        TOP_PANEL.0 - 16.0,
        LEFT + 28.0,
        TOP_PANEL.0 - 6.0
    );
    let _ = writeln!(
        svg,
        r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#2a9d8f" stroke-width="2"/><text x="{:.1}" y="{:.1}" font-size="12" fill="#222">Ready nodes</text>"##,
        LEFT + 330.0,
        TOP_PANEL.0 - 10.0,
        LEFT + 350.0,
        TOP_PANEL.0 - 10.0,
        LEFT + 356.0,
        TOP_PANEL.0 - 6.0
    );
    let _ = writeln!(
        svg,
        r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#888" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}" font-size="12" fill="#222">all {total_machines} machines (always-on baseline)</text>"##,
        LEFT + 460.0,
        TOP_PANEL.0 - 10.0,
        LEFT + 490.0,
        TOP_PANEL.0 - 10.0,
        LEFT + 496.0,
        TOP_PANEL.0 - 6.0
    );
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" font-size="12" fill="#222">pods waiting for room (max per {})</text>"##,
        LEFT + 10.0,
        BOTTOM_PANEL.0 - 8.0,
        super::units::format_millis(end / COLUMNS as u64)
    );
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="13" fill="#222">virtual time (UTC)</text>"##,
        (LEFT + W - RIGHT) / 2.0,
        H - 22.0
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_keep_the_peak_and_carry_forward() {
        let s = vec![
            SeriesPoint {
                at: 0,
                powered: 1,
                ready: 1,
                pending: 0,
            },
            SeriesPoint {
                at: 10,
                powered: 1,
                ready: 1,
                pending: 7,
            },
            SeriesPoint {
                at: 11,
                powered: 2,
                ready: 1,
                pending: 0,
            },
        ];
        let c = columns(&s, COLUMNS as u64 * 100);
        assert_eq!(c[0], (2, 1, 7));
        assert_eq!(c[1], (2, 1, 0));
        assert_eq!(nice_max(7), 10);
        assert_eq!(nice_max(3), 5);
        assert_eq!(nice_max(0), 1);
    }
}
