//! One rendered object → its YAML document, written straight from the `serde_json::Value`.
//!
//! This is a hand-written emitter, kept on purpose: no maintained crate writes YAML from a
//! `serde_json::Value` in this style, and going through yaml-rust2's `Yaml` tree (a copy of
//! every node, then its emitter's `fmt::Write` calls) was the largest single cost of
//! `meshops render` (docs/performance.md). It reproduces byte for byte what
//! `yaml_rust2::YamlEmitter` (0.10, compact, `multiline_strings(true)`) writes for the same
//! value: the same block layout, the same quoting rules ([`need_quotes`] is a transcription of
//! yaml-rust2's), the same escapes and the same literal blocks. The unit tests below compare
//! the two on every shape the emitter distinguishes and on thousands of random values built
//! from awkward strings; `tests/render.rs` reads every rendered document back.
//!
//! A document holding a string that a YAML 1.1 reader would take for a number (`1_000`,
//! `0b101`, `0X1F`) is written as JSON instead (see [`ambiguous`]).

use std::fmt::Write as _;

use serde_json::{Map, Value};

/// Up to this many levels of indentation come from one slice.
const SPACES: &str = "                                                                ";

/// The document of `value`, `---` line and final newline included, appended to `out`.
pub fn write_document(value: &Value, out: &mut String) {
    let start = out.len();
    out.push_str("---\n");
    let mut writer = Writer { out, level: -1 };
    if writer.node(value).is_ok() {
        out.push('\n');
        return;
    }
    out.truncate(start);
    // A Value always serializes, and a String takes whatever is written into it.
    let json = serde_json::to_string_pretty(value).unwrap_or_default();
    out.push_str("---\n");
    out.push_str(&json);
    out.push('\n');
}

/// The value holds a string that must not be written plain; the document becomes JSON.
struct Ambiguous;

struct Writer<'a> {
    out: &'a mut String,
    /// yaml-rust2's `level`: -1 at the root, +1 per block collection and literal block.
    level: isize,
}

impl Writer<'_> {
    fn indent(&mut self) {
        if self.level <= 0 {
            return;
        }
        let mut width = self.level as usize * 2;
        while width > 0 {
            let step = width.min(SPACES.len());
            self.out.push_str(&SPACES[..step]);
            width -= step;
        }
    }

    /// yaml-rust2's `emit_node`.
    fn node(&mut self, value: &Value) -> Result<(), Ambiguous> {
        match value {
            Value::Array(items) => return self.array(items),
            Value::Object(map) => return self.map(map),
            Value::String(text) => return self.string(text),
            Value::Bool(true) => self.out.push_str("true"),
            Value::Bool(false) => self.out.push_str("false"),
            // yaml-rust2 is handed `Integer(i64)` or `Real(n.to_string())`: both print as the
            // number's own Display does.
            Value::Number(n) => {
                let _ = write!(self.out, "{n}");
            }
            Value::Null => self.out.push('~'),
        }
        Ok(())
    }

    fn string(&mut self, text: &str) -> Result<(), Ambiguous> {
        if ambiguous(text) {
            return Err(Ambiguous);
        }
        // One pass over the bytes answers what yaml-rust2 asks in three.
        let class = text
            .bytes()
            .fold(0, |class, b| class | BYTE_CLASS[b as usize]);
        if class & NEWLINE != 0
            && (class & NOT_LITERAL == 0
                || (class & NOT_LITERAL == NON_ASCII && is_valid_literal_block_scalar(text)))
        {
            self.literal_block(text);
        } else if need_quotes(text, class & QUOTE_ANYWHERE != 0) {
            escape_str(self.out, text);
        } else {
            self.out.push_str(text);
        }
        Ok(())
    }

    fn literal_block(&mut self, text: &str) {
        self.out
            .push_str(if text.ends_with('\n') { "|" } else { "|-" });
        self.level += 1;
        for line in text.lines() {
            self.out.push('\n');
            self.indent();
            self.out.push_str(line);
        }
        self.level -= 1;
    }

    fn array(&mut self, items: &[Value]) -> Result<(), Ambiguous> {
        if items.is_empty() {
            self.out.push_str("[]");
            return Ok(());
        }
        self.level += 1;
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.out.push('\n');
                self.indent();
            }
            self.out.push('-');
            self.value(true, item)?;
        }
        self.level -= 1;
        Ok(())
    }

    fn map(&mut self, map: &Map<String, Value>) -> Result<(), Ambiguous> {
        if map.is_empty() {
            self.out.push_str("{}");
            return Ok(());
        }
        self.level += 1;
        for (i, (key, value)) in map.iter().enumerate() {
            if i > 0 {
                self.out.push('\n');
                self.indent();
            }
            self.string(key)?;
            self.out.push(':');
            self.value(false, value)?;
        }
        self.level -= 1;
        Ok(())
    }

    /// yaml-rust2's `emit_val`: a value after `-` (`inline`) or after `key:`. The emitter is
    /// compact, so a collection after `-` starts on the same line.
    fn value(&mut self, inline: bool, value: &Value) -> Result<(), Ambiguous> {
        let empty = match value {
            Value::Array(items) => items.is_empty(),
            Value::Object(map) => map.is_empty(),
            _ => {
                self.out.push(' ');
                return self.node(value);
            }
        };
        if inline || empty {
            self.out.push(' ');
        } else {
            self.out.push('\n');
            self.level += 1;
            self.indent();
            self.level -= 1;
        }
        self.node(value)
    }
}

/// yaml-rust2's `is_valid_literal_block_scalar`, its upper bound (`\u{d7fff}`) included.
fn is_valid_literal_block_scalar(text: &str) -> bool {
    text.chars()
        .all(|c| matches!(c, '\t' | '\n' | '\x20'..='\x7e' | '\u{0085}' | '\u{00a0}'..='\u{d7fff}'))
}

/// [`BYTE_CLASS`] bits. `QUOTE_ANYWHERE`: the bytes that make yaml-rust2 quote a string
/// wherever they appear (all ASCII, so a byte test is the same as its `char` test).
const QUOTE_ANYWHERE: u8 = 1;
const NEWLINE: u8 = 2;
/// An ASCII byte that [`is_valid_literal_block_scalar`] refuses (controls other than tab and
/// newline, DEL).
const CONTROL: u8 = 4;
/// Part of a multi-byte character: [`is_valid_literal_block_scalar`] decides.
const NON_ASCII: u8 = 8;
const NOT_LITERAL: u8 = CONTROL | NON_ASCII;

const BYTE_CLASS: [u8; 256] = {
    let mut table = [0; 256];
    let special = b":{}[],#`\"'\\\t\n\r";
    let mut i = 0;
    while i < special.len() {
        table[special[i] as usize] |= QUOTE_ANYWHERE;
        i += 1;
    }
    let mut b = 0;
    while b < 256 {
        // '\0'..='\x06', '\x0e'..='\x1a', '\x1c'..='\x1f' (and \t, \n, \r above).
        if b <= 0x06 || (b >= 0x0e && b <= 0x1a) || (b >= 0x1c && b <= 0x1f) {
            table[b] |= QUOTE_ANYWHERE;
        }
        if (b < 0x20 && b != 0x09 && b != 0x0a) || b == 0x7f {
            table[b] |= CONTROL;
        }
        if b >= 0x80 {
            table[b] |= NON_ASCII;
        }
        b += 1;
    }
    table[b'\n' as usize] |= NEWLINE;
    table
};

/// yaml-rust2's `need_quotes`, transcribed (same order of tests, same results);
/// `quote_anywhere`: the string holds a byte of [`QUOTE_ANYWHERE`].
fn need_quotes(text: &str, quote_anywhere: bool) -> bool {
    let bytes = text.as_bytes();
    let Some(&first) = bytes.first() else {
        return true;
    };
    if first == b' ' || bytes[bytes.len() - 1] == b' ' {
        return true;
    }
    if matches!(
        first,
        b'&' | b'*' | b'?' | b'|' | b'-' | b'<' | b'>' | b'=' | b'!' | b'%' | b'@'
    ) {
        return true;
    }
    if quote_anywhere {
        return true;
    }
    if bytes.len() <= 5
        && matches!(
            text,
            "true"
                | "false"
                | "True"
                | "False"
                | "TRUE"
                | "FALSE"
                | "null"
                | "Null"
                | "NULL"
                | "~"
                | "y"
                | "Y"
                | "n"
                | "N"
                | "yes"
                | "Yes"
                | "YES"
                | "no"
                | "No"
                | "NO"
                | "on"
                | "On"
                | "ON"
                | "off"
                | "Off"
                | "OFF"
        )
    {
        return true;
    }
    if first == b'.' || text.starts_with("0x") {
        return true;
    }
    // Only a digit or the start of `inf`, `infinity` or `nan` (after one sign) can begin
    // something `i64` or `f64` parse; a leading `.` was taken above, `-` before that.
    let unsigned = text.strip_prefix('+').unwrap_or(text).as_bytes();
    match unsigned.first() {
        Some(b'0'..=b'9' | b'i' | b'I' | b'n' | b'N') => {
            text.parse::<i64>().is_ok() || text.parse::<f64>().is_ok()
        }
        _ => false,
    }
}

/// yaml-rust2's `escape_str` (JSON's escapes, `\u007f` included).
fn escape_str(out: &mut String, text: &str) {
    out.push('"');
    let mut start = 0;
    for (i, byte) in text.bytes().enumerate() {
        let escaped = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\x08' => "\\b",
            b'\t' => "\\t",
            b'\n' => "\\n",
            b'\x0c' => "\\f",
            b'\r' => "\\r",
            0x00..=0x1f | 0x7f => {
                out.push_str(&text[start..i]);
                let _ = write!(out, "\\u{byte:04x}");
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.push_str(&text[start..i]);
        out.push_str(escaped);
        start = i + 1;
    }
    out.push_str(&text[start..]);
    out.push('"');
}

/// A key or string value that yaml-rust2 would write plain although a YAML 1.1 reader (as
/// Kubernetes' are) takes it for a number: `1_000`, `0b101`, `0o17`, `0X1F`. Everything else
/// it quotes itself (booleans, null, `~`, whatever parses as an integer or a float, `0x…`).
fn ambiguous(s: &str) -> bool {
    let unsigned = s.trim_start_matches(['+', '-']);
    // Both kinds below start with a digit, `.`, `_` or `:`.
    if !unsigned
        .as_bytes()
        .first()
        .is_some_and(|b| b.is_ascii_digit() || matches!(b, b'.' | b'_' | b':'))
    {
        return false;
    }
    let digits = |prefixes: [&str; 2], digit: fn(u8) -> bool| {
        prefixes.iter().any(|p| {
            unsigned
                .strip_prefix(p)
                .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| digit(b) || b == b'_'))
        })
    };
    let radix = digits(["0b", "0B"], |b| matches!(b, b'0' | b'1'))
        || digits(["0o", "0O"], |b| matches!(b, b'0'..=b'7'))
        || digits(["0X", "0X"], |b| b.is_ascii_hexdigit());
    let grouped = unsigned.contains('_')
        && unsigned.bytes().any(|b| b.is_ascii_digit())
        && unsigned
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'_' | b':'));
    radix || grouped
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The previous path: the value as yaml-rust2's tree, written by its emitter, with the
    /// JSON fallback.
    fn oracle(value: &Value) -> String {
        fn node(value: &Value) -> yaml_rust2::Yaml {
            use yaml_rust2::Yaml;
            match value {
                Value::Null => Yaml::Null,
                Value::Bool(b) => Yaml::Boolean(*b),
                Value::Number(n) => match n.as_i64() {
                    Some(i) => Yaml::Integer(i),
                    None => Yaml::Real(n.to_string()),
                },
                Value::String(s) => Yaml::String(s.clone()),
                Value::Array(items) => Yaml::Array(items.iter().map(node).collect()),
                Value::Object(map) => Yaml::Hash(
                    map.iter()
                        .map(|(k, v)| (Yaml::String(k.clone()), node(v)))
                        .collect(),
                ),
            }
        }
        fn has_ambiguous(value: &Value) -> bool {
            match value {
                Value::String(s) => ambiguous(s),
                Value::Array(items) => items.iter().any(has_ambiguous),
                Value::Object(map) => map.iter().any(|(k, v)| ambiguous(k) || has_ambiguous(v)),
                _ => false,
            }
        }
        if has_ambiguous(value) {
            let json = serde_json::to_string_pretty(value).unwrap();
            return format!("---\n{json}\n");
        }
        let mut out = String::new();
        let mut emitter = yaml_rust2::YamlEmitter::new(&mut out);
        emitter.multiline_strings(true);
        emitter.dump(&node(value)).unwrap();
        out.push('\n');
        out
    }

    fn written(value: &Value) -> String {
        let mut out = String::new();
        write_document(value, &mut out);
        out
    }

    /// Strings on every branch of the quoting rules.
    const STRINGS: &[&str] = &[
        "",
        " ",
        "a",
        "plain text",
        " lead",
        "trail ",
        "&a",
        "*a",
        "?a",
        "|a",
        "-a",
        "-",
        "<a",
        ">a",
        "=a",
        "!a",
        "%a",
        "@a",
        "a:b",
        "http://x:8080",
        "a{",
        "a}",
        "a[",
        "a]",
        "a,b",
        "a#b",
        "a`b",
        "a\"b",
        "a'b",
        "a\\b",
        "a\0b",
        "a\x01b",
        "a\x06b",
        "a\x07b",
        "a\x08b",
        "a\tb",
        "a\nb",
        "a\x0bb",
        "a\x0cb",
        "a\rb",
        "a\x0eb",
        "a\x1ab",
        "a\x1bb",
        "a\x1cb",
        "a\x1fb",
        "a\x7fb",
        "line\n",
        "line\nline",
        "line\nline\n",
        "line\n\n",
        "\n",
        "\n\n",
        "a\n\tb\n",
        "with\r\nreturns",
        "caf\u{e9}\nna\u{ef}ve",
        "nel\u{85}\nx",
        "\u{84}\nx",
        "\u{10ffff}\nx",
        "\u{d7fff}\nx",
        "\u{d8000}\nx",
        "caf\u{e9}",
        "\u{feff}bom",
        "true",
        "false",
        "True",
        "FALSE",
        "null",
        "Null",
        "NULL",
        "~",
        "y",
        "Y",
        "n",
        "N",
        "yes",
        "No",
        "on",
        "OFF",
        "Off",
        "yess",
        "nul",
        ".",
        ".5",
        ".inf",
        "0x1F",
        "0x",
        "0X1F",
        "0b101",
        "0o17",
        "0O17",
        "1_000",
        "1:30",
        "1.5",
        "1.",
        "1e3",
        "1E3",
        "+1",
        "+1.5",
        "++1",
        "+",
        "-1",
        "007",
        "9223372036854775808",
        "inf",
        "Infinity",
        "+inf",
        "nan",
        "NaN",
        "info",
        "nano",
        "100m",
        "256Mi",
        "2014-12-31",
        "12:30:45",
        "persistent://bench/default/t-1",
        "${SHARD_ID}-abc",
        "{a}",
        "[a]",
        "#",
        "a b c",
        "key=value",
    ];

    #[test]
    fn writes_every_string_as_yaml_rust2_does() {
        for s in STRINGS {
            for value in [
                json!({ "k": s }),
                json!({ *s: 1 }),
                json!([s]),
                json!({"a": {"b": [s, {"c": s}], *s: [[s]]}}),
            ] {
                assert_eq!(written(&value), oracle(&value), "{s:?} in {value}");
            }
        }
    }

    #[test]
    fn writes_every_shape_as_yaml_rust2_does() {
        let values = [
            json!(null),
            json!(true),
            json!(1),
            json!(-1),
            json!(u64::MAX),
            json!(1.5),
            json!(1.0),
            json!(1e300),
            json!(-0.0),
            json!("text"),
            json!([]),
            json!({}),
            json!([[]]),
            json!([{}]),
            json!([[1, 2], [3]]),
            json!([{"a": 1, "b": [1, {"c": {}}]}]),
            json!({"a": [], "b": {}, "c": [[]], "d": [{}], "e": null, "f": false}),
            json!({"a": {"b": {"c": {"d": {"e": "x\ny"}}}}}),
            json!({"a": [{"b": "multi\nline\n", "c": [{"d": "x\ny"}]}]}),
            json!({"multi\nkey": "v", "k": ["multi\nitem", "x"]}),
            json!({"a": [[[["deep\ntext"]]]]}),
        ];
        for value in values {
            assert_eq!(written(&value), oracle(&value), "{value}");
        }
        let mut deep = json!("x\ny");
        for i in 0..80 {
            deep = if i % 2 == 0 {
                json!({ "k": deep })
            } else {
                json!([deep, 1])
            };
        }
        assert_eq!(written(&deep), oracle(&deep));
    }

    #[test]
    fn writes_random_values_as_yaml_rust2_does() {
        fn random(rng: &mut fastrand::Rng, depth: usize) -> Value {
            let pick = |rng: &mut fastrand::Rng| {
                let s = STRINGS[rng.usize(..STRINGS.len())];
                match rng.u8(..4) {
                    0 => format!("{s}{}", STRINGS[rng.usize(..STRINGS.len())]),
                    1 => format!("x{s}"),
                    _ => s.to_owned(),
                }
            };
            match rng.u8(..if depth > 4 { 5 } else { 8 }) {
                0 => Value::Null,
                1 => json!(rng.bool()),
                2 => json!(rng.i64(..)),
                3 => json!(rng.f64() * 1e6),
                4 => Value::String(pick(rng)),
                5 => (0..rng.usize(..4))
                    .map(|_| random(rng, depth + 1))
                    .collect(),
                _ => Value::Object(
                    (0..rng.usize(..5))
                        .map(|_| (pick(rng), random(rng, depth + 1)))
                        .collect(),
                ),
            }
        }
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..5000 {
            let value = random(&mut rng, 0);
            assert_eq!(written(&value), oracle(&value), "{value}");
        }
    }

    #[test]
    fn falls_back_to_json_for_yaml_1_1_numbers() {
        let value = json!({"a": {"b": ["1_000"]}});
        assert_eq!(
            written(&value),
            "---\n{\n  \"a\": {\n    \"b\": [\n      \"1_000\"\n    ]\n  }\n}\n"
        );
        let mut out = String::from("before\n");
        write_document(&json!({"0b1": 1}), &mut out);
        assert!(out.starts_with("before\n---\n{\n"), "{out}");
    }
}
