//! The `meshops` binary as a user runs it: exit codes, output formats, hostile input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn meshops(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshops"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("NO_COLOR")
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

const CONFIG_MAP: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: pulsar\ndata:\n  a: b\n";

#[test]
fn validates_the_bundled_examples_without_warnings() {
    let out = meshops(&["validate", "examples/"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(stdout(&out), "ok: 19 documents in 19 files valid\n");
}

#[test]
fn reports_like_rustc_with_file_line_source_and_pointer() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "fn.yaml",
        "apiVersion: compute.functionmesh.io/v1alpha1\nkind: Function\nmetadata:\n  name: fn\nspec:\n  replica: 2\n",
    );
    let out = meshops(&["validate", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out).replace(dir.path().to_str().unwrap(), "<dir>");
    assert!(
        !text.contains('\u{1b}'),
        "no color when stdout is not a terminal"
    );
    insta::assert_snapshot!(text);
}

#[test]
fn json_output_is_machine_readable() {
    let out = meshops(&[
        "validate",
        "--format",
        "json",
        "tests/data/invalid/replicas-above-max.yaml",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["valid"], false);
    let error = report["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["severity"] == "error")
        .unwrap();
    assert_eq!(error["code"], "replicas-above-max");
    assert_eq!(error["line"], 19);
    assert_eq!(error["col"], 3);
    assert_eq!(error["pointer"], "/spec/maxReplicas");
    assert_eq!(error["file"], "tests/data/invalid/replicas-above-max.yaml");
}

#[test]
fn strict_turns_warnings_into_errors() {
    let path = "tests/data/invalid/input-not-produced.yaml";
    assert_eq!(meshops(&["validate", path]).status.code(), Some(0));
    assert_eq!(
        meshops(&["validate", "--strict", path]).status.code(),
        Some(1)
    );
}

/// Every error exits 1, whatever the subcommand and whatever failed, as terraform: 2 is
/// left to mean "changes" for `plan --detailed-exitcode` (tests/cli_cluster.rs).
#[test]
fn every_error_exits_1_usage_and_io_included() {
    let code = |args: &[&str]| meshops(args).status.code();
    // I/O: a path that does not exist.
    assert_eq!(code(&["validate", "no/such/dir"]), Some(1));
    assert_eq!(code(&["render", "no/such/dir"]), Some(1));
    // Usage: an unknown flag or value, a missing argument, no subcommand at all.
    for args in [
        &["validate", "--frobnicate"][..],
        &["render", "--frobnicate"],
        &["plan", "--frobnicate"],
        &["plan", "--detailed-exitcode", "--frobnicate"],
        &[
            "plan",
            "--detailed-exitcode",
            "-o",
            "yaml",
            "examples/staging",
        ],
        &["apply", "--timeout", "soon", "examples/staging"],
        &["status", "--frobnicate"],
        &["agent"],
        &["crds", "--frobnicate"],
        &["schema", "--frobnicate"],
        &["frobnicate"],
        &[],
    ] {
        let out = meshops(args);
        assert_eq!(out.status.code(), Some(1), "meshops {args:?}");
        assert!(
            !out.stderr.is_empty() && out.stdout.is_empty(),
            "meshops {args:?}: clap's message on stderr"
        );
    }
    // An unknown kind.
    assert_eq!(code(&["schema", "Deployment"]), Some(1));
    // Invalid manifests stop plan and apply before any cluster is asked, also with
    // --detailed-exitcode.
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad/f.yaml",
        "apiVersion: v1\nkind: ConfigMap\n",
    );
    let bad = bad.parent().unwrap().to_str().unwrap();
    assert_eq!(code(&["validate", bad]), Some(1));
    assert_eq!(code(&["render", bad]), Some(1));
    assert_eq!(code(&["plan", bad, "--detailed-exitcode"]), Some(1));
    assert_eq!(code(&["apply", bad]), Some(1));
    assert_eq!(code(&["status", bad]), Some(1));
    // A kubeconfig context that does not exist (found before any request is sent: a server
    // that refuses connections is retried for seconds; tests/cli_cluster.rs has cluster
    // errors).
    let kubeconfig = write(
        dir.path(),
        "kubeconfig",
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
         clusters: [{name: c, cluster: {server: 'http://127.0.0.1:1'}}]\n\
         contexts: [{name: c, context: {cluster: c, user: u}}]\n\
         users: [{name: u, user: {}}]\n",
    );
    let kubeconfig = kubeconfig.to_str().unwrap();
    for command in ["plan", "apply", "status"] {
        let args = [
            command,
            "examples/staging",
            "--kubeconfig",
            kubeconfig,
            "--context",
            "nope",
        ];
        let out = meshops(&args);
        assert_eq!(out.status.code(), Some(1), "meshops {args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("error: ") && err.contains("nope"), "{err}");
    }
    let args = [
        "plan",
        "examples/staging",
        "--detailed-exitcode",
        "--context",
        "nope",
    ];
    assert_eq!(
        code(&[&args[..], &["--kubeconfig", kubeconfig]].concat()),
        Some(1)
    );
    // An agent config that is not valid.
    let config = write(
        dir.path(),
        "agent.yaml",
        "apiVersion: meshops.io/v1alpha1\nkind: AgentConfig\nspec: {}\n",
    );
    assert_eq!(
        code(&["agent", "--check", "--config", config.to_str().unwrap()]),
        Some(1)
    );
}

/// Help and the version are what was asked for: exit 0, on stdout.
#[test]
fn help_and_version_exit_0() {
    for args in [
        &["--help"][..],
        &["--version"],
        &["help"],
        &["plan", "--help"],
        &["apply", "-h"],
        &["validate", "--version"],
    ] {
        let out = meshops(args);
        assert_eq!(out.status.code(), Some(0), "meshops {args:?}");
        assert!(!out.stdout.is_empty(), "meshops {args:?}");
    }
    assert_eq!(meshops(&["crds"]).status.code(), Some(0));
    assert_eq!(meshops(&["schema", "Function"]).status.code(), Some(0));
    assert_eq!(meshops(&["schema", "--list"]).status.code(), Some(0));
    assert_eq!(
        meshops(&["render", "examples/staging"]).status.code(),
        Some(0)
    );
    let check = ["agent", "--check", "--config", "examples/agent.yaml"];
    assert_eq!(meshops(&check).status.code(), Some(0));
}

#[test]
fn help_documents_exit_codes_and_examples() {
    let out = meshops(&["validate", "--help"]);
    let help = stdout(&out);
    for needle in [
        "Exit status:",
        "--strict",
        "--format <FORMAT>",
        "meshops validate examples/",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}

#[test]
fn plan_and_apply_help_document_their_exit_codes_and_prune() {
    let plan = stdout(&meshops(&["plan", "--help"]));
    for needle in [
        "Exit status:",
        "0  success: no changes, or changes without --detailed-exitcode",
        "1  any error: invalid manifests, usage,",
        "2  changes, with --detailed-exitcode only",
        "--prune",
        "--allow-empty",
        "would be pruned with --prune",
    ] {
        assert!(plan.contains(needle), "plan --help lacks {needle}:\n{plan}");
    }
    let apply = stdout(&meshops(&["apply", "--help"]));
    for needle in ["Exit status:", "0  applied", "1  any error", "--prune"] {
        assert!(
            apply.contains(needle),
            "apply --help lacks {needle}:\n{apply}"
        );
    }
}

#[test]
fn prints_the_embedded_schemas() {
    let out = meshops(&["schema", "function"]);
    assert_eq!(out.status.code(), Some(0));
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(schema["title"], "Function");
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    let listed = stdout(&meshops(&["schema", "--list"]));
    assert_eq!(listed.lines().count(), 10);
    assert!(listed.contains("AgentConfig"), "{listed}");
}

#[test]
fn never_prints_secret_values() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\ndata:\n  password: 42\nstringData:\n  token: [hunter2]\n",
    );
    let out = meshops(&["validate", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(!text.contains("hunter2") && !text.contains("42"), "{text}");
    assert!(text.contains("password: ******"), "{text}");
    let json = stdout(&meshops(&[
        "validate",
        "--format",
        "json",
        dir.path().to_str().unwrap(),
    ]));
    assert!(!json.contains("hunter2"), "{json}");
}

#[test]
fn refuses_hostile_input_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut laughs = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for (prev, name) in ["a", "b", "c", "d", "e", "f", "g"]
        .iter()
        .zip(["b", "c", "d", "e", "f", "g", "h"])
    {
        laughs.push_str(&format!("{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
    }
    write(d, "laughs.yaml", &laughs);
    write(
        d,
        "deep.yaml",
        &format!("a: {}1{}\n", "[".repeat(500), "]".repeat(500)),
    );
    let block: String = (0..66).map(|i| format!("{}k:\n", " ".repeat(i))).collect();
    write(d, "deep-block.yaml", &block);
    std::fs::write(d.join("binary.yaml"), b"kind: \xff\xfe\n").unwrap();
    write(d, "big.yaml", &format!("# {}\n", "x".repeat(4096)));
    write(d, "dup.yaml", "apiVersion: v1\napiVersion: v1\n");
    write(d, "scalar.yaml", "just a string\n");
    let out = meshops(&["validate", "--max-file-size", "3000", d.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    for needle in [
        "billion laughs",
        "nesting deeper than",
        "not valid UTF-8",
        "over the 3000-byte limit",
        "duplicate key \"apiVersion\"",
        "document is not a mapping",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(text.contains("binary.yaml:1:7"), "{text}");
    assert_eq!(text.matches("nesting deeper than").count(), 2, "{text}");
}

#[cfg(unix)]
#[test]
fn skips_hidden_and_ignored_files_and_refuses_escaping_symlinks() {
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "secret.yaml", CONFIG_MAP);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "ok/cm.yaml", CONFIG_MAP);
    write(d, ".hidden/bad.yaml", "{{{");
    write(d, "vendor/bad.yaml", "{{{");
    write(d, "notes.txt", "{{{");
    write(d, ".meshopsignore", "vendor/\n");
    std::os::unix::fs::symlink(outside.path().join("secret.yaml"), d.join("escape.yaml")).unwrap();
    let out = meshops(&["validate", d.to_str().unwrap()]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("symlink points outside the repository root"),
        "{text}"
    );
    assert!(
        text.contains("1 error"),
        "only the symlink is an error: {text}"
    );
    assert!(text.contains("1 document in 1 file"), "{text}");
}

#[test]
fn render_prints_a_yaml_stream_and_nothing_when_invalid() {
    let out = meshops(&[
        "render",
        "examples/staging",
        "--only",
        "StatefulSet/alerts-function",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    assert!(
        text.starts_with("---\napiVersion: apps/v1\nkind: StatefulSet\n"),
        "{text}"
    );
    assert_eq!(text.matches("\n---\n").count(), 0, "only one object");
    assert!(text.contains("meshops.io/source: staging"));

    let json = meshops(&[
        "render",
        "examples/staging",
        "-o",
        "json",
        "--mode",
        "operator",
    ]);
    let objects: Vec<serde_json::Value> = serde_json::from_slice(&json.stdout).unwrap();
    assert!(objects.iter().all(|o| o["kind"] != "StatefulSet"));

    let bad = meshops(&["render", "tests/data/invalid/replicas-above-max.yaml"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(bad.stdout.is_empty(), "nothing on stdout when invalid");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("replicas-above-max"));
}

#[test]
fn a_document_with_schema_errors_still_has_its_name_and_rules_checked() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "fn.yaml",
        "apiVersion: compute.functionmesh.io/v1alpha1
kind: Function
metadata:
  name: Bad_Name
spec:
  replica: 1
  processingGuarantee: bogus
  className: io.example.Fn
  input: {topics: [persistent://public/default/in]}
  pulsar: {pulsarConfig: pulsar}
  java: {jar: /pulsar/fn.jar}
  replicas: 3
  maxReplicas: 2
",
    );
    let out = meshops(&["validate", "--format", "json", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut found: Vec<(String, String)> = report["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["severity"] == "error")
        .map(|d| {
            (
                d["code"].as_str().unwrap().to_owned(),
                d["pointer"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            ("name-invalid".to_owned(), "/metadata/name".to_owned()),
            (
                "replicas-above-max".to_owned(),
                "/spec/maxReplicas".to_owned()
            ),
            ("schema".to_owned(), "/spec/processingGuarantee".to_owned()),
            ("unknown-field".to_owned(), "/spec/replica".to_owned()),
        ],
        "{report:#}"
    );
}
