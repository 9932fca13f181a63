//! `meshops apply`, `plan` and `status` as a user runs them, against the API double served
//! over HTTP through a kubeconfig.

mod support;

use std::process::Command;

use support::FakeApiServer;

fn meshops(args: Vec<String>) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_meshops"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_then_plan_shows_no_changes_and_status_is_synced() {
    let server = FakeApiServer::new(&["default", "staging"], true);
    let url = server.listen().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = FakeApiServer::kubeconfig(&url, dir.path())
        .display()
        .to_string();
    let run = move |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(["--kubeconfig".to_owned(), kubeconfig.clone()]);
        let output = meshops(all);
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (plan_code, plan_text, _) = tokio::task::spawn_blocking({
        let run = run.clone();
        move || run(&["plan", "examples/staging", "--detailed-exitcode"])
    })
    .await
    .unwrap();
    assert_eq!(
        plan_code,
        Some(2),
        "changes before the first apply: {plan_text}"
    );
    assert!(
        plan_text.contains("Plan: 25 to create, 0 to change, 0 to recreate, 0 to delete."),
        "{plan_text}"
    );

    let (code, out, err) = tokio::task::spawn_blocking({
        let run = run.clone();
        move || run(&["apply", "examples/staging"])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("Applied 25 objects, deleted 0."), "{out}");
    assert!(err.contains("cost:"), "{err}");
    assert!(
        err.contains("created apps/v1/StatefulSet staging/alerts-function"),
        "plain lines without a terminal: {err}"
    );

    let (code, out, err) = tokio::task::spawn_blocking({
        let run = run.clone();
        move || run(&["plan", "examples/staging", "--detailed-exitcode"])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("No changes."), "{out}");
    assert!(err.contains(" 0 writes"), "{err}");

    let (code, out, _) = tokio::task::spawn_blocking(move || run(&["status", "examples/staging"]))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    let alerts = out
        .lines()
        .find(|l| l.starts_with("Function") && l.contains(" alerts "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(alerts.contains("synced"), "{alerts}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_crd_is_a_clear_error() {
    let server = FakeApiServer::new(&["default", "staging"], false);
    let url = server.listen().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = FakeApiServer::kubeconfig(&url, dir.path())
        .display()
        .to_string();
    let output = tokio::task::spawn_blocking(move || {
        meshops(vec![
            "plan".into(),
            "examples/staging".into(),
            "--kubeconfig".into(),
            kubeconfig,
        ])
    })
    .await
    .unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "errors are 1; 2 means changes"
    );
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("CustomResourceDefinition is not installed"),
        "{err}"
    );
}
