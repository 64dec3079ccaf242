//! YAML text in and out: multi-document YAML read into JSON values as Kubernetes reads it
//! (bounded, so no text can exhaust memory or the stack), and JSON written back as YAML for
//! `weft get`.
//!
//! The bounds are checked on the parser's events before anything is built: nesting depth, and
//! the size the text would have once every alias is expanded — in nodes and in bytes of
//! scalar text — because an alias copies its anchor's whole node, so a few lines of aliases of
//! a large anchor ("billion laughs", or one 1 MiB string aliased a thousand times) would
//! otherwise allocate without limit.

use serde_json::{Map, Value};
use std::collections::HashMap;
use yaml_rust2::parser::Parser;
use yaml_rust2::{Event, ScanError, Yaml, YamlEmitter, YamlLoader};

/// How deep one document may nest: Istio resources need about ten levels, and the YAML reader
/// and everything after it recurse per level, so unbounded nesting would overflow the stack.
pub const MAX_DEPTH: usize = 100;

/// How many nodes a text may hold once aliases are expanded.
pub const MAX_NODES: u64 = 1_000_000;

/// How many bytes of scalar text a text may hold once aliases are expanded: well above any
/// set of Istio resources, far below what would strain the control plane.
pub const MAX_EXPANDED_BYTES: u64 = 8 << 20;

/// Reads every document of `text`, bounded as the module says; an error names `source`, the
/// line and the column.
pub fn load(text: &str, source: &str) -> Result<Vec<Yaml>, Vec<String>> {
    check_size(text, source)?;
    YamlLoader::load_from_str(text).map_err(|e| vec![syntax_error(source, &e)])
}

/// What an anchored node expands to when aliased.
#[derive(Clone, Copy, Default)]
struct Size {
    nodes: u64,
    bytes: u64,
}

/// Walks the text's events (iteratively, building nothing) and refuses what would be too deep
/// or too large to load.
fn check_size(text: &str, source: &str) -> Result<(), Vec<String>> {
    let mut parser = Parser::new_from_str(text);
    // Collections still open: the running size when each opened, and its anchor.
    let mut open: Vec<(Size, usize)> = Vec::new();
    let mut anchored: HashMap<usize, Size> = HashMap::new();
    let mut total = Size::default();
    let at = |mark: yaml_rust2::scanner::Marker, what: String| {
        vec![format!(
            "{source}: line {}, column {}: {what}",
            mark.line(),
            mark.col() + 1
        )]
    };
    loop {
        let (event, mark) = parser
            .next_token()
            .map_err(|e| vec![syntax_error(source, &e)])?;
        match event {
            Event::StreamEnd => return Ok(()),
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                total.nodes += 1;
                open.push((total, anchor));
                if open.len() > MAX_DEPTH {
                    return Err(at(mark, format!("nested deeper than {MAX_DEPTH} levels")));
                }
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((start, anchor)) = open.pop()
                    && anchor > 0
                {
                    let size = Size {
                        nodes: total.nodes - start.nodes + 1,
                        bytes: total.bytes - start.bytes,
                    };
                    anchored.insert(anchor, size);
                }
            }
            Event::Scalar(value, _, anchor, _) => {
                let size = Size {
                    nodes: 1,
                    bytes: value.len() as u64,
                };
                total.nodes += 1;
                total.bytes += size.bytes;
                if anchor > 0 {
                    anchored.insert(anchor, size);
                }
            }
            Event::Alias(anchor) => {
                let size = anchored
                    .get(&anchor)
                    .copied()
                    .unwrap_or(Size { nodes: 1, bytes: 0 });
                total.nodes = total.nodes.saturating_add(size.nodes);
                total.bytes = total.bytes.saturating_add(size.bytes);
            }
            _ => {}
        }
        if total.nodes > MAX_NODES {
            return Err(at(
                mark,
                format!("more than {MAX_NODES} nodes once aliases are expanded"),
            ));
        }
        if total.bytes > MAX_EXPANDED_BYTES {
            return Err(at(
                mark,
                format!(
                    "more than {} MiB of text once aliases are expanded",
                    MAX_EXPANDED_BYTES >> 20
                ),
            ));
        }
    }
}

fn syntax_error(source: &str, e: &ScanError) -> String {
    // yaml-rust2 names a duplicated key by its Debug form (`String("a")`).
    let info = match e.info().strip_suffix(": duplicated key in mapping") {
        Some(key) => {
            let key = key
                .strip_prefix("String(")
                .and_then(|k| k.strip_suffix(')'));
            format!("duplicated key {}", key.unwrap_or("in mapping"))
        }
        None => e.info().to_string(),
    };
    // The marker's column counts from 0; editors count from 1.
    format!(
        "{source}: line {}, column {}: invalid YAML: {}",
        e.marker().line(),
        e.marker().col() + 1,
        clip(&info, 200),
    )
}

/// `text` cut to at most `max` bytes (on a character boundary), saying how long it was: values
/// echoed in errors must not make the error as large as the input.
pub fn clip(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..cut], text.len()).into()
}

/// Writes a JSON value as a YAML document (without the leading `---`), for `weft get -o yaml`.
/// What it writes reads back, through [`load`] and [`to_json`], as the same value.
pub fn to_yaml(value: &Value) -> String {
    let yaml = from_json(value);
    let mut out = String::new();
    let mut emitter = YamlEmitter::new(&mut out);
    if emitter.dump(&yaml).is_err() {
        // Writing to a String cannot fail; should it ever, JSON is YAML too.
        return serde_json::to_string_pretty(value).unwrap_or_default() + "\n";
    }
    let body = out.strip_prefix("---\n").unwrap_or(&out);
    format!("{body}\n")
}

/// Turns a YAML node into JSON, as Kubernetes does: mapping keys that are scalars become
/// strings; anything JSON cannot hold is an error naming its path.
pub fn to_json(node: &Yaml, path: &str) -> Result<Value, String> {
    let here = |message: &str| {
        if path.is_empty() {
            message.to_string()
        } else {
            format!("{path}: {message}")
        }
    };
    Ok(match node {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Real(text) => {
            let n = text
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .ok_or_else(|| here(&format!("{} is not a finite number", clip(text, 64))))?;
            Value::Number(n)
        }
        Yaml::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| to_json(item, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Yaml::Hash(entries) => {
            let mut object = Map::new();
            // YAML merge keys (`<<: *base`), as kubectl reads them: the merged mappings'
            // entries join this one's, its own keys winning, earlier merged mappings before
            // later ones.
            let mut merged: Vec<&Yaml> = Vec::new();
            for (k, v) in entries {
                if matches!(k, Yaml::String(s) if s == "<<") {
                    match v {
                        Yaml::Hash(_) => merged.push(v),
                        Yaml::Array(items) if items.iter().all(|i| matches!(i, Yaml::Hash(_))) => {
                            merged.extend(items.iter());
                        }
                        _ => {
                            return Err(here(
                                "a merge key (<<) takes a mapping or a list of mappings",
                            ));
                        }
                    }
                    continue;
                }
                let key = match k {
                    Yaml::String(s) | Yaml::Real(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    Yaml::Null => "null".to_string(),
                    _ => return Err(here("a mapping key must be a scalar")),
                };
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{}", clip(&key, 64))
                };
                object.insert(key, to_json(v, &child)?);
            }
            for m in merged {
                if let Value::Object(extra) = to_json(m, path)? {
                    for (k, v) in extra {
                        object.entry(k).or_insert(v);
                    }
                }
            }
            Value::Object(object)
        }
        Yaml::Alias(_) => return Err(here("unresolved alias")),
        Yaml::BadValue => return Err(here("invalid value (does it match its tag?)")),
    })
}

fn from_json(value: &Value) -> Yaml {
    match value {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            // Written as Rust writes floats: always reads back as a float (`10.0`, `1e300`).
            None => Yaml::Real(
                n.as_f64()
                    .map(|f| format!("{f:?}"))
                    .unwrap_or_else(|| n.to_string()),
            ),
        },
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(items) => Yaml::Array(items.iter().map(from_json).collect()),
        Value::Object(entries) => Yaml::Hash(
            entries
                .iter()
                .map(|(k, v)| (Yaml::String(k.clone()), from_json(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors_of(text: &str) -> String {
        match load(text, "t.yaml") {
            Ok(d) => panic!("expected errors, loaded {} documents", d.len()),
            Err(e) => e.join("\n"),
        }
    }

    #[test]
    fn merge_keys_read_as_kubectl_reads_them() {
        let docs = load(
            "base: &base { attempts: 3, perTryTimeout: 2s }\n\
             more: &more { retryOn: 5xx, attempts: 9 }\n\
             one: { <<: *base, attempts: 5 }\n\
             two: { <<: [*base, *more] }\n",
            "t.yaml",
        )
        .expect("loads");
        let v = to_json(&docs[0], "").expect("converts");
        assert_eq!(v["one"], json!({"attempts": 5, "perTryTimeout": "2s"}));
        assert_eq!(
            v["two"],
            json!({"attempts": 3, "perTryTimeout": "2s", "retryOn": "5xx"})
        );
        let docs = load("a: { <<: 3 }\n", "t.yaml").expect("loads");
        let err = to_json(&docs[0], "").expect_err("not a mapping");
        assert!(err.contains("merge key"), "{err}");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let all = errors_of("metadata: { name: payments\nspec: {}\n");
        assert!(all.starts_with("t.yaml: line "), "{all}");
        assert!(all.contains("invalid YAML"), "{all}");
        assert_eq!(
            errors_of("a: 1\na: 2\n"),
            "t.yaml: line 2, column 4: invalid YAML: duplicated key \"a\""
        );
    }

    #[test]
    fn aliases_and_nesting_are_bounded_in_nodes() {
        // Ten aliases of ten aliases, seven deep: 10^7 nodes from a few lines.
        let mut text = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n".to_string();
        for level in 1..7 {
            let refs = vec![format!("*a{}", level - 1); 10].join(", ");
            text.push_str(&format!("a{level}: &a{level} [{refs}]\n"));
        }
        assert!(errors_of(&text).contains("nodes once aliases are expanded"));
        assert!(errors_of(&"[".repeat(150)).contains("nested deeper than 100 levels"));
        assert!(errors_of(&format!("{}x\n", "- ".repeat(5000))).contains("nested deeper than 100"));
    }

    #[test]
    fn aliases_are_bounded_in_bytes() {
        // One 1 MiB string aliased 300 times: 300 nodes, 300 MiB once expanded.
        let big = "x".repeat(1 << 20);
        let mut text = format!("a: &big {big}\nb: [");
        text.push_str(&vec!["*big"; 300].join(", "));
        text.push_str("]\n");
        let all = errors_of(&text);
        assert!(
            all.contains("MiB of text once aliases are expanded"),
            "{all}"
        );
        assert!(all.len() < 300, "the error does not echo the value: {all}");
        // The same through an anchored collection.
        let mut text = format!("a: &big [{big}, {big}]\nb: [");
        text.push_str(&["*big"; 5].join(", "));
        text.push_str("]\n");
        assert!(errors_of(&text).contains("MiB of text once aliases are expanded"));
        // A few aliases of a small anchor are fine, and read as copies.
        let docs = load("a: &r [1, 2]\nb: *r\n", "t.yaml").expect("loads");
        let v = to_json(&docs[0], "").expect("json");
        assert_eq!(v["a"], v["b"]);
    }

    #[test]
    fn clip_cuts_on_a_character_boundary_and_says_how_long() {
        assert_eq!(clip("short", 10), "short");
        let cut = clip("ééééé", 3);
        assert_eq!(cut, "é… (10 bytes in all)");
    }

    #[test]
    fn to_yaml_round_trips_tricky_values() {
        // Strings that look like other things stay strings; numbers stay numbers.
        let tricky = json!({"a": "5", "b": "true", "c": "", "d": "x: y", "e": "-1", "f": 2.5,
                            "g": 10.0, "h": [], "i": {}, "j": null, "k": "line\nbreak", "l": "~",
                            "m": " padded ", "n": [{"x": 1}, {"y": [1, 2]}], "o": "#hash", "p": 7});
        let text = to_yaml(&tricky);
        let docs = load(&text, "t.yaml").expect("valid YAML");
        assert_eq!(to_json(&docs[0], "").expect("json"), tricky, "{text}");
    }
}
