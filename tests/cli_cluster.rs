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

/// `meshops ARGS --kubeconfig` against `server`, off the async runtime.
async fn run_against(
    server: &FakeApiServer,
    args: &[&str],
) -> (Option<i32>, String, String, tempfile::TempDir) {
    let url = server.listen().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = FakeApiServer::kubeconfig(&url, dir.path())
        .display()
        .to_string();
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(["--kubeconfig".to_owned(), kubeconfig]);
    let output = tokio::task::spawn_blocking(move || meshops(all))
        .await
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        dir,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_wait_times_out_naming_each_statefulset_and_still_writes_status() {
    // The double runs no controller: no StatefulSet ever rolls out.
    let server = FakeApiServer::new(&["default", "staging"], true);
    let args = ["apply", "examples/staging", "--wait", "--timeout", "1s"];
    let (code, out, err, _dir) = run_against(&server, &args).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("error: not rolled out after 1s: "), "{err}");
    for name in [
        "alerts-function",
        "anomaly-scorer-function",
        "notifier-function",
    ] {
        assert!(
            err.contains(&format!("StatefulSet staging/{name} (")),
            "{name}: {err}"
        );
    }
    let alerts = server.find("Function", "alerts").unwrap();
    assert_eq!(alerts["status"]["conditions"][1]["type"], "Ready");
    assert_eq!(alerts["status"]["conditions"][1]["status"], "False");
}

#[tokio::test(flavor = "multi_thread")]
async fn take_over_applies_what_another_source_owns() {
    let server = FakeApiServer::new(&["default", "staging"], true);
    let (code, _, err, _dir) =
        run_against(&server, &["apply", "examples/staging", "--source", "other"]).await;
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err, _dir) = run_against(&server, &["apply", "examples/staging"]).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("belongs to source \"other\""), "{out}");
    assert!(
        err.contains("nothing was applied: 25 objects belong to another source"),
        "{err}"
    );
    let args = ["apply", "examples/staging", "--take-over"];
    let (code, out, err, _dir) = run_against(&server, &args).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("Applied 25 objects"), "{out}");
    let alerts = server.find("Function", "alerts").unwrap();
    assert_eq!(alerts["metadata"]["labels"]["meshops.io/source"], "staging");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_apply_completes_one_that_was_interrupted() {
    let server = FakeApiServer::new(&["default", "staging"], true);
    let (code, _, err, _dir) = run_against(&server, &["apply", "examples/staging"]).await;
    assert_eq!(code, Some(0), "{err}");
    // What a killed apply leaves: an object it wrote, listed, and its revision pending.
    {
        let mut state = server.0.lock().unwrap();
        state.put(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "leftover", "namespace": "staging",
                         "labels": {"app.kubernetes.io/managed-by": "meshops", "meshops.io/source": "staging"}},
        }));
        state.rewrite("ConfigMap", "meshops-inventory-staging", |inventory| {
            let mut entries: Vec<serde_json::Value> =
                serde_json::from_str(inventory["data"]["objects"].as_str().unwrap()).unwrap();
            entries.push(serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "namespace": "staging", "name": "leftover"}));
            inventory["data"]["objects"] = serde_json::to_string(&entries).unwrap().into();
            inventory["data"]["pending"] = "killed".into();
        });
    }
    let (code, out, err, _dir) = run_against(&server, &["plan", "examples/staging"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        err.contains("note: an apply of revision killed to source \"staging\" did not finish"),
        "{err}"
    );
    assert!(
        out.contains("- v1/ConfigMap staging/leftover (removed from the repository)"),
        "{out}"
    );
    let args = ["apply", "examples/staging", "--prune"];
    let (code, out, err, _dir) = run_against(&server, &args).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("Applied 0 objects, deleted 1."), "{out}");
    assert!(server.find("ConfigMap", "leftover").is_none());
    let inventory = server
        .find("ConfigMap", "meshops-inventory-staging")
        .unwrap();
    assert!(inventory["data"].get("pending").is_none(), "{inventory}");
    assert!(!inventory["data"]["objects"]
        .as_str()
        .unwrap()
        .contains("leftover"));
    // Settled: the next apply writes nothing.
    let (code, out, err, _dir) = run_against(&server, &args).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(err.contains(" 0 writes"), "{err}");
    assert!(!err.contains("did not finish"), "{err}");
}
