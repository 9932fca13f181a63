//! `meshops agent` as it runs in a pod, against the API double served over HTTP and a git
//! repository over file://: its config checks, its HTTP endpoints (every webhook case), and
//! a push → webhook → apply round trip. The same against a real API server is in e2e.rs.

mod support;

use std::process::Command;
use std::time::Duration;

use meshops::agent::webhook;
use support::agent::{pull_request_event, push_event, AgentProcess, GitRepo};
use support::github::FakeGithub;
use support::FakeApiServer;

const SECRET: &str = "a webhook secret";

fn meshops(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_meshops"))
        .args(args)
        .output()
        .unwrap()
}

fn check(config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.yaml");
    std::fs::write(&path, config).unwrap();
    let out = meshops(&["agent", "--config", path.to_str().unwrap(), "--check"]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

const HEADER: &str = "apiVersion: meshops.io/v1alpha1\nkind: AgentConfig\n";

#[test]
fn the_bundled_agent_config_is_valid() {
    let out = meshops(&["agent", "--config", "examples/agent.yaml", "--check"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid, 2 source(s)"));
}

#[test]
fn config_errors_name_the_file_line_and_field() {
    let (code, text) = check(&format!(
        "{HEADER}sources:\n- name: prod\n  url: https://example.com/x.git\n  intervall: 1m\n"
    ));
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("agent.yaml:6:"), "{text}");
    assert!(text.contains("intervall"), "{text}");
    assert!(text.contains("interval"), "a did-you-mean hint: {text}");

    let (code, text) = check(&format!(
        "{HEADER}sources:\n- name: prod\n  url: https://example.com/x.git\n  driftInterval: soon\n"
    ));
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("agent.yaml:6:"), "{text}");

    let (code, text) = check(&format!(
        "{HEADER}github: {{tokenEnv: GITHUB_TOKEN, requestTimeout: 0s}}\nsources:\n- name: prod\n  url: a\n"
    ));
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("requestTimeout \"0s\" is not a positive duration"),
        "{text}"
    );

    let (code, text) = check(&format!(
        "{HEADER}sources:\n- name: prod\n  url: a\n- name: prod\n  url: b\n"
    ));
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("source \"prod\" is defined twice"), "{text}");
    assert!(text.contains("agent.yaml:6:"), "{text}");

    let (code, text) = check(&format!(
        "{HEADER}sources:\n- name: prod\n  url: a\n  ref: {{commit: main}}\n"
    ));
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("agent.yaml:6:"), "{text}");

    let (code, text) = check(HEADER);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("sources"), "{text}");

    let (code, text) = check("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("not a ConfigMap"), "{text}");

    let (code, text) = check("");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("exactly one"), "{text}");
}

#[test]
fn a_source_repository_may_not_hold_an_agent_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy("examples/agent.yaml", dir.path().join("agent.yaml")).unwrap();
    let out = meshops(&["validate", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("misplaced-agent-config"), "{text}");
}

/// A running agent on the API double, following examples/staging (committed as `first`
/// under `deploy/`) with `extra` lines in its source's config.
struct Running {
    server: FakeApiServer,
    repo: GitRepo,
    first: String,
    agent: AgentProcess,
    _dir: tempfile::TempDir,
}

/// Starts an agent as [`Running`] describes and runs `check` on a blocking thread (the
/// agent's client is blocking).
async fn with_agent(extra: &str, check: impl FnOnce(Running) + Send + 'static) {
    with_agent_and(extra, "", check).await
}

/// [`with_agent`] with `top` lines added to the AgentConfig itself.
async fn with_agent_and(extra: &str, top: &str, check: impl FnOnce(Running) + Send + 'static) {
    let server = FakeApiServer::new(&["default", "staging"], true);
    let url = server.listen().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = FakeApiServer::kubeconfig(&url, dir.path());
    let repo = GitRepo::with_staging(&dir.path().join("repo"), "staging");
    let first = repo.commit("staging");
    std::fs::write(dir.path().join("secret"), format!("{SECRET}\n")).unwrap();
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "{HEADER}stateDir: {state}\nwebhook: {{secretFile: {secret}}}\n\
             leaderElection: {{enabled: false}}\n{top}\
             sources:\n- name: staging\n  url: {url}\n  path: deploy\n  interval: 1h\n  \
             rolloutTimeout: 0s\n{extra}",
            state = dir.path().join("state").display(),
            secret = dir.path().join("secret").display(),
            url = repo.url(),
        ),
    )
    .unwrap();
    tokio::task::spawn_blocking(move || {
        let agent = AgentProcess::start(
            &config,
            &["--kubeconfig", kubeconfig.to_str().unwrap()],
            &dir.path().join("agent.log"),
        );
        check(Running {
            server,
            repo,
            first,
            agent,
            _dir: dir,
        });
    })
    .await
    .unwrap();
}

fn signed(body: &[u8]) -> String {
    webhook::sign(SECRET.as_bytes(), body)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_applies_on_start_and_on_a_signed_push() {
    let extra = "  driftInterval: 1h\n  namespaces: [staging, default]\n  \
                 github: {repo: acme/functions}\n";
    with_agent(extra, |running| {
        let Running {
            server,
            repo,
            first,
            agent,
            ..
        } = running;
        // Startup applies the branch's head.
        agent.wait_applied("staging", &first);
        assert!(server.find("Function", "alerts").is_some());
        assert_eq!(agent.get("/readyz").unwrap().status, 200);
        let source = agent.source("staging");
        assert_eq!(source["result"], "applied", "{source}");
        assert_eq!(source["url"], repo.url());
        assert!(
            agent.metric("meshops_reconcile_total{source=\"staging\",result=\"applied\"}") >= 1.0
        );
        assert!(agent.metric("meshops_api_requests_total{verb=\"PATCH\"}") > 0.0);
        assert!(agent.metric("meshops_git_fetch_total{source=\"staging\",result=\"ok\"}") >= 1.0);
        assert!(agent.metric("meshops_last_applied_timestamp_seconds{source=\"staging\"}") > 1.7e9);

        // Webhook cases, each answered at once.
        let ping = br#"{"zen": "Design for failure."}"#;
        let hook = |event: &str, delivery: &str, signature: Option<&str>, body: &[u8]| {
            let mut headers = vec![
                ("X-GitHub-Event", event.to_owned()),
                ("X-GitHub-Delivery", delivery.to_owned()),
                ("Content-Type", "application/json".to_owned()),
            ];
            if let Some(signature) = signature {
                headers.push(("X-Hub-Signature-256", signature.to_owned()));
            }
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            agent.post("/webhooks/github", &headers, body)
        };
        assert_eq!(hook("ping", "d1", Some(&signed(ping)), ping).status, 200);
        assert_eq!(hook("ping", "d2", None, ping).status, 401);
        let wrong = webhook::sign(b"not the secret", ping);
        assert_eq!(hook("ping", "d3", Some(&wrong), ping).status, 401);
        let changed = br#"{"zen": "Design for success."}"#;
        assert_eq!(hook("ping", "d4", Some(&signed(ping)), changed).status, 401);
        let big = vec![b' '; 1024 * 1024 + 1];
        assert_eq!(hook("push", "d5", Some(&signed(&big)), &big).status, 413);
        let junk = b"not json";
        assert_eq!(hook("push", "d6", Some(&signed(junk)), junk).status, 400);
        assert_eq!(hook("issues", "d7", Some(&signed(ping)), ping).status, 202);
        // Until the signature holds the event header is nobody's word: counted as `other`.
        assert_eq!(
            agent.metric(
                "meshops_webhook_deliveries_total{event=\"other\",result=\"unauthorized\"}"
            ),
            3.0
        );
        // Whatever event a caller names, signed or not, the label is one of four.
        assert_eq!(hook("x-made-up-4711", "d7a", None, ping).status, 401);
        let made_up = hook("x-made-up-4712", "d7b", Some(&signed(ping)), ping);
        assert_eq!(made_up.status, 202);
        let metrics = agent.get("/metrics").unwrap().body;
        assert!(
            !metrics.contains("4711") && !metrics.contains("4712"),
            "{metrics}"
        );
        assert_eq!(
            agent.metric("meshops_webhook_deliveries_total{event=\"other\",result=\"ignored\"}"),
            2.0
        );
        for line in metrics
            .lines()
            .filter(|l| l.starts_with("meshops_webhook_deliveries_total{"))
        {
            let event = line
                .split("event=\"")
                .nth(1)
                .and_then(|r| r.split('"').next());
            assert!(
                matches!(event, Some("push" | "pull_request" | "ping" | "other")),
                "{line}"
            );
        }

        // A push elsewhere triggers nothing; a push to the tracked branch applies.
        repo.edit("deploy/notifier.yaml", "replicas: 1", "replicas: 2");
        let second = repo.commit("two replicas");
        let other = push_event(
            "acme/functions",
            "https://github.com/acme/functions.git",
            "refs/heads/dev",
            &second,
        );
        let answer = hook("push", "d8", Some(&signed(&other)), &other);
        assert_eq!(answer.status, 202);
        assert_eq!(answer.json()["triggered"], serde_json::json!([]));
        let push = push_event(
            "acme/functions",
            "https://github.com/acme/functions.git",
            "refs/heads/main",
            &second,
        );
        let answer = hook("push", "d9", Some(&signed(&push)), &push);
        assert_eq!(answer.status, 202, "{}", answer.body);
        assert_eq!(answer.json()["triggered"], serde_json::json!(["staging"]));
        agent.wait_applied("staging", &second);
        // The replayed delivery is recognised and ignored.
        let replay = hook("push", "d9", Some(&signed(&push)), &push);
        assert_eq!(replay.status, 200);
        assert_eq!(replay.json()["ignored"], "delivery already received");

        // A manual sync of an unknown source is a 404; of a known one, 202.
        assert_eq!(
            agent.post("/api/v1/sources/nope/sync", &[], b"").status,
            404
        );
        assert_eq!(
            agent.post("/api/v1/sources/staging/sync", &[], b"").status,
            202
        );

        let status = agent.terminate();
        assert!(status.success(), "{status:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn git_failures_are_retried_with_backoff_and_reported() {
    let server = FakeApiServer::new(&["default", "staging"], true);
    let url = server.listen().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = FakeApiServer::kubeconfig(&url, dir.path());
    let config = dir.path().join("agent.yaml");
    let missing = format!("file://{}/nowhere", dir.path().display());
    std::fs::write(
        &config,
        format!(
            "{HEADER}stateDir: {}\nleaderElection: {{enabled: false}}\n\
             sources:\n- name: gone\n  url: {missing}\n  interval: 1h\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    tokio::task::spawn_blocking(move || {
        let agent = AgentProcess::start(
            &config,
            &["--kubeconfig", kubeconfig.to_str().unwrap()],
            &dir.path().join("agent.log"),
        );
        // Startup, then retries after about 1 s and 2 s more: three failed fetches.
        let failures = |a: &AgentProcess| {
            let text = a.get("/metrics").unwrap().body;
            text.lines()
                .filter(|l| l.starts_with("meshops_git_fetch_total{source=\"gone\""))
                .filter(|l| !l.contains("result=\"ok\""))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        };
        agent.wait_for("three failed fetches", Duration::from_secs(20), |a| {
            failures(a) >= 3.0
        });
        // Backed off: the next tries come after 4 s, 8 s …, not at once.
        let seen = failures(&agent);
        assert!(seen <= 4.0, "{seen} failed fetches in ~3 s: no backoff");
        let source = agent.source("gone");
        let error = source["error"].as_str().unwrap();
        assert!(error.contains(&missing), "the URL is named: {error}");
        assert_ne!(source["result"], "applied");
        assert!(source["lastAppliedCommit"].is_null());
        assert!(
            agent.log_text().contains("will retry"),
            "{}",
            agent.log_text()
        );
        assert_eq!(agent.get("/healthz").unwrap().status, 200, "still up");
        assert!(agent.terminate().success());
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn self_heal_reverts_a_foreign_edit() {
    with_agent("  selfHeal: true\n  driftInterval: 1s\n", |running| {
        let Running {
            server,
            first,
            agent,
            ..
        } = running;
        agent.wait_applied("staging", &first);
        let image = |server: &FakeApiServer| {
            server.find("StatefulSet", "notifier-function").unwrap()["spec"]["template"]["spec"]
                ["containers"][0]["image"]
                .clone()
        };
        let original = image(&server);
        server.edit(
            "StatefulSet",
            "notifier-function",
            "/spec/template/spec/containers/0/image",
            serde_json::json!("hotfix"),
            "f:spec",
        );
        assert_eq!(image(&server), "hotfix");
        agent.wait_for("the edit reverted", Duration::from_secs(20), |_| {
            image(&server) == original
        });
        // The pass is counted once it ends, a moment after its write reverted the edit.
        agent.wait_for("the heal counted", Duration::from_secs(10), |agent| {
            agent.metric("meshops_reconcile_total{source=\"staging\",result=\"healed\"}") >= 1.0
        });
        assert!(agent.terminate().success());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_outside_the_allowed_namespaces_applies_nothing() {
    with_agent("  namespaces: [default]\n", |running| {
        let Running {
            server,
            first,
            agent,
            ..
        } = running;
        agent.wait_for("the refusal", Duration::from_secs(20), |a| {
            a.source("staging")["result"] == "namespace-not-allowed"
        });
        let source = agent.source("staging");
        assert_eq!(source["lastSeenCommit"], first.as_str());
        assert!(source["lastAppliedCommit"].is_null());
        let error = source["error"].as_str().unwrap();
        assert!(
            error.contains("outside the namespaces this source may write to (default)"),
            "{error}"
        );
        assert!(
            server.0.lock().unwrap().objects.is_empty(),
            "nothing applied"
        );
        assert!(agent.terminate().success());
    })
    .await;
}

#[test]
fn an_unknown_context_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = FakeApiServer::kubeconfig("http://127.0.0.1:1", dir.path());
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "{HEADER}stateDir: {}\nsources:\n- name: a\n  url: file:///nowhere\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let out = meshops(&[
        "agent",
        "--config",
        config.to_str().unwrap(),
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--context",
        "nope",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("nope"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_reports_syncs_drift_and_pull_request_plans_to_github() {
    let github = FakeGithub::default();
    let api = github.start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("github-token");
    std::fs::write(&token, "ghp_agent_token").unwrap();
    let top = format!(
        "github: {{apiUrl: \"{api}\", tokenFile: {}}}\n",
        token.display()
    );
    let extra = "  github: {repo: acme/functions}\n  driftInterval: 1s\n";
    let fake = github.clone();
    with_agent_and(extra, &top, move |running| {
        let Running {
            server,
            repo,
            first,
            agent,
            ..
        } = running;
        let github = fake;
        agent.wait_applied("staging", &first);
        agent.wait_for("the sync status", Duration::from_secs(10), |_| {
            github.statuses_on(&first, "meshops/sync/staging").len() >= 2
        });
        let sync = github.statuses_on(&first, "meshops/sync/staging");
        assert_eq!(sync[0].0, "pending");
        assert!(
            sync[0].1.starts_with("applying: Plan: 25 to create"),
            "{sync:?}"
        );
        assert_eq!(sync[1].0, "success");
        assert!(
            sync[1].1.starts_with("applied: Plan: 25 to create"),
            "{sync:?}"
        );
        assert!(github
            .requests()
            .iter()
            .all(|r| r.authorization == "Bearer ghp_agent_token"));

        // A pull request against main: planned against the cluster, commented, never applied.
        repo.git(&["checkout", "-q", "-b", "feature"]);
        repo.edit("deploy/notifier.yaml", "notifier:1.1.0", "notifier:1.3.0");
        let head = repo.commit("notifier 1.3.0");
        repo.git(&["update-ref", "refs/pull/7/head", &head]);
        repo.git(&["checkout", "-q", "main"]);
        // A branch of the repository itself, by someone without a role: planned.
        let event = String::from_utf8(pull_request_event(
            7,
            &head,
            Some("acme/functions"),
            "CONTRIBUTOR",
        ))
        .unwrap();
        let answer = agent.post(
            "/webhooks/github",
            &[
                ("X-GitHub-Event", "pull_request"),
                ("X-GitHub-Delivery", "pr-1"),
                ("X-Hub-Signature-256", &signed(event.as_bytes())),
            ],
            event.as_bytes(),
        );
        assert_eq!(answer.status, 202, "{}", answer.body);
        assert_eq!(answer.json()["planning"], serde_json::json!(["staging"]));
        agent.wait_for("the plan comment", Duration::from_secs(20), |_| {
            !github.comments(7).is_empty()
        });
        let comment = &github.comments(7)[0];
        assert!(
            comment.starts_with("<!-- meshops:plan:staging:1 -->"),
            "{comment}"
        );
        assert!(
            comment.contains("Plan: 0 to create, 2 to change"),
            "{comment}"
        );
        assert!(
            comment.contains("+        image: registry.example.com/iot/notifier:1.3.0"),
            "{comment}"
        );
        let plan = github.statuses_on(&head, "meshops/plan/staging");
        assert_eq!(plan[0].0, "success", "{plan:?}");
        assert_eq!(
            server.find("Function", "notifier").unwrap()["spec"]["image"],
            "registry.example.com/iot/notifier:1.1.0",
            "a plan applies nothing"
        );

        // A foreign edit: the deployed commit's drift status fails, naming it.
        server.edit(
            "StatefulSet",
            "notifier-function",
            "/spec/template/spec/containers/0/image",
            serde_json::json!("hotfix"),
            "f:spec",
        );
        agent.wait_for("the drift status", Duration::from_secs(20), |_| {
            github
                .statuses_on(&first, "meshops/drift/staging")
                .iter()
                .any(|(state, _)| state == "failure")
        });
        let drift = github.statuses_on(&first, "meshops/drift/staging");
        let failure = drift.iter().find(|(state, _)| state == "failure").unwrap();
        assert!(
            failure
                .1
                .starts_with("1 object drifted: StatefulSet staging/notifier-function"),
            "{drift:?}"
        );
        assert!(failure.1.contains("by kubectl-edit"), "{drift:?}");
        assert!(agent.terminate().success());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_signatures_are_rate_limited_per_client_and_globally() {
    with_agent("", |running| {
        let agent = running.agent;
        let ping = br#"{"zen": "Keep it logically awesome."}"#;
        let wrong = webhook::sign(b"a guess", ping);
        let good = signed(ping);
        let deliveries = std::cell::Cell::new(0);
        let send = |from: [u8; 4], signature: &str| {
            deliveries.set(deliveries.get() + 1);
            let delivery = format!("flood-{}", deliveries.get());
            agent.post_from(
                from.into(),
                "/webhooks/github",
                &[
                    ("X-GitHub-Event", "ping"),
                    ("X-GitHub-Delivery", &delivery),
                    ("X-Hub-Signature-256", signature),
                    ("Content-Type", "application/json"),
                ],
                ping,
            )
        };
        // 10 failures a minute per client: the 11th is held back.
        for n in 1..=10 {
            assert_eq!(send([127, 0, 0, 2], &wrong).status, 401, "failure {n}");
        }
        let limited = send([127, 0, 0, 2], &wrong);
        assert_eq!(limited.status, 429, "{}", limited.body);
        let retry_after: u64 = limited
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no Retry-After: {:?}", limited.headers));
        assert!((1..=6).contains(&retry_after), "{retry_after}");
        // A signed delivery is never limited, from that client or another.
        assert_eq!(send([127, 0, 0, 2], &good).status, 200);
        assert_eq!(send([127, 0, 0, 3], &good).status, 200);
        // Another client has its own allowance.
        assert_eq!(send([127, 0, 0, 3], &wrong).status, 401);

        // 100 failures a minute in all: clients that each stay under their own limit are
        // held back together.
        let mut failures = 11;
        let mut global = None;
        'clients: for host in 10..=40u8 {
            for n in 0..10 {
                let answer = send([127, 0, 1, host], &wrong);
                match answer.status {
                    401 => failures += 1,
                    429 => {
                        global = Some((n, answer));
                        break 'clients;
                    }
                    other => panic!("{other}: {}", answer.body),
                }
            }
        }
        let (n, answer) = global.expect("the global limit never held");
        assert!(n < 10, "a client under its own limit");
        assert!(
            (100..=130).contains(&failures),
            "{failures} failures let through"
        );
        assert!(answer.header("retry-after").is_some());
        // Meanwhile GitHub's deliveries are still taken.
        assert_eq!(send([127, 0, 2, 1], &good).status, 200);
        assert!(
            agent.metric(
                "meshops_webhook_deliveries_total{event=\"other\",result=\"rate-limited\"}"
            ) >= 2.0
        );
        assert_eq!(
            agent.metric("meshops_webhook_deliveries_total{event=\"ping\",result=\"ok\"}"),
            3.0
        );
        assert!(agent.terminate().success());
    })
    .await;
}

/// Posts a signed pull_request event; the answer's JSON.
fn post_pull_request(agent: &AgentProcess, delivery: &str, event: &[u8]) -> serde_json::Value {
    let answer = agent.post(
        "/webhooks/github",
        &[
            ("X-GitHub-Event", "pull_request"),
            ("X-GitHub-Delivery", delivery),
            ("X-Hub-Signature-256", &signed(event)),
        ],
        event,
    );
    assert_eq!(answer.status, 202, "{}", answer.body);
    answer.json()
}

/// A commit on a branch of `repo` published as `refs/pull/NUMBER/head`; its id.
fn pull_request_head(repo: &GitRepo, number: u64, image: &str) -> String {
    repo.git(&["checkout", "-q", "-B", &format!("pr-{number}"), "main"]);
    repo.edit("deploy/notifier.yaml", "notifier:1.1.0", image);
    let head = repo.commit(&format!("pull request {number}"));
    repo.git(&["update-ref", &format!("refs/pull/{number}/head"), &head]);
    repo.git(&["checkout", "-q", "main"]);
    head
}

/// The GitHub stand-in and the AgentConfig lines that report to it.
async fn github_reporting(dir: &std::path::Path) -> (FakeGithub, String) {
    let github = FakeGithub::default();
    let api = github.start().await;
    let token = dir.join("github-token");
    std::fs::write(&token, "ghp_agent_token").unwrap();
    let top = format!(
        "github: {{apiUrl: \"{api}\", tokenFile: {}}}\n",
        token.display()
    );
    (github, top)
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_requests_from_forks_are_planned_only_for_trusted_authors() {
    let dir = tempfile::tempdir().unwrap();
    let (github, top) = github_reporting(dir.path()).await;
    let extra = "  github: {repo: acme/functions}\n";
    with_agent_and(extra, &top, move |running| {
        let Running {
            repo, first, agent, ..
        } = running;
        agent.wait_applied("staging", &first);
        let outsider = pull_request_head(&repo, 8, "notifier:6.6.6");
        let stranger = pull_request_head(&repo, 10, "notifier:6.6.7");
        let member = pull_request_head(&repo, 9, "notifier:1.3.0");

        // A fork by a contributor, by nobody in particular, from a deleted fork: refused.
        for (number, head, head_repo, association, delivery) in [
            (
                8,
                &outsider,
                Some("mallory/functions"),
                "CONTRIBUTOR",
                "pr-8",
            ),
            (10, &stranger, Some("mallory/functions"), "NONE", "pr-10"),
            (10, &stranger, None, "FIRST_TIME_CONTRIBUTOR", "pr-10b"),
        ] {
            let event = pull_request_event(number, head, head_repo, association);
            let answer = post_pull_request(&agent, delivery, &event);
            assert_eq!(answer["planning"], serde_json::json!([]), "{answer}");
            assert_eq!(
                answer["refused"],
                serde_json::json!(["staging"]),
                "{answer}"
            );
        }
        assert_eq!(
            agent.metric(
                "meshops_webhook_deliveries_total{event=\"pull_request\",result=\"refused\"}"
            ),
            3.0
        );
        // The same from a member's fork: planned.
        let event = pull_request_event(9, &member, Some("someone/functions"), "MEMBER");
        let answer = post_pull_request(&agent, "pr-9", &event);
        assert_eq!(
            answer["planning"],
            serde_json::json!(["staging"]),
            "{answer}"
        );
        agent.wait_for("the member's plan", Duration::from_secs(20), |_| {
            !github.comments(9).is_empty()
        });
        assert!(github.comments(9)[0].contains("notifier:1.3.0"));
        // Plans run in the order asked for: had the refused ones been queued, they would
        // have been planned before #9. Nothing of them reached GitHub or the log's plans.
        for (number, head) in [(8, &outsider), (10, &stranger)] {
            assert!(github.comments(number).is_empty(), "#{number} commented");
            assert!(github.statuses_on(head, "meshops/plan/staging").is_empty());
        }
        let log = agent.log_text();
        assert!(
            log.contains("pull request from a fork by an outside author: not planned"),
            "{log}"
        );
        assert!(
            !log.contains(outsider.as_str()),
            "never fetched nor planned: {log}"
        );
        assert!(agent.terminate().success());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_that_opts_in_plans_pull_requests_from_forks() {
    let dir = tempfile::tempdir().unwrap();
    let (github, top) = github_reporting(dir.path()).await;
    let extra = "  github: {repo: acme/functions}\n  pullRequests: {forks: true, maxQueued: 2}\n";
    with_agent_and(extra, &top, move |running| {
        let Running {
            repo, first, agent, ..
        } = running;
        agent.wait_applied("staging", &first);
        let head = pull_request_head(&repo, 11, "notifier:1.3.0");
        let event = pull_request_event(11, &head, Some("stranger/functions"), "NONE");
        let answer = post_pull_request(&agent, "pr-11", &event);
        assert_eq!(
            answer["planning"],
            serde_json::json!(["staging"]),
            "{answer}"
        );
        agent.wait_for("the fork's plan", Duration::from_secs(20), |_| {
            !github.comments(11).is_empty()
        });
        let plan = github.statuses_on(&head, "meshops/plan/staging");
        assert_eq!(plan[0].0, "success", "{plan:?}");
        assert!(agent.terminate().success());
    })
    .await;
}
