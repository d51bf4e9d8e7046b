//! The one place that touches `serde_yaml` (deprecated upstream; kept behind this module so it
//! can be swapped for a maintained fork), plus a small deterministic YAML writer.
//!
//! Why our own writer: serde_yaml quotes only YAML 1.2 booleans, but kubectl reads YAML 1.1,
//! where a plain `on`, `off`, `yes` or `no` is a boolean. Our CRDs have the enum values `on`/`off`
//! and the properties `power.on`/`power.off`, which kubectl would turn into `true`/`false`.
//! The writer quotes every scalar a YAML 1.1 or 1.2 reader could take for a non-string.
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    #[error("cannot convert to YAML: {0}")]
    Serialize(#[source] serde_json::Error),
    #[error("{source_name}: document {index}: {error}")]
    Deserialize {
        source_name: String,
        /// 1-based position of the document in the stream.
        index: usize,
        #[source]
        error: serde_yaml::Error,
    },
}

/// One YAML document (block style, keys in the order serde gives them).
pub fn to_string<T: Serialize>(value: &T) -> Result<String, YamlError> {
    let value = serde_json::to_value(value).map_err(YamlError::Serialize)?;
    let mut out = String::new();
    write_document(&mut out, &value);
    Ok(out)
}

/// Documents each starting with `---`, each ending in a newline.
pub fn to_multi_doc<T: Serialize>(values: &[T]) -> Result<String, YamlError> {
    let mut out = String::new();
    for v in values {
        out.push_str("---\n");
        out.push_str(&to_string(v)?);
    }
    Ok(out)
}

/// Parses every non-empty document of a (multi-document) YAML stream. `source_name` (a file
/// name) starts each error message; serde_yaml's errors carry the line and column.
pub fn from_multi_doc<T: DeserializeOwned>(
    source_name: &str,
    text: &str,
) -> Result<Vec<T>, YamlError> {
    use serde::Deserialize as _;
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let err = |error| YamlError::Deserialize {
            source_name: source_name.to_owned(),
            index: i + 1,
            error,
        };
        let value = serde_yaml::Value::deserialize(doc).map_err(err)?;
        if value.is_null() {
            continue;
        }
        out.push(serde_yaml::from_value(value).map_err(err)?);
    }
    Ok(out)
}

/// Parses one YAML document.
pub fn from_str<T: DeserializeOwned>(source_name: &str, text: &str) -> Result<T, YamlError> {
    serde_yaml::from_str(text).map_err(|error| YamlError::Deserialize {
        source_name: source_name.to_owned(),
        index: 1,
        error,
    })
}

fn write_document(out: &mut String, v: &Value) {
    match v {
        Value::Object(m) if !m.is_empty() => write_map(out, m, 0),
        Value::Array(a) if !a.is_empty() => write_seq(out, a, 0),
        other => {
            write_scalar(out, other, 0);
            out.push('\n');
        }
    }
}

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

fn is_nested(v: &Value) -> bool {
    match v {
        Value::Object(m) => !m.is_empty(),
        Value::Array(a) => !a.is_empty(),
        _ => false,
    }
}

/// Writes `key: value` lines at `ind`; the first line's indentation is assumed written when
/// called for a sequence item (`- key: ...`), so the caller passes `first_done`.
fn write_map_entries(
    out: &mut String,
    m: &serde_json::Map<String, Value>,
    ind: usize,
    first_done: bool,
) {
    for (i, (k, v)) in m.iter().enumerate() {
        if i > 0 || !first_done {
            indent(out, ind);
        }
        out.push_str(&scalar_string(k, ind));
        out.push(':');
        match v {
            Value::Object(inner) if !inner.is_empty() => {
                out.push('\n');
                write_map(out, inner, ind + 2);
            }
            Value::Array(items) if !items.is_empty() => {
                out.push('\n');
                write_seq(out, items, ind);
            }
            scalar => {
                out.push(' ');
                write_scalar(out, scalar, ind + 2);
                out.push('\n');
            }
        }
    }
}

fn write_map(out: &mut String, m: &serde_json::Map<String, Value>, ind: usize) {
    write_map_entries(out, m, ind, false);
}

fn write_seq(out: &mut String, items: &[Value], ind: usize) {
    for item in items {
        indent(out, ind);
        out.push_str("- ");
        match item {
            Value::Object(m) if !m.is_empty() => write_map_entries(out, m, ind + 2, true),
            Value::Array(a) if !a.is_empty() => {
                out.push('\n');
                write_seq(out, a, ind + 2);
            }
            scalar => {
                write_scalar(out, scalar, ind + 2);
                out.push('\n');
            }
        }
    }
}

fn write_scalar(out: &mut String, v: &Value, block_indent: usize) {
    debug_assert!(!is_nested(v));
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => out.push_str(&scalar_string(s, block_indent)),
        Value::Object(_) => out.push_str("{}"),
        Value::Array(_) => out.push_str("[]"),
    }
}

/// A string as a YAML scalar: plain when no YAML 1.1/1.2 reader could read it as anything
/// else, a literal block for clean multi-line text, else quoted.
fn scalar_string(s: &str, block_indent: usize) -> String {
    if is_plain_safe(s) {
        return s.to_owned();
    }
    if s.contains('\n') && literal_block_ok(s) {
        let (body, chomp) = match s.strip_suffix('\n') {
            Some(b) => (b, ""),
            None => (s, "-"),
        };
        let mut out = format!("|{chomp}");
        for line in body.split('\n') {
            out.push('\n');
            if !line.is_empty() {
                out.push_str(&" ".repeat(block_indent));
                out.push_str(line);
            }
        }
        return out;
    }
    if s.chars().all(|c| !c.is_control()) {
        return format!("'{}'", s.replace('\'', "''"));
    }
    // JSON string syntax is valid YAML double-quoted syntax.
    serde_json::to_string(s).unwrap_or_else(|_| format!("'{}'", s.replace('\'', "''")))
}

fn literal_block_ok(s: &str) -> bool {
    let body = s.strip_suffix('\n').unwrap_or(s);
    !body.is_empty()
        && !body.starts_with([' ', '\n'])
        && !body.ends_with('\n')
        && body
            .split('\n')
            .all(|l| !l.ends_with([' ', '\t']) && l.chars().all(|c| c == '\t' || !c.is_control()))
}

const YAML11_SPECIAL: &[&str] = &[
    "y", "yes", "n", "no", "true", "false", "on", "off", "null", "~", ".inf", "-.inf", "+.inf",
    ".nan",
];

fn is_plain_safe(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    if YAML11_SPECIAL.contains(&s.to_ascii_lowercase().as_str()) {
        return false;
    }
    // Anything starting like a number (ints, floats, 0x.., 1:20 sexagesimal, 2024-01-01 dates).
    if first.is_ascii_digit()
        || matches!(first, '+' | '-' | '.')
            && s.chars()
                .nth(1)
                .is_none_or(|c| c.is_ascii_digit() || c == '.')
    {
        return false;
    }
    if !(first.is_ascii_alphabetic() || matches!(first, '.' | '/' | '_' | '$')) {
        return false;
    }
    if s.ends_with([' ', ':']) || s.contains(": ") || s.contains(" #") {
        return false;
    }
    s.chars().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                '.' | '_' | '/' | '-' | ' ' | '(' | ')' | '$' | '=' | ':' | '<' | '>'
            )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yaml11_booleans_and_numbers_are_quoted() {
        for s in [
            "on",
            "off",
            "On",
            "yes",
            "no",
            "y",
            "N",
            "true",
            "null",
            "~",
            "10m",
            "0.5",
            "1",
            "1e3",
            "0x1f",
            "-1",
            ".5",
            "2024-01-01",
            "",
        ] {
            assert!(!is_plain_safe(s), "{s:?}");
        }
        for s in [
            "v1alpha1",
            "infra.homecluster.dev",
            ".spec.powerState",
            "NoSchedule",
            "date-time",
            "homelab",
            "A sentence with words",
        ] {
            assert!(is_plain_safe(s), "{s:?}");
        }
    }

    #[test]
    fn round_trips_through_serde_yaml() {
        let v = json!({
            "on": {"enum": ["on", "off"], "default": "on"},
            "list": [{"a": 1, "b": [true, null]}, "x", [], {}],
            "text": "line one\nline two: with colon\n",
            "text2": "no trailing newline\n  indented",
            "quote": "it's 'quoted' # not a comment",
            "ctrl": "tab\there\u{1}",
            "float": 0.5,
            "empty": "",
            "weird": "- starts with dash",
        });
        let text = to_string(&v).unwrap();
        assert!(text.contains("'on':"), "{text}");
        assert!(text.contains("- 'off'"), "{text}");
        let back: Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(back, v, "{text}");
    }

    #[test]
    fn multi_doc_round_trip() {
        let docs = vec![json!({"a": "on"}), json!({"b": [1, 2]})];
        let text = to_multi_doc(&docs).unwrap();
        assert!(text.starts_with("---\n"));
        let back: Vec<Value> = from_multi_doc("test.yaml", &text).unwrap();
        assert_eq!(back, docs);
    }

    #[test]
    fn parse_errors_name_the_source() {
        let e = from_multi_doc::<Value>("broken.yaml", "a: 1\n---\nb: [\n").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("broken.yaml") && msg.contains("document 2"),
            "{msg}"
        );
    }
}
