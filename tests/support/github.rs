//! A stand-in for the GitHub REST API on loopback: statuses, issue comments, check runs,
//! pull requests and GitHub App installation tokens, with every request recorded (method,
//! path, Authorization header, body), failures that a test queues up or switches on, and
//! answers that come late or not at all.
#![allow(dead_code)] // Each test binary uses its own subset.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub authorization: String,
    pub body: Value,
}

#[derive(Default)]
pub struct Inner {
    pub requests: Vec<Recorded>,
    /// Comments by id: (issue number, body).
    pub comments: BTreeMap<u64, (u64, String)>,
    /// Statuses GitHub took (not those it refused), in order: (sha, context, state,
    /// description).
    pub taken_statuses: Vec<(String, String, String, String)>,
    /// Check runs by id: (head sha, name).
    pub check_runs: BTreeMap<u64, (String, String)>,
    next_id: u64,
    /// Answers to give before serving normally: (status, headers).
    pub failures: VecDeque<(u16, Vec<(&'static str, String)>)>,
    /// Every request is answered 500, until switched back.
    pub down: bool,
    /// While true, requests wait before they are looked at: GitHub hangs.
    pub hold: tokio::sync::watch::Sender<bool>,
    /// Requests waiting on `hold` now.
    pub waiting: usize,
    /// Every answer is sent this late, after the request has taken effect.
    pub slow: Duration,
    /// The next request with this method and a path containing this takes effect, but its
    /// answer is sent this late.
    pub late: Vec<(String, String, Duration)>,
    /// Installation tokens handed out, and how long each lives (seconds).
    pub tokens_issued: u32,
    pub token_lifetime: i64,
    /// The App's public key (PEM) to verify the JWT with, and its id.
    pub app: Option<(String, u64)>,
    pub pull_heads: BTreeMap<u64, String>,
}

#[derive(Clone, Default)]
pub struct FakeGithub(pub Arc<Mutex<Inner>>);

impl FakeGithub {
    /// Serves on 127.0.0.1; the base URL.
    pub async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new().fallback(handle).with_state(self.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        url
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.0.lock().unwrap().requests.clone()
    }

    /// The statuses posted, as (sha, context, state, description).
    pub fn statuses(&self) -> Vec<(String, String, String, String)> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.contains("/statuses/"))
            .map(|r| {
                let sha = r.path.rsplit('/').next().unwrap().to_owned();
                let text = |k: &str| r.body[k].as_str().unwrap_or_default().to_owned();
                (sha, text("context"), text("state"), text("description"))
            })
            .collect()
    }

    /// The statuses posted on `sha` in `context`, as (state, description), in order.
    pub fn statuses_on(&self, sha: &str, context: &str) -> Vec<(String, String)> {
        self.statuses()
            .into_iter()
            .filter(|s| s.0 == sha && s.1 == context)
            .map(|s| (s.2, s.3))
            .collect()
    }

    /// The comments on issue `number`, in id order.
    pub fn comments(&self, number: u64) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .comments
            .values()
            .filter(|(n, _)| *n == number)
            .map(|(_, body)| body.clone())
            .collect()
    }

    pub fn fail_next(&self, status: u16, headers: Vec<(&'static str, String)>) {
        self.0.lock().unwrap().failures.push_back((status, headers));
    }

    /// GitHub answers every request 500 (`true`) until switched back (`false`).
    pub fn set_down(&self, down: bool) {
        self.0.lock().unwrap().down = down;
    }

    /// GitHub hangs (`true`): requests wait, untouched, until it is switched back (`false`).
    pub fn set_hold(&self, hold: bool) {
        self.0.lock().unwrap().hold.send_replace(hold);
    }

    /// How many requests wait on [`FakeGithub::set_hold`] now.
    pub fn waiting(&self) -> usize {
        self.0.lock().unwrap().waiting
    }

    /// Every answer comes `delay` late (each request takes effect at once).
    pub fn set_slow(&self, delay: Duration) {
        self.0.lock().unwrap().slow = delay;
    }

    /// The next `method` request to a path containing `path` takes effect, but its answer
    /// comes `delay` late — for longer than the client waits, the answer is lost.
    pub fn answer_late(&self, method: &str, path: &str, delay: Duration) {
        let late = (method.to_owned(), path.to_owned(), delay);
        self.0.lock().unwrap().late.push(late);
    }

    /// The states GitHub took on `sha` in `context`, in order (refused posts left out).
    pub fn states_on(&self, sha: &str, context: &str) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .taken_statuses
            .iter()
            .filter(|s| s.0 == sha && s.1 == context)
            .map(|s| s.2.clone())
            .collect()
    }
}

fn json_answer(status: u16, value: Value) -> Response {
    (StatusCode::from_u16(status).unwrap(), axum::Json(value)).into_response()
}

async fn handle(
    State(fake): State<FakeGithub>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut held = {
        let mut inner = fake.0.lock().unwrap();
        inner.waiting += 1;
        inner.hold.subscribe()
    };
    let _ = held.wait_for(|hold| !hold).await;
    let (response, delay) = {
        let mut inner = fake.0.lock().unwrap();
        inner.waiting -= 1;
        let late = inner
            .late
            .iter()
            .position(|(m, p, _)| *m == method.as_str() && uri.path().contains(p.as_str()));
        let delay = match late {
            Some(index) => inner.late.remove(index).2,
            None => inner.slow,
        };
        let response = answer(&mut inner, &method, &uri, &authorization, body);
        (response, delay)
    };
    tokio::time::sleep(delay).await;
    response
}

fn answer(
    inner: &mut Inner,
    method: &Method,
    uri: &Uri,
    authorization: &str,
    body: Value,
) -> Response {
    let path = uri.path().to_owned();
    let authorization = authorization.to_owned();
    inner.requests.push(Recorded {
        method: method.to_string(),
        path: path.clone(),
        authorization: authorization.clone(),
        body: body.clone(),
    });
    if let Some((status, extra)) = inner.failures.pop_front() {
        let mut response = json_answer(status, json!({"message": "injected failure"}));
        for (name, value) in extra {
            response.headers_mut().insert(name, value.parse().unwrap());
        }
        return response;
    }
    if inner.down {
        return json_answer(500, json!({"message": "GitHub is down"}));
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("POST", ["app", "installations", id, "access_tokens"]) => {
            let Some((public_key, app_id)) = inner.app.clone() else {
                return json_answer(401, json!({"message": "not an app"}));
            };
            let token = authorization.strip_prefix("Bearer ").unwrap_or_default();
            let key = jsonwebtoken::DecodingKey::from_rsa_pem(public_key.as_bytes()).unwrap();
            let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
            validation.required_spec_claims.clear();
            validation.validate_exp = true;
            match jsonwebtoken::decode::<Value>(token, &key, &validation) {
                Ok(data)
                    if data.claims["iss"].to_string().trim_matches('"') == app_id.to_string() =>
                {
                    inner.tokens_issued += 1;
                    let expires = jiff::Timestamp::now()
                        + jiff::SignedDuration::from_secs(inner.token_lifetime.max(1));
                    json_answer(
                        201,
                        json!({"token": format!("installation-{id}-{}", inner.tokens_issued),
                               "expires_at": expires.to_string(),
                               "permissions": {"statuses": "write", "pull_requests": "write", "checks": "write"},
                               "repository_selection": "all"}),
                    )
                }
                _ => json_answer(401, json!({"message": "bad JWT"})),
            }
        }
        ("POST", ["repos", _, _, "statuses", sha]) => {
            let text = |k: &str| body[k].as_str().unwrap_or_default().to_owned();
            let taken = (
                sha.to_string(),
                text("context"),
                text("state"),
                text("description"),
            );
            inner.taken_statuses.push(taken);
            json_answer(201, json!({"id": 1}))
        }
        ("GET", ["repos", _, _, "pulls", number]) => {
            let number: u64 = number.parse().unwrap_or(0);
            match inner.pull_heads.get(&number) {
                Some(sha) => json_answer(200, json!({"number": number, "head": {"sha": sha}})),
                None => json_answer(404, json!({"message": "Not Found"})),
            }
        }
        ("GET", ["repos", _, _, "issues", number, "comments"]) => {
            let number: u64 = number.parse().unwrap_or(0);
            let listed: Vec<Value> = inner
                .comments
                .iter()
                .filter(|(_, (n, _))| *n == number)
                .map(|(id, (_, body))| json!({"id": id, "body": body}))
                .collect();
            json_answer(200, Value::Array(listed))
        }
        ("POST", ["repos", _, _, "issues", number, "comments"]) => {
            inner.next_id += 1;
            let id = inner.next_id;
            let text = body["body"].as_str().unwrap_or_default().to_owned();
            inner
                .comments
                .insert(id, (number.parse().unwrap_or(0), text));
            json_answer(201, json!({"id": id}))
        }
        ("PATCH", ["repos", _, _, "issues", "comments", id]) => {
            let id: u64 = id.parse().unwrap_or(0);
            let text = body["body"].as_str().unwrap_or_default().to_owned();
            match inner.comments.get_mut(&id) {
                Some(comment) => {
                    comment.1 = text;
                    json_answer(200, json!({"id": id}))
                }
                None => json_answer(404, json!({"message": "Not Found"})),
            }
        }
        ("DELETE", ["repos", _, _, "issues", "comments", id]) => {
            let id: u64 = id.parse().unwrap_or(0);
            inner.comments.remove(&id);
            StatusCode::NO_CONTENT.into_response()
        }
        ("POST", ["repos", _, _, "check-runs"]) => {
            inner.next_id += 1;
            let id = inner.next_id;
            let text = |k: &str| body[k].as_str().unwrap_or_default().to_owned();
            inner
                .check_runs
                .insert(id, (text("head_sha"), text("name")));
            json_answer(201, json!({"id": id}))
        }
        ("GET", ["repos", _, _, "commits", sha, "check-runs"]) => {
            let name = uri
                .query()
                .unwrap_or_default()
                .split('&')
                .find_map(|pair| pair.strip_prefix("check_name="))
                .map(percent_decoded);
            let runs: Vec<Value> = inner
                .check_runs
                .iter()
                .filter(|(_, (head, run))| head == sha && Some(run) == name.as_ref())
                .map(|(id, (_, run))| json!({"id": id, "name": run}))
                .collect();
            json_answer(200, json!({"total_count": runs.len(), "check_runs": runs}))
        }
        ("PATCH", ["repos", _, _, "check-runs", id]) => json_answer(200, json!({"id": id})),
        _ => json_answer(
            404,
            json!({"message": format!("Not Found: {method} {path}")}),
        ),
    }
}

fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
