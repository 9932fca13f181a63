//! No credential in any display: a marker credential is planted in every place one can be
//! written — Secret `data` and `stringData`, generic auth parameters, the OAuth2 key Secret,
//! git URL userinfo, a source's token file, the GitHub token file and the webhook secret of
//! the agent config — and every display channel is searched for it, through the binary:
//! `meshops plan` (text, a changed credential included), `meshops apply`, the PR comment,
//! commit statuses and every other request `plan --github-comment` and the agent send to
//! GitHub, the agent's debug log, `/api/v1/sources` and `/metrics`. `meshops render` is the
//! manifest to apply, not a display: it keeps the values (docs/security.md).
//!
//! Event notes are checked against the real API server (they are scrubbed by the same
//! module; see `agent::drift` tests); the API double serves no Events.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use support::agent::{free_port, AgentProcess, GitRepo};
use support::github::FakeGithub;
use support::FakeApiServer;

const MARKER: &str = "MESHOPS-MARKER-7f3a";
const REPO: &str = "acme/functions";
const HEADER: &str = "apiVersion: meshops.io/v1alpha1\nkind: AgentConfig\n";

/// The staging example with a credential planted in each place a manifest can hold one;
/// `token` is the generic auth parameter (the one a rotation changes).
fn plant(repo: &GitRepo, token: &str) {
    repo.edit(
        "deploy/alerts.yaml",
        "    pulsarConfig: pulsar\n",
        &format!(
            "    pulsarConfig: pulsar\n    authConfig:\n      genericAuth:\n        \
             clientAuthenticationPlugin: org.apache.pulsar.client.impl.auth.AuthenticationToken\n        \
             clientAuthenticationParameters: \"{token}\"\n"
        ),
    );
    // The OAuth2 private key lives in a Secret (the CRD has no inline key field).
    repo.edit(
        "deploy/pulsar-oauth2.yaml",
        "\"client_secret\":\"replace-me\"",
        &format!("\"client_secret\":\"{MARKER}-oauth2\""),
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{MARKER}-data"));
    repo.write(
        "deploy/planted-secret.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: planted\n  namespace: staging\n\
             type: Opaque\ndata:\n  password: {encoded}\nstringData:\n  token: {MARKER}-string\n"
        ),
    );
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Fails naming the channel and showing the line that leaked.
fn assert_clean(channel: &str, text: &str) {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{MARKER}-data"));
    for line in text.lines() {
        assert!(
            !line.contains(MARKER) && !line.contains(&encoded),
            "{channel} shows a credential: {line}"
        );
    }
}

fn meshops(dir: &Path, args: &[&str], github_api: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_meshops"))
        .args(args)
        .current_dir(dir)
        .env("GITHUB_TOKEN", format!("ghp_{MARKER}"))
        .env("GITHUB_API_URL", github_api)
        .env("MESHOPS_LOG", "meshops=debug")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_apply_and_the_pull_request_comment_never_show_a_credential() {
    let cluster = FakeApiServer::new(&["default", "staging"], true);
    let kube = cluster.listen().await;
    let github = FakeGithub::default();
    let api = github.start().await;
    let sha = "0123456789abcdef0123456789abcdef01234567";
    github.0.lock().unwrap().pull_heads.insert(42, sha.into());
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = FakeApiServer::kubeconfig(&kube, dir.path());
    let repo = GitRepo::with_staging(&dir.path().join("repo"), "staging");
    plant(&repo, &format!("token:{MARKER}-generic"));
    let fake = github.clone();
    tokio::task::spawn_blocking(move || {
        let kubeconfig = kubeconfig.to_str().unwrap();
        let target = format!("{REPO}#42");
        let run = |args: &[&str]| {
            let mut all = args.to_vec();
            all.extend(["--source", "staging", "--kubeconfig", kubeconfig]);
            meshops(&repo.dir, &all, &api)
        };

        // The manifest itself keeps the values: it is what gets applied.
        let render = meshops(&repo.dir, &["render", "deploy"], &api);
        assert_eq!(render.status.code(), Some(0), "{}", text(&render));
        assert!(
            text(&render).contains(&format!("--client_auth_params 'token:{MARKER}-generic'")),
            "render writes the auth parameters into the command"
        );

        let plan = run(&["plan", "deploy"]);
        assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
        assert_clean("meshops plan", &text(&plan));
        assert!(
            text(&plan).contains("--client_auth_params ******"),
            "the parameter is shown masked where it is: {}",
            text(&plan)
        );

        let apply = run(&["apply", "deploy"]);
        assert_eq!(apply.status.code(), Some(0), "{}", text(&apply));
        assert_clean("meshops apply", &text(&apply));

        // A rotated token: the change is visible, neither value is.
        repo.edit(
            "deploy/alerts.yaml",
            &format!("token:{MARKER}-generic"),
            &format!("token:{MARKER}-rotated"),
        );
        let plan = run(&["plan", "deploy"]);
        assert_clean("meshops plan of a rotation", &text(&plan));
        assert!(
            text(&plan).contains("--client_auth_params ****** (changed)"),
            "{}",
            text(&plan)
        );
        assert!(
            text(&plan).contains("clientAuthenticationParameters: '****** (changed)'"),
            "{}",
            text(&plan)
        );

        let comment = run(&["plan", "deploy", "--github-comment", &target]);
        assert_eq!(comment.status.code(), Some(0), "{}", text(&comment));
        assert_clean("meshops plan --github-comment", &text(&comment));
        let comments = fake.comments(42);
        assert_eq!(comments.len(), 1);
        assert!(comments[0].contains("(changed)"), "{}", comments[0]);

        // An invalid auth parameter: the finding, the comment and the status hide it.
        repo.edit(
            "deploy/alerts.yaml",
            &format!("\"token:{MARKER}-rotated\""),
            &format!("{{token: {MARKER}-invalid}}"),
        );
        let invalid = run(&["plan", "deploy", "--github-comment", &target]);
        assert_eq!(invalid.status.code(), Some(1), "{}", text(&invalid));
        assert_clean("an invalid plan", &text(&invalid));
        assert!(
            text(&invalid).contains("clientAuthenticationParameters"),
            "{}",
            text(&invalid)
        );

        for request in fake.requests() {
            assert_clean(
                &format!("GitHub {} {}", request.method, request.path),
                // The Authorization header carries the token to GitHub, as it must.
                &request.body.to_string(),
            );
        }
        assert!(!fake.statuses().is_empty());
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_shows_no_credential_in_its_log_api_metrics_or_reports() {
    let cluster = FakeApiServer::new(&["default", "staging"], true);
    let kube = cluster.listen().await;
    let github = FakeGithub::default();
    let api = github.start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = FakeApiServer::kubeconfig(&kube, dir.path());
    let repo = GitRepo::with_staging(&dir.path().join("repo"), "staging");
    plant(&repo, &format!("token:{MARKER}-generic"));
    let first = repo.commit("planted");
    let file = |name: &str, content: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    };
    let webhook_secret = format!("webhook-{MARKER}");
    let config = file(
        "agent.yaml",
        format!(
            "{HEADER}stateDir: {state}\nwebhook: {{secretFile: {secret}}}\n\
             leaderElection: {{enabled: false}}\n\
             github: {{apiUrl: \"{api}\", tokenFile: {github_token}}}\n\
             sources:\n\
             - name: staging\n  url: {url}\n  path: deploy\n  interval: 1h\n  \
             rolloutTimeout: 0s\n  driftInterval: 1s\n  github: {{repo: {REPO}}}\n\
             - name: userinfo\n  url: https://x-access-token:{MARKER}-url@127.0.0.1:{closed}/acme/f.git\n  \
             interval: 1h\n\
             - name: tokenfile\n  url: https://127.0.0.1:{closed}/acme/g.git\n  interval: 1h\n  \
             credentials: {{tokenFile: {git_token}}}\n",
            state = dir.path().join("state").display(),
            secret = file("webhook-secret", format!("{webhook_secret}\n")),
            github_token = file("github-token", format!("ghp_{MARKER}-github\n")),
            git_token = file("git-token", format!("{MARKER}-git\n")),
            url = repo.url(),
            closed = free_port(),
        ),
    );
    let log = dir.path().join("agent.log");
    let fake = github.clone();
    tokio::task::spawn_blocking(move || {
        let agent = AgentProcess::start(
            Path::new(&config),
            &["--kubeconfig", kubeconfig.to_str().unwrap()],
            &log,
        );
        agent.wait_applied("staging", &first);
        for failing in ["userinfo", "tokenfile"] {
            agent.wait_for(
                &format!("{failing}'s git error"),
                Duration::from_secs(30),
                |a| !a.source(failing)["error"].is_null(),
            );
        }

        // A pull request rotating the token: planned and commented.
        repo.git(&["checkout", "-q", "-b", "rotate"]);
        repo.edit(
            "deploy/alerts.yaml",
            &format!("token:{MARKER}-generic"),
            &format!("token:{MARKER}-rotated"),
        );
        let head = repo.commit("rotate the token");
        repo.git(&["update-ref", "refs/pull/7/head", &head]);
        repo.git(&["checkout", "-q", "main"]);
        let event = serde_json::json!({"action": "opened", "number": 7,
            "pull_request": {"head": {"sha": head, "repo": {"full_name": REPO}}, "base": {"ref": "main"}},
            "repository": {"full_name": REPO}})
        .to_string();
        let answer = agent.webhook(&webhook_secret, "pull_request", "pr-7", event.as_bytes());
        assert_eq!(answer.status, 202, "{}", answer.body);
        agent.wait_for("the plan comment", Duration::from_secs(30), |_| {
            !fake.comments(7).is_empty()
        });
        let comment = &fake.comments(7)[0];
        assert!(comment.contains("****** (changed)"), "{comment}");

        // A foreign edit of the planted Secret: drift, reported everywhere drift goes.
        cluster.edit(
            "Secret",
            "planted",
            "/stringData",
            serde_json::json!({"token": format!("{MARKER}-edited")}),
            "f:stringData",
        );
        agent.wait_for("the drift status", Duration::from_secs(30), |_| {
            fake.statuses_on(&first, "meshops/drift/staging")
                .iter()
                .any(|(state, _)| state == "failure")
        });

        let sources = agent.get("/api/v1/sources").expect("sources API").body;
        assert_clean("/api/v1/sources", &sources);
        assert!(sources.contains("127.0.0.1"), "{sources}");
        assert_clean("/metrics", &agent.get("/metrics").expect("metrics").body);
        for request in fake.requests() {
            assert_clean(
                &format!("GitHub {} {}", request.method, request.path),
                // The Authorization header carries the token to GitHub, as it must.
                &request.body.to_string(),
            );
        }
        assert!(agent.terminate().success());
        let log = std::fs::read_to_string(&log).unwrap();
        assert!(
            log.contains("userinfo"),
            "the failing source is logged: {log}"
        );
        assert_clean("the agent's debug log", &log);
    })
    .await
    .unwrap();
}
