//! Finds the line of a field path (`machines[2].simulation.bootTime`) in block-style YAML, for
//! errors found after parsing (cross-field checks), where serde_yaml has no position to give.
//! Flow-style YAML (`{a: 1}`) is not walked into: the error then points at the closest
//! enclosing field found.

/// One step of a path.
#[derive(Debug, PartialEq, Eq)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        while let Some(stripped) = rest.strip_prefix('[') {
            let Some(end) = stripped.find(']') else { break };
            if let Ok(i) = stripped[..end].parse() {
                out.push(Seg::Index(i));
            }
            rest = &stripped[end + 1..];
        }
    }
    out
}

struct Line<'a> {
    number: usize,
    indent: usize,
    text: &'a str,
}

/// Returns the 1-based (line, column) of the deepest part of `path` found in `text`.
pub fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    let lines: Vec<Line> = text
        .lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let trimmed = l.trim_start();
            (!trimmed.is_empty() && !trimmed.starts_with('#') && trimmed != "---").then(|| Line {
                number: i + 1,
                indent: l.len() - trimmed.len(),
                text: trimmed,
            })
        })
        .collect();
    // The current block: lines[start..end] at indentation >= min_indent; and where within a
    // line the current node starts (after "- " markers).
    let (mut start, mut end) = (0usize, lines.len());
    let mut found: Option<(usize, usize)> = None;
    // Column offset of the node inside the first line of the block (after "- ").
    let mut inline_col: Option<usize> = None;
    for seg in segments(path) {
        match seg {
            Seg::Key(key) => {
                let want = format!("{key}:");
                let mut hit = None;
                // A key may sit on the block's first line after "- ".
                if let Some(col) = inline_col {
                    let l = &lines[start];
                    let rest = l.text.get(col.saturating_sub(l.indent)..).unwrap_or("");
                    if rest.starts_with(&want) {
                        hit = Some((start, col));
                    }
                }
                if hit.is_none() {
                    let Some(base) = lines[start..end].iter().map(|l| l.indent).min() else {
                        break;
                    };
                    let base = match inline_col {
                        Some(col) if start < end => col.max(base),
                        _ => base,
                    };
                    for (i, l) in lines.iter().enumerate().take(end).skip(start) {
                        if l.indent == base && l.text.starts_with(&want) {
                            hit = Some((i, l.indent));
                            break;
                        }
                    }
                }
                let Some((i, col)) = hit else { break };
                found = Some((lines[i].number, col + 1));
                // The value's block: following lines indented deeper than the key.
                let key_indent = col;
                // Sequences may sit at the same indentation as their key.
                let mut j = i + 1;
                while j < end
                    && (lines[j].indent > key_indent
                        || (lines[j].indent == key_indent
                            && (lines[j].text.starts_with("- ")
                                || lines[j].text.trim_end() == "-")))
                {
                    j += 1;
                }
                start = i + 1;
                end = j;
                inline_col = None;
                if start >= end {
                    break;
                }
            }
            Seg::Index(n) => {
                let Some(base) = lines.get(start).map(|l| l.indent) else {
                    break;
                };
                let mut count = 0;
                let mut hit = None;
                for (i, l) in lines.iter().enumerate().take(end).skip(start) {
                    if l.indent == base && (l.text.starts_with("- ") || l.text.trim_end() == "-") {
                        if count == n {
                            hit = Some(i);
                            break;
                        }
                        count += 1;
                    }
                }
                let Some(i) = hit else { break };
                found = Some((lines[i].number, lines[i].indent + 1));
                let mut j = i + 1;
                while j < end && lines[j].indent > base {
                    j += 1;
                }
                if lines[i].text.trim_end() == "-" {
                    // A bare `-`: the item's content starts on the next line.
                    start = i + 1;
                    inline_col = None;
                    if start >= j {
                        break;
                    }
                } else {
                    start = i;
                    inline_col = Some(base + 2);
                }
                end = j;
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
seed: 1
groups:
  - metadata:
      name: small
    spec:
      minSize: 1
machines:
- metadata:
    name: a
  spec: {}
- metadata:
    name: b
  simulation:
    bootTime: 90x
";

    #[test]
    fn finds_nested_fields_and_list_items() {
        assert_eq!(locate(DOC, "seed"), Some((1, 1)));
        assert_eq!(locate(DOC, "groups[0].spec.minSize"), Some((6, 7)));
        assert_eq!(locate(DOC, "groups[0].metadata.name"), Some((4, 7)));
        assert_eq!(locate(DOC, "machines[1]"), Some((11, 1)));
        assert_eq!(locate(DOC, "machines[1].metadata"), Some((11, 3)));
        assert_eq!(
            locate(DOC, "machines[1].simulation.bootTime"),
            Some((14, 5))
        );
        // Missing leaf: the closest parent.
        assert_eq!(locate(DOC, "machines[0].spec.capacity"), Some((10, 3)));
    }

    /// A bare `-` puts the item's fields on the following lines; it used to slice past the end
    /// of the `-` line and panic.
    #[test]
    fn bare_dash_items_are_walked_into_without_panicking() {
        let doc =
            "machines:\n-\n  metadata:\n    name: a\n  spec:\n    x: 1\n- \n    spec: {}\n-\n";
        assert_eq!(locate(doc, "machines[0].spec.x"), Some((6, 5)));
        assert_eq!(locate(doc, "machines[1].spec"), Some((8, 5)));
        // An empty last item: the item itself.
        assert_eq!(locate(doc, "machines[2].spec"), Some((9, 1)));
        for path in ["machines[0]", "machines[5].spec", "a.b[3].c", "[0]", ""] {
            let _ = locate(doc, path);
            let _ = locate("-\n", path);
            let _ = locate("- \n-", path);
        }
    }
}
