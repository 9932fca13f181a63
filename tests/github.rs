//! The GitHub reporter against a local stand-in for the REST API (tests/support/github.rs):
//! what it sends, where, with which credentials, and how it retries; and the report queue in
//! front of it, which keeps GitHub off the deploy path.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use meshops::github::{GitHub, GithubError};
use meshops::model::agent::{GithubAccess, GithubApp};
use meshops::report::{self, Annotation, PlanReport, Queue, ReportError, Reporter, State, Status};
use support::github::FakeGithub;
use tokio_util::sync::CancellationToken;

const REPO: &str = "acme/functions";
const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

fn access(url: &str, token_file: &std::path::Path) -> GithubAccess {
    GithubAccess {
        api_url: Some(url.to_owned()),
        token_file: Some(token_file.to_path_buf()),
        token_env: None,
        app: None,
        target_url: Some("https://meshops.example.com/api/v1/sources".into()),
        request_timeout: None,
    }
}

async fn token_client() -> (FakeGithub, GitHub, tempfile::TempDir) {
    let fake = FakeGithub::default();
    let url = fake.start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "ghp_secret_token\n").unwrap();
    let github = GitHub::connect(&access(&url, &token)).unwrap();
    (fake, github, dir)
}

#[tokio::test]
async fn statuses_go_to_the_commit_once_each() {
    let (fake, github, _dir) = token_client().await;
    let pending = Status::new(
        "sync",
        "prod",
        State::Pending,
        "applying: Plan: 1 to change",
    );
    let success = Status::new("sync", "prod", State::Success, "applied and rolled out");
    github.post_status(REPO, SHA, &pending).await.unwrap();
    github.post_status(REPO, SHA, &pending).await.unwrap();
    github.post_status(REPO, SHA, &success).await.unwrap();
    let requests = fake.requests();
    assert_eq!(
        requests.len(),
        2,
        "the repeated pending is not posted again"
    );
    assert_eq!(requests[0].path, format!("/repos/{REPO}/statuses/{SHA}"));
    assert_eq!(requests[0].authorization, "Bearer ghp_secret_token");
    assert_eq!(requests[0].body["state"], "pending");
    assert_eq!(requests[0].body["context"], "meshops/sync/prod");
    assert_eq!(
        requests[0].body["target_url"],
        "https://meshops.example.com/api/v1/sources"
    );
    assert_eq!(requests[1].body["state"], "success");
    assert_eq!(requests[1].body["description"], "applied and rolled out");
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried_as_github_asks() {
    let (fake, github, _dir) = token_client().await;
    fake.fail_next(502, vec![]);
    fake.fail_next(429, vec![("retry-after", "1".into())]);
    let status = Status::new("sync", "prod", State::Pending, "applying");
    github.post_status(REPO, SHA, &status).await.unwrap();
    assert_eq!(fake.requests().len(), 3, "two refusals, then the status");
    let reset = (jiff::Timestamp::now().as_second() + 1).to_string();
    fake.fail_next(
        403,
        vec![
            ("x-ratelimit-remaining", "0".into()),
            ("x-ratelimit-reset", reset),
        ],
    );
    let status = Status::new("sync", "prod", State::Success, "applied");
    github.post_status(REPO, SHA, &status).await.unwrap();
    assert_eq!(fake.statuses().len(), 5);
    assert_eq!(
        fake.states_on(SHA, "meshops/sync/prod"),
        ["pending", "success"]
    );
}

#[tokio::test]
async fn a_request_that_keeps_failing_is_left_for_later_not_refused() {
    let (fake, github, _dir) = token_client().await;
    for _ in 0..3 {
        fake.fail_next(502, vec![]);
    }
    let status = Status::new("sync", "prod", State::Success, "applied");
    let err = github.post_status(REPO, SHA, &status).await.unwrap_err();
    assert_eq!(
        fake.requests().len(),
        3,
        "three tries, then the queue's turn"
    );
    assert!(matches!(err, GithubError::Refused { .. }), "{err}");
    assert!(
        matches!(ReportError::from(err), ReportError::Unavailable { .. }),
        "a 5xx is worth another try later"
    );
    fake.fail_next(404, vec![]);
    let err = github.post_status(REPO, SHA, &status).await.unwrap_err();
    assert!(
        matches!(ReportError::from(err), ReportError::Refused { .. }),
        "a 404 is not"
    );
}

#[tokio::test]
async fn a_request_is_bounded_in_time() {
    let fake = FakeGithub::default();
    let url = fake.start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "ghp_secret_token\n").unwrap();
    // The bound as the agent config sets it (github.requestTimeout).
    let github = GitHub::connect(&GithubAccess {
        request_timeout: Some("200ms".into()),
        ..access(&url, &token)
    })
    .unwrap();
    fake.set_hold(true);
    let status = Status::new("sync", "prod", State::Success, "applied");
    let err = github.post_status(REPO, SHA, &status).await.unwrap_err();
    assert!(matches!(err, GithubError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("no answer within"), "{err}");
    assert!(matches!(
        ReportError::from(err),
        ReportError::Unavailable { .. }
    ));
}

#[tokio::test]
async fn a_refusal_is_an_error_naming_the_request_without_the_token() {
    let (fake, github, _dir) = token_client().await;
    fake.fail_next(404, vec![]);
    let status = Status::new("sync", "prod", State::Success, "applied");
    let err = github.post_status(REPO, SHA, &status).await.unwrap_err();
    assert!(matches!(err, GithubError::Refused { .. }), "{err}");
    let text = format!("{err} {err:?}");
    assert!(
        text.contains(&format!("/repos/{REPO}/statuses/{SHA}")),
        "{text}"
    );
    assert!(text.contains("404"), "{text}");
    assert!(!text.contains("ghp_secret_token"), "{text}");
    assert_eq!(fake.requests().len(), 1, "a 404 is not retried");
}

fn plan(comments: Vec<String>) -> PlanReport {
    PlanReport {
        source: "prod".into(),
        pull_request: 7,
        head_sha: SHA.into(),
        status: Status::new("plan", "prod", State::Success, "Plan: 1 to change"),
        comments,
        annotations: Vec::new(),
    }
}

#[tokio::test]
async fn the_sticky_comment_is_created_once_then_edited_in_place() {
    let (fake, github, _dir) = token_client().await;
    fake.0
        .lock()
        .unwrap()
        .comments
        .insert(100, (7, "LGTM, says a person".into()));
    let first = report::split("prod", "### plan one");
    github.post_plan(REPO, &plan(first)).await.unwrap();
    let second = report::split("prod", "### plan two");
    github.post_plan(REPO, &plan(second)).await.unwrap();
    let comments = fake.comments(7);
    assert_eq!(comments.len(), 2, "{comments:?}");
    assert!(comments.contains(&"LGTM, says a person".to_owned()));
    let ours: Vec<&String> = comments.iter().filter(|c| c.contains("### plan")).collect();
    assert_eq!(ours.len(), 1, "{comments:?}");
    assert!(ours[0].ends_with("### plan two"), "{comments:?}");
    assert!(ours[0].starts_with(&report::marker("prod", 1)));
    let methods: Vec<String> = fake
        .requests()
        .iter()
        .filter(|r| r.path.contains("/issues/"))
        .map(|r| r.method.clone())
        .collect();
    assert_eq!(methods, ["GET", "POST", "GET", "PATCH"]);
    let plans: Vec<_> = fake
        .statuses()
        .into_iter()
        .filter(|s| s.1 == "meshops/plan/prod")
        .collect();
    assert_eq!(plans.len(), 1, "the same plan status is not posted twice");
    // Another source's comment on the same pull request is its own.
    let mut other = plan(report::split("staging", "### staging plan"));
    other.source = "staging".into();
    github.post_plan(REPO, &other).await.unwrap();
    assert_eq!(fake.comments(7).len(), 3);
}

#[tokio::test]
async fn a_long_plan_is_split_and_a_shorter_one_drops_the_surplus_part() {
    let (fake, github, _dir) = token_client().await;
    let long: String = (0..3000)
        .map(|i| format!("- line {i} {}\n", "x".repeat(40)))
        .collect();
    let parts = report::split("prod", &long);
    assert!(parts.len() >= 2);
    github.post_plan(REPO, &plan(parts.clone())).await.unwrap();
    let comments = fake.comments(7);
    assert_eq!(comments.len(), parts.len());
    assert!(comments.iter().all(|c| c.len() <= report::COMMENT_CHARS));
    github
        .post_plan(REPO, &plan(report::split("prod", "short now")))
        .await
        .unwrap();
    let comments = fake.comments(7);
    assert_eq!(comments.len(), 1, "{comments:?}");
    assert!(comments[0].ends_with("short now"));
}

/// An RSA key pair made with the openssl command line: (private PEM, public PEM).
fn rsa_pair(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let private = dir.join("app.pem");
    let status = Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&private)
        .arg("2048")
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let public = Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&private)
        .output()
        .unwrap();
    (private, String::from_utf8(public.stdout).unwrap())
}

async fn app_client(lifetime: i64) -> (FakeGithub, GitHub, tempfile::TempDir) {
    let fake = FakeGithub::default();
    let url = fake.start().await;
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = rsa_pair(dir.path());
    {
        let mut inner = fake.0.lock().unwrap();
        inner.app = Some((public, 123));
        inner.token_lifetime = lifetime;
    }
    let github = GitHub::connect(&GithubAccess {
        api_url: Some(url),
        token_file: None,
        token_env: None,
        app: Some(GithubApp {
            app_id: 123,
            installation_id: 456,
            private_key_file: private,
        }),
        target_url: None,
        request_timeout: None,
    })
    .unwrap();
    (fake, github, dir)
}

#[tokio::test]
async fn an_app_exchanges_its_jwt_for_an_installation_token_and_refreshes_it() {
    let (fake, github, _dir) = app_client(3600).await;
    for state in [State::Pending, State::Success] {
        let status = Status::new("sync", "prod", state, "x");
        github.post_status(REPO, SHA, &status).await.unwrap();
    }
    let requests = fake.requests();
    assert_eq!(requests[0].path, "/app/installations/456/access_tokens");
    assert!(requests[0].authorization.starts_with("Bearer ey"), "a JWT");
    assert_eq!(requests[1].authorization, "Bearer installation-456-1");
    assert_eq!(requests[2].authorization, "Bearer installation-456-1");
    assert_eq!(
        fake.0.lock().unwrap().tokens_issued,
        1,
        "a live token is reused"
    );

    // Tokens about to expire are replaced before use.
    let (fake, github, _dir) = app_client(5).await;
    for state in [State::Pending, State::Success] {
        let status = Status::new("sync", "prod", state, "x");
        github.post_status(REPO, SHA, &status).await.unwrap();
    }
    assert_eq!(fake.0.lock().unwrap().tokens_issued, 2);
    let auth: Vec<String> = fake
        .requests()
        .iter()
        .filter(|r| r.path.contains("/statuses/"))
        .map(|r| r.authorization.clone())
        .collect();
    assert_eq!(
        auth,
        ["Bearer installation-456-1", "Bearer installation-456-2"]
    );
}

#[tokio::test]
async fn an_app_posts_a_check_run_with_every_annotation() {
    let (fake, github, _dir) = app_client(3600).await;
    let mut report = plan(report::split("prod", "### invalid"));
    report.status = Status::new(
        "plan",
        "prod",
        State::Failure,
        "invalid manifests: 120 errors",
    );
    report.annotations = (1..=120)
        .map(|line| Annotation {
            path: "deploy/fn.yaml".into(),
            line,
            title: "schema".into(),
            message: format!("problem {line}"),
        })
        .collect();
    github.post_plan(REPO, &report).await.unwrap();
    let runs: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/check-runs"))
        .collect();
    assert_eq!(runs.len(), 3, "50 annotations per request");
    assert_eq!(runs[0].method, "POST");
    assert_eq!(runs[0].body["name"], "meshops plan (prod)");
    assert_eq!(runs[0].body["head_sha"], SHA);
    assert_eq!(runs[0].body["conclusion"], "failure");
    let first = &runs[0].body["output"]["annotations"];
    assert_eq!(first.as_array().unwrap().len(), 50);
    assert_eq!(first[0]["path"], "deploy/fn.yaml");
    assert_eq!(first[0]["start_line"], 1);
    assert_eq!(first[0]["annotation_level"], "failure");
    assert_eq!(runs[1].method, "PATCH");
    assert_eq!(
        runs[2].body["output"]["annotations"]
            .as_array()
            .unwrap()
            .len(),
        20
    );
}

fn meshops(args: &[&str], api: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_meshops"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("GITHUB_TOKEN", "ghp_ci_token")
        .env("GITHUB_API_URL", api)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_posts_its_comment_and_status_on_a_pull_request_from_ci() {
    let cluster = support::FakeApiServer::new(&["default", "staging"], true);
    let kube = cluster.listen().await;
    let fake = FakeGithub::default();
    let api = fake.start().await;
    fake.0.lock().unwrap().pull_heads.insert(42, SHA.into());
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = support::FakeApiServer::kubeconfig(&kube, dir.path());
    let kubeconfig = kubeconfig.to_str().unwrap().to_owned();
    let invalid = dir.path().join("invalid");
    std::fs::create_dir(&invalid).unwrap();
    std::fs::write(
        invalid.join("fn.yaml"),
        "apiVersion: compute.functionmesh.io/v1alpha1\nkind: Function\nmetadata: {name: f}\nspec:\n  replicaz: 2\n",
    )
    .unwrap();
    let invalid = invalid.to_str().unwrap().to_owned();
    let fake2 = fake.clone();
    tokio::task::spawn_blocking(move || {
        let fake = fake2;
        let target = format!("{REPO}#42");
        let out = meshops(
            &[
                "plan",
                "examples/staging",
                "--source",
                "staging",
                "--github-comment",
                &target,
                "--kubeconfig",
                &kubeconfig,
            ],
            &api,
        );
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let comments = fake.comments(42);
        assert_eq!(comments.len(), 1);
        assert!(
            comments[0].starts_with(&report::marker("staging", 1)),
            "{}",
            comments[0]
        );
        assert!(comments[0].contains("| StatefulSet |"), "{}", comments[0]);
        assert!(
            comments[0].contains("Plan: 25 to create"),
            "{}",
            comments[0]
        );
        let statuses = fake.statuses();
        assert_eq!(statuses.len(), 1);
        assert_eq!(statuses[0].0, SHA);
        assert_eq!(statuses[0].1, "meshops/plan/staging");
        assert_eq!(statuses[0].2, "success");
        assert!(fake
            .requests()
            .iter()
            .all(|r| r.authorization == "Bearer ghp_ci_token"));

        // Invalid manifests: the errors are the comment, the status fails, exit 1.
        let out = meshops(
            &[
                "plan",
                &invalid,
                "--source",
                "staging",
                "--github-comment",
                &target,
                "--kubeconfig",
                &kubeconfig,
            ],
            &api,
        );
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let comments = fake.comments(42);
        assert_eq!(comments.len(), 1, "edited in place");
        assert!(comments[0].contains("fn.yaml:5:3"), "{}", comments[0]);
        assert!(comments[0].contains("replicaz"), "{}", comments[0]);
        let last = fake.statuses().pop().unwrap();
        assert_eq!(last.2, "failure");
        assert!(
            last.3.starts_with("invalid manifests: 3 errors; first "),
            "{}",
            last.3
        );
        assert!(last.3.contains("fn.yaml:4:1"), "{}", last.3);

        let out = meshops(
            &["plan", "examples/staging", "--github-comment", "acme-42"],
            &api,
        );
        // A usage error, 1 as every error (2 means changes for --detailed-exitcode).
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("OWNER/REPO#NUMBER"));
    })
    .await
    .unwrap();
}

/// Waits until `condition` holds, for at most a minute (what is awaited takes seconds).
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(Instant::now() < deadline, "waited a minute for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_comment_whose_answer_was_lost_is_found_not_posted_twice() {
    let (fake, github, _dir) = token_client().await;
    let github = github.with_request_timeout(Duration::from_millis(500));
    // GitHub creates the comment but its answer never arrives.
    fake.answer_late("POST", "/comments", Duration::from_secs(3600));
    github
        .post_plan(REPO, &plan(report::split("prod", "### plan one")))
        .await
        .unwrap();
    let comments = fake.comments(7);
    assert_eq!(comments.len(), 1, "{comments:?}");
    assert!(comments[0].ends_with("### plan one"), "{comments:?}");
    let methods: Vec<String> = fake
        .requests()
        .iter()
        .filter(|r| r.path.contains("/comments"))
        .map(|r| r.method.clone())
        .collect();
    assert_eq!(
        methods,
        ["GET", "POST", "GET", "PATCH"],
        "looked up again after the lost answer, then edited"
    );
}

#[tokio::test]
async fn a_check_run_whose_answer_was_lost_is_found_not_posted_twice() {
    let (fake, github, _dir) = app_client(3600).await;
    let github = github.with_request_timeout(Duration::from_millis(500));
    fake.answer_late("POST", "/check-runs", Duration::from_secs(3600));
    let mut report = plan(report::split("prod", "### invalid"));
    report.annotations = (1..=60)
        .map(|line| Annotation {
            path: "deploy/fn.yaml".into(),
            line,
            title: "schema".into(),
            message: format!("problem {line}"),
        })
        .collect();
    github.post_plan(REPO, &report).await.unwrap();
    let runs = fake.0.lock().unwrap().check_runs.clone();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let methods: Vec<String> = fake
        .requests()
        .iter()
        .filter(|r| r.path.contains("/check-runs"))
        .map(|r| r.method.clone())
        .collect();
    assert_eq!(
        methods,
        ["POST", "GET", "PATCH"],
        "the rest of the annotations"
    );
}

fn queue(github: GitHub) -> Arc<Queue> {
    Queue::spawn(Arc::new(github), CancellationToken::new())
}

#[tokio::test]
async fn the_queue_returns_at_once_while_github_hangs_and_posts_when_it_answers() {
    let (fake, github, _dir) = token_client().await;
    let queue = queue(github);
    fake.set_hold(true);
    let status = Status::new("sync", "prod", State::Pending, "applying");
    let call = queue.status(REPO, SHA, status);
    assert!(
        call.now_or_never().is_some(),
        "the deploy does not wait for GitHub"
    );
    let call = queue.plan(REPO, plan(report::split("prod", "### plan")));
    assert!(call.now_or_never().is_some());
    eventually("the status request to reach GitHub", || fake.waiting() == 1).await;
    assert!(fake.states_on(SHA, "meshops/sync/prod").is_empty());

    fake.set_hold(false);
    queue.drained().await;
    assert_eq!(fake.states_on(SHA, "meshops/sync/prod"), ["pending"]);
    assert_eq!(fake.comments(7).len(), 1);
}

#[tokio::test]
async fn while_github_is_down_only_the_newest_state_is_kept_and_posted_when_it_is_back() {
    let (fake, github, _dir) = token_client().await;
    let queue = queue(github);
    fake.set_down(true);
    let context = "meshops/sync/prod";
    queue
        .status(
            REPO,
            SHA,
            Status::new("sync", "prod", State::Pending, "applying"),
        )
        .await;
    eventually("a first refusal", || !fake.requests().is_empty()).await;
    queue
        .status(
            REPO,
            SHA,
            Status::new("sync", "prod", State::Success, "applied"),
        )
        .await;
    // The client's three tries of `pending` are refused; `success` is waiting, so `pending`
    // is not tried again.
    eventually("three refusals", || fake.requests().len() >= 3).await;
    fake.set_down(false);
    queue.drained().await;
    assert_eq!(fake.states_on(SHA, context), ["success"]);
    assert_eq!(queue.dropped(), 0);
}

#[tokio::test]
async fn reports_go_out_once_github_recovers_from_a_spell_of_errors() {
    let (fake, github, _dir) = token_client().await;
    let queue = queue(github);
    fake.set_down(true);
    let status = Status::new("sync", "prod", State::Success, "applied");
    queue.status(REPO, SHA, status).await;
    queue
        .plan(REPO, plan(report::split("prod", "### plan")))
        .await;
    // More refusals than the client's own three tries: the queue tried again.
    eventually("a retry by the queue", || fake.requests().len() >= 5).await;
    assert!(fake.states_on(SHA, "meshops/sync/prod").is_empty());
    fake.set_down(false);
    queue.drained().await;
    assert_eq!(fake.states_on(SHA, "meshops/sync/prod"), ["success"]);
    assert_eq!(fake.states_on(SHA, "meshops/plan/prod"), ["success"]);
    let comments = fake.comments(7);
    assert_eq!(comments.len(), 1, "{comments:?}");
    assert_eq!(queue.depth(), 0);
}
