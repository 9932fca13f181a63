//! YAML text → JSON values, keeping the line and column of every node.
//!
//! serde_yaml drops positions, so documents are built here from yaml-rust2's event stream. This
//! is also where hostile input is stopped before it costs memory: alias expansion is counted
//! against a budget (billion laughs), nesting depth is bounded, and duplicate keys, complex
//! keys and non-JSON scalars are refused with the position of the offending node.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::{Limits, Position, Spans};

/// One YAML document of a file, before its kind is known.
#[derive(Debug)]
pub struct RawDocument {
    /// 0-based index among the file's non-empty documents.
    pub index: usize,
    pub start: Position,
    pub value: Value,
    pub spans: Spans,
}

/// Why a file could not be read as YAML; `position` is where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub position: Position,
    pub message: String,
}

/// Parses every document of `text`. Stops at the first error: after one, yaml-rust2's parser
/// state is not trustworthy, and one clear error per file beats a cascade.
pub fn parse_documents(text: &str, limits: &Limits) -> Result<Vec<RawDocument>, YamlError> {
    let mut builder = Builder {
        parser: Parser::new_from_str(text),
        limits,
        anchors: HashMap::new(),
        expanded: 0,
        spans: Spans::default(),
        keys: Vec::new(),
    };
    let mut documents = Vec::new();
    loop {
        let (event, mark) = builder.next()?;
        match event {
            Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
            Event::StreamEnd => break,
            Event::DocumentStart => {
                builder.anchors.clear();
                builder.expanded = 0;
                let (event, mark) = builder.next()?;
                let mark = builder.start_mark(&event, mark);
                let start = position(&mark);
                let (value, _) = builder.node(event, mark, Spans::ROOT, 0)?;
                let spans = std::mem::take(&mut builder.spans);
                if !value.is_null() {
                    documents.push(RawDocument {
                        index: documents.len(),
                        start,
                        value,
                        spans,
                    });
                }
            }
            other => {
                return Err(YamlError {
                    position: position(&mark),
                    message: format!("unexpected YAML event {other:?}"),
                })
            }
        }
    }
    Ok(documents)
}

fn position(mark: &Marker) -> Position {
    // yaml-rust2 counts lines from 1 and columns from 0.
    Position {
        line: mark.line() as u32,
        col: mark.col() as u32 + 1,
    }
}

struct Builder<'a> {
    parser: Parser<std::str::Chars<'a>>,
    limits: &'a Limits,
    /// Anchored nodes of the current document with their node counts.
    anchors: HashMap<usize, (Value, usize)>,
    /// Nodes produced by alias expansion so far in this document.
    expanded: usize,
    spans: Spans,
    /// The span ids of the explicit keys of the mappings being read, outermost first.
    keys: Vec<u32>,
}

impl Builder<'_> {
    fn next(&mut self) -> Result<(Event, Marker), YamlError> {
        self.parser.next_token().map_err(|err| YamlError {
            position: position(err.marker()),
            message: if err.info().contains("recursion limit") {
                "nesting deeper than the YAML parser allows".to_owned()
            } else {
                format!("invalid YAML: {}", err.info())
            },
        })
    }

    /// Where a node starts. yaml-rust2 marks a block mapping where it recognised its first
    /// key (at the `:`), so a mapping is placed at its first key instead.
    fn start_mark(&mut self, event: &Event, mark: Marker) -> Marker {
        if matches!(event, Event::MappingStart(..)) {
            if let Ok((Event::Scalar(..), key_mark)) = self.parser.peek() {
                return *key_mark;
            }
        }
        mark
    }

    fn error<T>(&self, mark: &Marker, message: String) -> Result<T, YamlError> {
        Err(YamlError {
            position: position(mark),
            message,
        })
    }

    /// Builds the node that starts with `event`; returns it with its node count.
    fn node(
        &mut self,
        event: Event,
        mark: Marker,
        parent: u32,
        depth: usize,
    ) -> Result<(Value, usize), YamlError> {
        if depth > self.limits.max_depth {
            return self.error(
                &mark,
                format!("nesting deeper than {} levels", self.limits.max_depth),
            );
        }
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                let value = scalar(text, style, tag.as_ref())
                    .or_else(|message| self.error(&mark, message))?;
                self.remember(anchor, &value, 1);
                Ok((value, 1))
            }
            Event::Alias(anchor) => {
                let Some((value, count)) = self.anchors.get(&anchor) else {
                    return self.error(&mark, "alias to an unknown anchor".into());
                };
                self.expanded += count;
                if self.expanded > self.limits.max_alias_nodes {
                    return self.error(
                        &mark,
                        format!(
                            "YAML aliases expand to more than {} nodes (a \"billion laughs\" document?)",
                            self.limits.max_alias_nodes
                        ),
                    );
                }
                Ok((value.clone(), *count))
            }
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                let mut count = 1;
                loop {
                    let (event, mark) = self.next()?;
                    if matches!(event, Event::SequenceEnd) {
                        break;
                    }
                    let mark = self.start_mark(&event, mark);
                    let id = self
                        .spans
                        .record_index(parent, items.len(), position(&mark));
                    let (item, n) = self.node(event, mark, id, depth + 1)?;
                    items.push(item);
                    count += n;
                }
                let value = Value::Array(items);
                self.remember(anchor, &value, count);
                Ok((value, count))
            }
            Event::MappingStart(anchor, _) => {
                let (value, count) = self.mapping(parent, depth)?;
                self.remember(anchor, &value, count);
                Ok((value, count))
            }
            other => self.error(&mark, format!("unexpected YAML event {other:?}")),
        }
    }

    fn mapping(&mut self, parent: u32, depth: usize) -> Result<(Value, usize), YamlError> {
        let mut map = Map::new();
        // This mapping's explicit keys are `self.keys[keys..]`, in the map's order.
        let keys = self.keys.len();
        let mut merged: Vec<Map<String, Value>> = Vec::new();
        let mut count = 1;
        loop {
            let (event, key_mark) = self.next()?;
            let key = match event {
                Event::MappingEnd => break,
                Event::Scalar(text, ..) => text,
                Event::Alias(_) | Event::SequenceStart(..) | Event::MappingStart(..) => {
                    return self.error(
                        &key_mark,
                        "only plain scalar keys are supported (Kubernetes objects are JSON)".into(),
                    )
                }
                other => return self.error(&key_mark, format!("unexpected YAML event {other:?}")),
            };
            let (event, mark) = self.next()?;
            if key == "<<" {
                // YAML 1.1 merge key, as Kubernetes' YAML decoder accepts it.
                let (value, n) = self.node(event, mark, parent, depth + 1)?;
                count += n;
                match value {
                    Value::Object(m) => merged.push(m),
                    Value::Array(items) if items.iter().all(Value::is_object) => {
                        merged.extend(items.into_iter().filter_map(|item| match item {
                            Value::Object(m) => Some(m),
                            _ => None,
                        }))
                    }
                    _ => return self.error(&mark, "a merge key (<<) needs a mapping".into()),
                }
                continue;
            }
            let entry = match map.entry(key) {
                serde_json::map::Entry::Vacant(entry) => entry,
                serde_json::map::Entry::Occupied(entry) => {
                    let key = entry.key();
                    let segment = key.replace('~', "~0").replace('/', "~1");
                    let first = self.keys[keys..]
                        .iter()
                        .find(|&&id| self.spans.segment(id) == segment)
                        .map_or(0, |&id| self.spans.position_of(id).line);
                    return self.error(
                        &key_mark,
                        format!("duplicate key \"{key}\" (first defined on line {first})"),
                    );
                }
            };
            let id = self
                .spans
                .record_key(parent, entry.key(), position(&key_mark));
            self.keys.push(id);
            let (value, n) = self.node(event, mark, id, depth + 1)?;
            count += n;
            entry.insert(value);
        }
        self.keys.truncate(keys);
        // Explicit keys win over merged ones; earlier merge sources win over later ones.
        for source in merged {
            for (key, value) in source {
                map.entry(key).or_insert(value);
            }
        }
        Ok((Value::Object(map), count))
    }

    fn remember(&mut self, anchor: usize, value: &Value, count: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, (value.clone(), count));
        }
    }
}

/// Resolves a scalar with the YAML 1.2 core schema (as serde_yaml does); quoted and block
/// scalars and `!!str` are always strings.
fn scalar(text: String, style: TScalarStyle, tag: Option<&Tag>) -> Result<Value, String> {
    if style != TScalarStyle::Plain || tag.is_some_and(|t| t.suffix == "str") {
        return Ok(Value::String(text));
    }
    Ok(match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => Value::Null,
        "true" | "True" | "TRUE" => Value::Bool(true),
        "false" | "False" | "FALSE" => Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" | "-.inf" | "-.Inf" | "-.INF"
        | ".nan" | ".NaN" | ".NAN" => {
            return Err(format!("{text} cannot be represented in JSON; quote it"))
        }
        _ => match number(&text) {
            Some(number) => number,
            None => Value::String(text),
        },
    })
}

fn number(text: &str) -> Option<Value> {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    let negative = text.starts_with('-');
    if let Some(octal) = digits.strip_prefix("0o") {
        let n = i64::from_str_radix(octal, 8).ok()?;
        return Some(Value::from(if negative { -n } else { n }));
    }
    if let Some(hex) = digits.strip_prefix("0x") {
        let n = i64::from_str_radix(hex, 16).ok()?;
        return Some(Value::from(if negative { -n } else { n }));
    }
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = text.parse::<i64>() {
            return Some(Value::from(n));
        }
        if let Ok(n) = text.parse::<u64>() {
            return Some(Value::from(n));
        }
    }
    if is_float(digits) {
        return text
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number);
    }
    None
}

/// `(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?` without the sign.
fn is_float(s: &str) -> bool {
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => {
            (!int.is_empty() || !frac.is_empty())
                && int.bytes().all(|b| b.is_ascii_digit())
                && frac.bytes().all(|b| b.is_ascii_digit())
        }
        None => !mantissa.is_empty() && mantissa.bytes().all(|b| b.is_ascii_digit()),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit())
    });
    mantissa_ok && exponent_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(text: &str) -> Result<Vec<RawDocument>, YamlError> {
        parse_documents(text, &Limits::default())
    }

    fn one(text: &str) -> Value {
        let mut docs = parse(text).unwrap();
        assert_eq!(docs.len(), 1);
        docs.remove(0).value
    }

    #[test]
    fn resolves_scalars_with_the_core_schema() {
        let value = one(
            "a: 1\nb: -2\nc: 0.5\nd: true\ne: ~\nf: '1'\ng: yes\nh: 1e3\ni: 0x1F\nj: 100m\nk: !!str 7\n",
        );
        assert_eq!(
            value,
            json!({"a": 1, "b": -2, "c": 0.5, "d": true, "e": null, "f": "1", "g": "yes",
                   "h": 1000.0, "i": 31, "j": "100m", "k": "7"})
        );
    }

    #[test]
    fn records_positions_of_keys_and_items() {
        let docs = parse("---\nkind: Function\nspec:\n  topics:\n    - a\n    - b\n").unwrap();
        let spans = &docs[0].spans;
        assert_eq!(spans.get("/kind"), Some(Position { line: 2, col: 1 }));
        assert_eq!(
            spans.get("/spec/topics"),
            Some(Position { line: 4, col: 3 })
        );
        assert_eq!(
            spans.get("/spec/topics/1"),
            Some(Position { line: 6, col: 7 })
        );
    }

    #[test]
    fn spans_of_one_path_written_twice_are_the_later_ones() {
        let docs =
            parse("m:\n  <<: {a: {x: 1}}\n  a:\n    y: 2\n\"s/l\": {\"t~\": [0, 1]}\n").unwrap();
        let spans = &docs[0].spans;
        assert_eq!(spans.get("/m/a"), Some(Position { line: 3, col: 3 }));
        assert_eq!(spans.get("/m/a/x"), Some(Position { line: 2, col: 12 }));
        assert_eq!(spans.get("/m/a/y"), Some(Position { line: 4, col: 5 }));
        assert_eq!(
            spans.get("/s~1l/t~0/1"),
            Some(Position { line: 5, col: 19 })
        );
        assert_eq!(spans.get("/s/l"), None);
        assert_eq!(spans.get("/m/b"), None);
        assert_eq!(spans.get(""), None);
        assert_eq!(spans.locate("/m/a/y/z"), Some(Position { line: 4, col: 5 }));
    }

    #[test]
    fn a_duplicate_key_names_the_first_explicit_one() {
        let err = parse("m:\n  <<: {c: 5}\n  c: 1\n  d: {c: 0}\n  c: 2\n").unwrap_err();
        assert_eq!(err.position, Position { line: 5, col: 3 });
        assert!(
            err.message
                .contains("duplicate key \"c\" (first defined on line 3)"),
            "{}",
            err.message
        );
    }

    #[test]
    fn splits_documents_and_skips_empty_ones() {
        let docs = parse("a: 1\n---\n# only a comment\n---\nb: 2\n---\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].value, json!({"b": 2}));
        assert_eq!(docs[1].index, 1);
        assert_eq!(docs[1].start.line, 5);
    }

    #[test]
    fn rejects_duplicate_keys_at_the_second_one() {
        let err = parse("a: 1\nb:\n  c: 1\n  c: 2\n").unwrap_err();
        assert_eq!(err.position, Position { line: 4, col: 3 });
        assert!(err
            .message
            .contains("duplicate key \"c\" (first defined on line 3)"));
    }

    #[test]
    fn stops_billion_laughs() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h"]
            .iter()
            .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
        {
            text.push_str(&format!(
                "{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        let err = parse(&text).unwrap_err();
        assert!(err.message.contains("billion laughs"), "{}", err.message);
    }

    #[test]
    fn allows_modest_aliases_and_merge_keys() {
        let value = one("base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  y: 3\nlist: [*b]\n");
        assert_eq!(
            value,
            json!({"base": {"x": 1, "y": 2}, "use": {"x": 1, "y": 3}, "list": [{"x": 1, "y": 2}]})
        );
    }

    #[test]
    fn bounds_nesting_depth() {
        let text = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let err = parse_documents(&text, &Limits::default()).unwrap_err();
        assert!(
            err.message.contains("nesting deeper than") || err.message.contains("recursion limit"),
            "{}",
            err.message
        );
    }

    #[test]
    fn rejects_complex_keys_and_non_json_numbers() {
        assert!(parse("? [a, b]\n: 1\n")
            .unwrap_err()
            .message
            .contains("scalar keys"));
        assert!(parse("a: .nan\n").unwrap_err().message.contains("JSON"));
    }

    #[test]
    fn reports_syntax_errors_with_position() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.message.starts_with("invalid YAML"));
        assert!(err.position.line >= 1);
    }
}
