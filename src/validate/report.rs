//! Diagnostics for people (rustc-style, through annotate-snippets) and for machines (JSON).

use std::fmt::Write;

use annotate_snippets::{Level, Renderer, Snippet};
use serde::Serialize;

use super::{Diagnostic, Severity, Validation};

/// Renders every diagnostic and the summary line. `color` only when writing to a terminal.
pub fn text(validation: &Validation, color: bool) -> String {
    let renderer = if color {
        Renderer::styled()
    } else {
        Renderer::plain()
    };
    let mut out = String::new();
    for diagnostic in &validation.diagnostics {
        let _ = writeln!(out, "{}\n", render_one(&renderer, diagnostic));
    }
    out.push_str(&summary(validation));
    out.push('\n');
    out
}

fn render_one(renderer: &Renderer, d: &Diagnostic) -> String {
    let level = match d.severity {
        Severity::Error => Level::Error,
        Severity::Warning => Level::Warning,
    };
    let origin = match (d.position, &d.source_line) {
        (Some(position), None) => format!("{}:{position}", d.file.display()),
        _ => d.file.display().to_string(),
    };
    let pointer_note = d
        .pointer
        .as_deref()
        .filter(|p| !p.is_empty())
        .map(|p| format!("field: {p}"));
    let mut message = level.title(&d.message).id(d.code);
    let line_text;
    match (d.position, d.source_line.as_deref()) {
        (Some(position), Some(line)) => {
            line_text = line.to_owned();
            let start = byte_offset(&line_text, position.col as usize - 1);
            let end = token_end(&line_text, start);
            message = message.snippet(
                Snippet::source(&line_text)
                    .line_start(position.line as usize)
                    .origin(&origin)
                    .annotation(level.span(start..end)),
            );
        }
        _ => {
            message = message.snippet(Snippet::source("").origin(&origin));
        }
    }
    if let Some(note) = &pointer_note {
        message = message.footer(Level::Note.title(note));
    }
    for note in &d.notes {
        message = message.footer(Level::Note.title(note));
    }
    let rendered = renderer.render(message).to_string();
    rendered
}

/// Byte offset of the `chars`-th character (columns count characters).
fn byte_offset(line: &str, chars: usize) -> usize {
    line.char_indices()
        .nth(chars)
        .map_or(line.len(), |(i, _)| i)
}

/// End of the key or token starting at `start`: up to a `:` or the end of the line.
fn token_end(line: &str, start: usize) -> usize {
    let rest = &line[start..];
    let end = rest
        .find(": ")
        .or_else(|| rest.strip_suffix(':').map(str::len))
        .unwrap_or(rest.trim_end().len());
    start + end.max(1).min(rest.len())
}

/// `error: 3 errors, 1 warning in 2 files (12 documents in 9 files checked)`.
pub fn summary(v: &Validation) -> String {
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    let checked = format!(
        "{} in {}",
        plural(v.documents, "document"),
        plural(v.files, "file")
    );
    if v.diagnostics.is_empty() {
        return format!("ok: {checked} valid");
    }
    let mut files: Vec<_> = v.diagnostics.iter().map(|d| &d.file).collect();
    files.dedup();
    let verdict = if v.is_valid() { "ok" } else { "invalid" };
    format!(
        "{verdict}: {}, {} in {} ({checked} checked)",
        plural(v.errors(), "error"),
        plural(v.warnings(), "warning"),
        plural(files.len(), "file"),
    )
}

#[derive(Serialize)]
struct JsonReport<'a> {
    valid: bool,
    errors: usize,
    warnings: usize,
    documents: usize,
    files: usize,
    diagnostics: &'a [Diagnostic],
}

/// The whole result as one JSON object.
pub fn json(validation: &Validation) -> String {
    let report = JsonReport {
        valid: validation.is_valid(),
        errors: validation.errors(),
        warnings: validation.warnings(),
        documents: validation.documents,
        files: validation.files,
        diagnostics: &validation.diagnostics,
    };
    serde_json::to_string_pretty(&report).unwrap_or_default()
}
