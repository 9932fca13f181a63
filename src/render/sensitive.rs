//! Where rendered (and live) objects carry credentials, and how every display masks them.
//!
//! The renderer writes credentials into objects in a handful of known places: a Secret's
//! `data`/`stringData`, a CR's `clientAuthenticationParameters` (generic auth), the env var of
//! that name it gives the filebeat sidecar, and the shell word after an auth flag
//! ([`AUTH_PARAMS_FLAGS`]) in the runner, downloader and cleanup commands. The flags are the
//! constants the command writer uses, so a new place that writes auth parameters through them
//! is masked without anyone remembering to.
//!
//! [`mask_pair`] masks both sides of a diff in place, before anything is serialised for
//! people: a spot whose value differs between the sides says `(changed)` on the new side, so a
//! rotated token is still a visible change, but neither value is shown. The values found are
//! then swept out of every other string of both objects (a `last-applied-configuration`
//! annotation, a value copied into a label), since a credential is a credential wherever it is
//! copied. `plan::diff` is the only producer of object text for displays (plan text, PR
//! comments, drift), so masking there covers them all.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use serde_json::Value;

pub use super::command::AUTH_PARAMS_FLAGS;

/// What a masked value shows; the same as validation shows for a Secret value.
pub const MASK: &str = "******";
/// What a masked value shows on the new side of a diff when it differs from the old side.
pub const MASK_CHANGED: &str = "****** (changed)";

/// Object fields and env var names that hold auth parameters (`PACKAGE_` prefixed too).
const AUTH_FIELDS: &[&str] = &["clientAuthenticationParameters"];

/// Values shorter than this are not swept from other strings: a one-letter "credential"
/// would otherwise mask every occurrence of that letter. They are still masked where found.
const SWEEP_MIN: usize = 4;

/// Masks both sides of a diff in place (either may be `Null`): every sensitive spot becomes
/// [`MASK`], or [`MASK_CHANGED`] on `after` when the two sides differ there (a key added to
/// an existing Secret included; a whole new object is plain [`MASK`]).
pub fn mask_pair(before: &mut Value, after: &mut Value) {
    let old = spots(before);
    let new = spots(after);
    let mut values: BTreeSet<String> = BTreeSet::new();
    for spot in old.values().chain(new.values()) {
        values.extend(spot.clone().raw_forms());
    }
    apply(before, &old, |_| MASK);
    // A created object is new everywhere: `(changed)` would say nothing.
    let created = before.is_null();
    apply(after, &new, |id| {
        if created || old.get(id).map(|s| &s.value) == new.get(id).map(|s| &s.value) {
            MASK
        } else {
            MASK_CHANGED
        }
    });
    let mut values: Vec<String> = values
        .into_iter()
        .filter(|v| v.len() >= SWEEP_MIN)
        .collect();
    // Longest first, so a value that contains another is replaced whole.
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    sweep(before, &values);
    sweep(after, &values);
}

/// Masks one object for display (a create or a delete has one side only).
pub fn mask(value: &mut Value) {
    mask_pair(value, &mut Value::Null);
}

/// The credentials an object carries, in the forms they may appear in text (raw, decoded,
/// shell-quoted): what a free-text display (a log line, an error) must not contain.
pub fn values(value: &Value) -> BTreeSet<String> {
    spots(value)
        .into_values()
        .flat_map(Spot::raw_forms)
        .filter(|v| v.len() >= SWEEP_MIN)
        .collect()
}

/// Replaces every occurrence of `values` in `text` with [`MASK`].
pub fn scrub(text: &str, values: &BTreeSet<String>) -> String {
    let mut sorted: Vec<&String> = values.iter().collect();
    sorted.sort_by_key(|v| std::cmp::Reverse(v.len()));
    sorted
        .into_iter()
        .fold(text.to_owned(), |t, v| t.replace(v.as_str(), MASK))
}

/// One sensitive value in an object: where it is and what it holds.
#[derive(Clone, Debug)]
struct Spot {
    /// JSON pointer of the string holding it.
    pointer: String,
    /// Byte range within that string (the whole string for a field).
    range: std::ops::Range<usize>,
    /// The text at that range, as written.
    written: String,
    /// What it means: the decoded Secret value, the unquoted shell word.
    value: String,
}

impl Spot {
    /// A whole string that is a credential as it stands.
    fn whole(pointer: String, text: &str) -> Spot {
        Spot {
            pointer,
            range: 0..text.len(),
            written: text.to_owned(),
            value: text.to_owned(),
        }
    }

    fn raw_forms(self) -> Vec<String> {
        let json = serde_json::to_string(&self.value).unwrap_or_default();
        let json = json
            .strip_prefix('"')
            .and_then(|j| j.strip_suffix('"'))
            .unwrap_or_default()
            .to_owned();
        vec![self.written, self.value, json]
    }
}

/// Every sensitive spot of an object, keyed by a stable id (pointer and occurrence) so that
/// the two sides of a diff can be compared spot by spot.
fn spots(value: &Value) -> BTreeMap<String, Spot> {
    let mut out = BTreeMap::new();
    if value["kind"] == "Secret" {
        for field in ["data", "stringData"] {
            for (key, v) in value[field].as_object().into_iter().flatten() {
                let Some(text) = v.as_str() else { continue };
                let decoded = if field == "data" {
                    base64::engine::general_purpose::STANDARD
                        .decode(text)
                        .ok()
                        .and_then(|b| String::from_utf8(b).ok())
                        .unwrap_or_else(|| text.to_owned())
                } else {
                    text.to_owned()
                };
                let pointer = format!("/{field}/{}", escape(key));
                out.insert(
                    pointer.clone(),
                    Spot {
                        pointer,
                        range: 0..text.len(),
                        written: text.to_owned(),
                        value: decoded,
                    },
                );
            }
        }
    }
    let mut rest = value.clone();
    if value["kind"] == "Secret" {
        if let Some(map) = rest.as_object_mut() {
            map.remove("data");
            map.remove("stringData");
        }
    }
    walk(&rest, String::new(), &mut out);
    out
}

fn walk(node: &Value, pointer: String, out: &mut BTreeMap<String, Spot>) {
    match node {
        Value::Object(map) => {
            // An env var `{name: clientAuthenticationParameters, value: …}`.
            let auth_env = map
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| AUTH_FIELDS.contains(&n.trim_start_matches("PACKAGE_")));
            for (key, child) in map {
                let path = format!("{pointer}/{}", escape(key));
                let field = AUTH_FIELDS.contains(&key.as_str()) || (auth_env && key == "value");
                match child.as_str() {
                    Some(text) if field => {
                        out.insert(path.clone(), Spot::whole(path, text));
                    }
                    _ => walk(child, path, out),
                }
            }
        }
        Value::Array(items) => {
            // Argv form: the element after a flag element.
            let mut after_flag = false;
            for (i, child) in items.iter().enumerate() {
                let path = format!("{pointer}/{i}");
                match child.as_str() {
                    Some(text) if after_flag && !text.starts_with('$') => {
                        out.insert(path.clone(), Spot::whole(path, text));
                        after_flag = false;
                    }
                    _ => {
                        after_flag = child
                            .as_str()
                            .is_some_and(|t| AUTH_PARAMS_FLAGS.contains(&t.trim()));
                        walk(child, path, out);
                    }
                }
            }
        }
        Value::String(text) => {
            for (n, (range, value)) in flagged_words(text).into_iter().enumerate() {
                out.insert(
                    format!("{pointer}#{n}"),
                    Spot {
                        pointer: pointer.clone(),
                        written: text[range.clone()].to_owned(),
                        range,
                        value,
                    },
                );
            }
        }
        _ => {}
    }
}

/// The shell words following an auth flag in a command string, as byte ranges and unquoted
/// values. A bare `$variable` is a reference to a Secret's env, not a value, and stays.
fn flagged_words(text: &str) -> Vec<(std::ops::Range<usize>, String)> {
    let mut out = Vec::new();
    for flag in AUTH_PARAMS_FLAGS {
        let mut from = 0;
        while let Some(at) = text[from..].find(flag) {
            let end_of_flag = from + at + flag.len();
            from = end_of_flag;
            let rest = &text[end_of_flag..];
            if !rest.starts_with([' ', '\t', '\n', '=']) {
                continue;
            }
            let start = end_of_flag + 1 + rest[1..].len() - rest[1..].trim_start().len();
            let (len, value) = shell_word(&text[start..]);
            if len == 0 || (text[start..].starts_with('$') && !value.contains(' ')) {
                continue;
            }
            out.push((start..start + len, value));
            from = start + len;
        }
    }
    out.sort_by_key(|(r, _)| r.start);
    out
}

/// One POSIX shell word at the start of `text`: its length and unquoted value.
fn shell_word(text: &str) -> (usize, String) {
    let mut value = String::new();
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => return (i, value),
            '\'' => {
                for (_, c) in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    value.push(c);
                }
            }
            '"' => {
                while let Some((_, c)) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => {
                            if let Some((_, next)) = chars.next() {
                                value.push(next);
                            }
                        }
                        c => value.push(c),
                    }
                }
            }
            '\\' => {
                if let Some((_, next)) = chars.next() {
                    value.push(next);
                }
            }
            c => value.push(c),
        }
    }
    (text.len(), value)
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Writes the mask of each spot (by id) into the object, last range first so that earlier
/// ranges in the same string stay valid.
fn apply(
    value: &mut Value,
    spots: &BTreeMap<String, Spot>,
    mask_of: impl Fn(&str) -> &'static str,
) {
    let mut by_pointer: BTreeMap<&str, Vec<(&str, &Spot)>> = BTreeMap::new();
    for (id, spot) in spots {
        by_pointer
            .entry(&spot.pointer)
            .or_default()
            .push((id, spot));
    }
    for (pointer, mut list) in by_pointer {
        let Some(Value::String(text)) = value.pointer_mut(pointer) else {
            continue;
        };
        list.sort_by_key(|(_, s)| std::cmp::Reverse(s.range.start));
        for (id, spot) in list {
            if text.get(spot.range.clone()).is_some() {
                text.replace_range(spot.range.clone(), mask_of(id));
            }
        }
    }
}

/// Replaces `values` (longest first) in every string of the object.
fn sweep(node: &mut Value, values: &[String]) {
    match node {
        Value::String(text) => {
            for v in values {
                if text.contains(v.as_str()) && text != MASK && text != MASK_CHANGED {
                    *text = text.replace(v.as_str(), MASK);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| sweep(i, values)),
        Value::Object(map) => map.values_mut().for_each(|v| sweep(v, values)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TOKEN: &str = "token:MESHOPS-MARKER-7f3a";

    fn shown(v: &Value) -> String {
        serde_json::to_string(v).unwrap()
    }

    #[test]
    fn auth_params_are_masked_in_fields_env_argv_and_shell_strings() {
        let quoted = crate::render::shell_quote("it's:MESHOPS-MARKER-7f3a");
        let mut sts = json!({
            "kind": "StatefulSet",
            "metadata": {"annotations": {"copy": format!("x {TOKEN} y")}},
            "spec": {"pulsar": {"authConfig": {"genericAuth": {
                "clientAuthenticationPlugin": "org.apache.pulsar.client.impl.auth.AuthenticationToken",
                "clientAuthenticationParameters": TOKEN}}},
            "template": {"spec": {"containers": [{
                "command": ["sh", "-c", format!("exec run --client_auth_plugin p --client_auth_params {quoted} --use_tls false && pulsarctl --auth-params '{TOKEN}' || true")],
                "args": ["--auth-params", TOKEN, "--legacy", "--auth-params", "$clientAuthenticationParameters"],
                "env": [{"name": "clientAuthenticationParameters", "value": TOKEN},
                        {"name": "PACKAGE_clientAuthenticationParameters", "value": TOKEN},
                        {"name": "logTopic", "value": "t"}]}]}}}
        });
        mask(&mut sts);
        let text = shown(&sts);
        assert!(!text.contains("MESHOPS-MARKER"), "{text}");
        let cmd = sts
            .pointer("/spec/template/spec/containers/0/command/2")
            .unwrap();
        assert_eq!(
            cmd,
            "exec run --client_auth_plugin p --client_auth_params ****** --use_tls false && pulsarctl --auth-params ****** || true"
        );
        assert_eq!(
            sts.pointer("/spec/template/spec/containers/0/args/4")
                .unwrap(),
            "$clientAuthenticationParameters",
            "a reference to the legacy Secret's env is no value"
        );
        assert_eq!(
            sts.pointer("/spec/template/spec/containers/0/env/2/value")
                .unwrap(),
            "t"
        );
        assert_eq!(sts["metadata"]["annotations"]["copy"], "x ****** y");
    }

    #[test]
    fn a_changed_credential_is_a_visible_change_without_its_value() {
        let side = |token: &str| json!({"kind": "StatefulSet", "spec": {"command": [format!("run --client_auth_params '{token}' --x y")]}});
        let (mut before, mut after) = (side("old-secret"), side("new-secret"));
        mask_pair(&mut before, &mut after);
        assert_eq!(
            before["spec"]["command"][0],
            "run --client_auth_params ****** --x y"
        );
        assert_eq!(
            after["spec"]["command"][0],
            "run --client_auth_params ****** (changed) --x y"
        );
        let (mut before, mut after) = (side("same-secret"), side("same-secret"));
        mask_pair(&mut before, &mut after);
        assert_eq!(before, after, "an unchanged credential makes no diff line");
    }

    #[test]
    fn secret_values_are_masked_decoded_copies_included() {
        let encoded = base64::engine::general_purpose::STANDARD.encode(TOKEN);
        let mut secret = json!({"kind": "Secret", "metadata": {"annotations": {
            "kubectl.kubernetes.io/last-applied-configuration": format!("{{\"data\":{{\"k\":\"{encoded}\"}},\"stringData\":{{\"s\":\"{TOKEN}\"}}}}")}},
            "data": {"k": encoded}, "stringData": {"s": TOKEN}});
        let found = values(&secret);
        mask(&mut secret);
        let text = shown(&secret);
        assert!(
            !text.contains("MESHOPS-MARKER") && !text.contains(&encoded),
            "{text}"
        );
        assert_eq!(secret["data"]["k"], MASK);
        let line = format!("error: field {TOKEN} invalid");
        assert_eq!(scrub(&line, &found), "error: field ****** invalid");
    }

    #[test]
    fn shell_words_are_unquoted_as_the_shell_would() {
        assert_eq!(shell_word("'a'\"'\"'b' rest"), (9, "a'b".into()));
        assert_eq!(shell_word("\"x \\\" y\"z"), (9, "x \" yz".into()));
        assert_eq!(shell_word("plain"), (5, "plain".into()));
    }
}
