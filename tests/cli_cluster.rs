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
    let args = ["plan", "examples/staging", "--prune"];
    let (code, out, err, _dir) = run_against(&server, &args).await;
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

/// examples/staging copied into a temporary directory named `staging`, to edit.
fn staging_copy() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("staging");
    std::fs::create_dir_all(&repo).unwrap();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/staging");
    for entry in std::fs::read_dir(examples).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, repo.join(path.file_name().unwrap())).unwrap();
    }
    (dir, repo)
}

fn edit(path: &std::path::Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} has no {from:?}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_function_mesh_member_keeps_its_owner_references_in_the_plan() {
    let server = FakeApiServer::new(&["default", "staging"], true);
    let (_dir, repo) = staging_copy();
    let repo_arg = repo.to_str().unwrap();
    let (code, out, err, _k) = run_against(&server, &["apply", repo_arg]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let sts = server
        .find("StatefulSet", "iot-pipeline-enrich-function")
        .unwrap();
    assert_eq!(
        sts["metadata"]["ownerReferences"][0]["name"], "iot-pipeline-enrich",
        "{sts:#}"
    );
    edit(
        &repo.join("iot-pipeline.yaml"),
        "registry.example.com/iot/enrich:1.4.2",
        "registry.example.com/iot/enrich:1.4.3",
    );
    let args = ["plan", repo_arg, "--detailed-exitcode"];
    let (code, out, err, _k) = run_against(&server, &args).await;
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        out.contains("~ apps/v1/StatefulSet staging/iot-pipeline-enrich-function"),
        "{out}"
    );
    assert!(
        out.contains("+        image: registry.example.com/iot/enrich:1.4.3"),
        "{out}"
    );
    assert!(!out.contains("ownerReferences"), "apply keeps them: {out}");
}

/// The lines of a printed plan that say what happens to an object, and its summary: what
/// `plan` and `apply` print alike (plan adds the diffs).
fn plan_lines(stdout: &str) -> Vec<&str> {
    let change = regex::Regex::new(r"^(\+|\+~|~|-/\+|-|!|=|\(-\)) \S+/\S+ \S*/\S+ \(").unwrap();
    stdout
        .lines()
        .filter(|l| change.is_match(l) || l.starts_with("Plan: ") || l.starts_with("No changes."))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_shows_deletes_only_with_prune_and_apply_prints_the_plan_it_executes() {
    let server = FakeApiServer::new(&["default", "staging"], true);
    let (_dir, repo) = staging_copy();
    let repo_arg = repo.to_str().unwrap();
    let (code, out, err, _k) = run_against(&server, &["apply", repo_arg]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    std::fs::remove_file(repo.join("notifier.yaml")).unwrap();

    // Without --prune: nothing to delete, nothing changes (exit 0 with --detailed-exitcode).
    let args = ["plan", repo_arg, "--detailed-exitcode"];
    let (code, plan, err, _k) = run_against(&server, &args).await;
    assert_eq!(code, Some(0), "{plan}{err}");
    let notifier = "compute.functionmesh.io/v1alpha1/Function staging/notifier";
    assert!(
        plan.contains(&format!(
            "(-) {notifier} (removed from the repository; would be pruned with --prune)\n"
        )),
        "{plan}"
    );
    let prunable = plan_lines(&plan)
        .iter()
        .filter(|l| l.starts_with("(-) "))
        .count();
    assert!(
        prunable >= 3,
        "the Function, its StatefulSet and Service: {plan}"
    );
    assert!(
        plan.ends_with(&format!(
            "No changes. {prunable} objects removed from the repository would be pruned with --prune.\n"
        )),
        "{plan}"
    );
    assert!(
        !plan.lines().any(|l| l.starts_with("- ")),
        "no delete shown: {plan}"
    );
    assert!(!plan.contains("--- live"), "no diff of what stays: {plan}");

    // apply without --prune prints that plan, deletes nothing and keeps the inventory entry.
    let (code, out, err, _k) = run_against(&server, &["apply", repo_arg]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out, format!("{plan}Applied 0 objects, deleted 0.\n"));
    assert!(server.find("Function", "notifier").is_some());

    // With --prune: deletes, counted, with their diffs; exit 2 with --detailed-exitcode.
    let args = ["plan", repo_arg, "--prune", "--detailed-exitcode"];
    let (code, plan, err, _k) = run_against(&server, &args).await;
    assert_eq!(code, Some(2), "{plan}{err}");
    assert!(
        plan.contains(&format!("- {notifier} (removed from the repository)\n")),
        "{plan}"
    );
    assert!(
        plan.contains(&format!(
            "Plan: 0 to create, 0 to change, 0 to recreate, {prunable} to delete.\n"
        )),
        "{plan}"
    );
    assert!(!plan.contains("(-) "), "{plan}");
    assert!(
        plan.contains("-kind: Function"),
        "the delete's diff: {plan}"
    );

    // apply --prune prints the same lines and summary (without the diffs) and does them.
    let args = ["apply", repo_arg, "--prune", "--dry-run"];
    let (code, dry, err, _k) = run_against(&server, &args).await;
    assert_eq!(code, Some(0), "{dry}{err}");
    assert_eq!(plan_lines(&dry), plan_lines(&plan));
    assert_eq!(
        dry,
        plan_lines(&plan).join("\n") + "\n",
        "nothing but the plan"
    );
    // A delete the server refuses: exit 1, named, kept in the inventory for the next apply.
    server
        .0
        .lock()
        .unwrap()
        .refuse_delete
        .insert("notifier".into());
    let (code, out, err, _k) = run_against(&server, &["apply", repo_arg, "--prune"]).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.starts_with(&dry), "the plan first: {out}");
    assert!(
        out.contains(&format!("Applied 0 objects, deleted {}.\n", prunable - 1)),
        "{out}"
    );
    assert!(
        out.contains(&format!("could not delete {notifier}: ")),
        "{out}"
    );
    server.0.lock().unwrap().refuse_delete.clear();
    let (code, out, err, _k) = run_against(&server, &["apply", repo_arg, "--prune"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        out,
        format!(
            "- {notifier} (removed from the repository)\n\
             Plan: 0 to create, 0 to change, 0 to recreate, 1 to delete.\n\
             Applied 0 objects, deleted 1.\n"
        ),
        "{err}"
    );
    assert!(server.find("Function", "notifier").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_with_prune_of_an_empty_repository_fails_as_its_apply_would() {
    let server = FakeApiServer::new(&["default", "staging"], true);
    let (code, out, err, _k) = run_against(&server, &["apply", "examples/staging"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let empty = tempfile::tempdir().unwrap();
    let empty = empty.path().to_str().unwrap();
    let refused = "the repository renders no objects but the inventory lists 25; refusing to \
                   prune everything (pass --allow-empty if that is really wanted)";
    for command in ["plan", "apply"] {
        let args = [
            command,
            empty,
            "--source",
            "staging",
            "--prune",
            "--detailed-exitcode",
        ];
        let args = if command == "apply" {
            &args[..5]
        } else {
            &args[..]
        };
        let (code, out, err, _k) = run_against(&server, args).await;
        assert_eq!(code, Some(1), "meshops {args:?}: {out}{err}");
        assert!(err.contains(refused), "{err}");
    }
    let args = [
        "plan",
        empty,
        "--source",
        "staging",
        "--prune",
        "--allow-empty",
    ];
    let (code, out, err, _k) =
        run_against(&server, &[&args[..], &["--detailed-exitcode"]].concat()).await;
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(out.contains("0 to recreate, 25 to delete."), "{out}");
    // Without --prune the same repository deletes nothing, and says so.
    let args = ["plan", empty, "--source", "staging", "--detailed-exitcode"];
    let (code, out, err, _k) = run_against(&server, &args).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.ends_with(
            "No changes. 25 objects removed from the repository would be pruned with --prune.\n"
        ),
        "{out}"
    );
}
