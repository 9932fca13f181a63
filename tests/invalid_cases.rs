//! One file per rule under tests/data/invalid/. The first line of each says what must be
//! reported: `# expect: <severity> <code> <line>:<col> <pointer|->`. The case must produce
//! exactly that diagnostic, and no error other than it — except the rules a second line
//! `# also: <code>…` names, where the operator's rules necessarily fire together.

use std::path::Path;

use meshops::load::{LoadOptions, Tree};
use meshops::validate::{validate, Schemas, Severity, ValidateOptions};

struct Expectation {
    severity: Severity,
    code: String,
    line: u32,
    col: u32,
    pointer: Option<String>,
    also: Vec<String>,
}

fn expectation(text: &str) -> Expectation {
    let header = text
        .lines()
        .next()
        .unwrap()
        .strip_prefix("# expect: ")
        .unwrap();
    let parts: Vec<&str> = header.split(' ').collect();
    let (line, col) = parts[2].split_once(':').unwrap();
    Expectation {
        severity: if parts[0] == "error" {
            Severity::Error
        } else {
            Severity::Warning
        },
        code: parts[1].to_owned(),
        line: line.parse().unwrap(),
        col: col.parse().unwrap(),
        pointer: match parts[3] {
            "-" => None,
            "/" => Some(String::new()),
            p => Some(p.to_owned()),
        },
        also: text
            .lines()
            .nth(1)
            .and_then(|l| l.strip_prefix("# also: "))
            .map(|l| l.split(' ').map(str::to_owned).collect())
            .unwrap_or_default(),
    }
}

#[test]
fn every_invalid_case_reports_its_rule_at_its_field() {
    let schemas = Schemas::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/invalid");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    assert!(
        entries.len() >= 50,
        "expected a case per rule, found {}",
        entries.len()
    );
    let mut failures = Vec::new();
    for path in entries {
        let text = std::fs::read_to_string(&path).unwrap();
        let want = expectation(&text);
        let tree = Tree::load(&path, &LoadOptions::default());
        let result = validate(&tree, &schemas, ValidateOptions::default());
        let found = result.diagnostics.iter().find(|d| {
            d.code == want.code
                && d.severity == want.severity
                && d.position.map(|p| (p.line, p.col)) == Some((want.line, want.col))
                && want
                    .pointer
                    .as_ref()
                    .is_none_or(|p| d.pointer.as_ref() == Some(p))
                && d.file == path
        });
        let other_errors: Vec<_> = result
            .diagnostics
            .iter()
            .filter(|d| {
                d.severity == Severity::Error
                    && d.code != want.code
                    && !want.also.iter().any(|a| a == d.code)
            })
            .collect();
        if found.is_none() || !other_errors.is_empty() {
            failures.push(format!(
                "{}: want {} {} at {}:{} {:?}; got {:#?}",
                path.file_name().unwrap().to_string_lossy(),
                want.code,
                if want.severity == Severity::Error {
                    "error"
                } else {
                    "warning"
                },
                want.line,
                want.col,
                want.pointer,
                result
                    .diagnostics
                    .iter()
                    .map(|d| format!(
                        "{:?} {} {:?} {:?} {}",
                        d.severity, d.code, d.position, d.pointer, d.message
                    ))
                    .collect::<Vec<_>>()
            ));
        }
        if want.severity == Severity::Error {
            assert!(!result.is_valid(), "{} must be invalid", path.display());
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
