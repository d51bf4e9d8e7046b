//! Renderings of the transition table (Mermaid, Graphviz DOT, Markdown), for
//! `fsm inspect --graph` and the docs. Generated from [`TABLE`], never written by hand.
use std::fmt::Write as _;

use super::table::{Row, TABLE};
use super::types::Phase;

/// Output format of [`render`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphFormat {
    Mermaid,
    Dot,
    Markdown,
}

fn label(r: &Row) -> String {
    if r.guard.is_empty() {
        r.event.as_str().to_owned()
    } else {
        format!("{} [{}]", r.event, r.guard_text())
    }
}

/// The whole table in `format`.
pub fn render(format: GraphFormat) -> String {
    let mut s = String::new();
    // Writing into a String cannot fail.
    match format {
        GraphFormat::Mermaid => {
            s.push_str("stateDiagram-v2\n");
            let _ = writeln!(s, "    [*] --> {}", Phase::Unknown);
            for r in TABLE {
                let _ = writeln!(s, "    {} --> {}: {}", r.from, r.to, label(r));
            }
        }
        GraphFormat::Dot => {
            s.push_str(
                "digraph lifecycle {\n    rankdir=LR;\n    node [shape=box, style=rounded];\n",
            );
            for p in Phase::ALL {
                let _ = writeln!(s, "    \"{p}\";");
            }
            for r in TABLE {
                let _ = writeln!(
                    s,
                    "    \"{}\" -> \"{}\" [label=\"{}\"];",
                    r.from,
                    r.to,
                    label(r).replace('"', "\\\"")
                );
            }
            s.push_str("}\n");
        }
        GraphFormat::Markdown => {
            s.push_str("| from | event | guard | to | effects |\n|---|---|---|---|---|\n");
            for r in TABLE {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} |",
                    r.from,
                    r.event,
                    r.guard_text(),
                    r.to,
                    r.effects.replace('|', "\\|")
                );
            }
        }
    }
    s
}
