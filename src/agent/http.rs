//! The agent's HTTP side: GitHub webhooks, probes, metrics and a read-only view of the
//! sources. Webhooks are verified and answered at once; the reconcile they trigger runs on
//! the source's own task (as Flux's notification-controller receivers do).
//!
//! A webhook is verified before anything about it is believed or kept: until the signature
//! holds, its event header is not a metric label and its delivery id is not remembered, and
//! failed signatures are rate limited per client address and globally.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{header::RETRY_AFTER, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::sync::watch;

use super::metrics::{self, Metrics};
use super::pull::Queued;
use super::schedule::Trigger;
use super::source::SourceHandle;
use super::webhook::{
    self, Admission, Deliveries, Delivery, Event, FailureLimiter, Planning, MAX_BODY_BYTES,
};

/// What the handlers share.
pub struct Shared {
    pub sources: Vec<Arc<SourceHandle>>,
    pub metrics: Metrics,
    pub registry: Registry,
    /// `None`: no webhook configured, the endpoint answers 404.
    pub webhook_secret: Option<Vec<u8>>,
    pub deliveries: Mutex<Deliveries>,
    /// Failed signatures by client address and in all.
    pub failures: Mutex<FailureLimiter>,
    /// The leadership term: `Some` while this replica leads.
    pub term: watch::Receiver<super::leader::Term>,
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/webhooks/github",
            post(github).layer(DefaultBodyLimit::max(MAX_BODY_BYTES)),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/api/v1/sources", get(sources))
        .route("/api/v1/sources/{name}/sync", post(sync))
        .with_state(shared)
}

/// Ready only while leading, so a Service in front of several replicas sends webhooks to the
/// one that acts on them.
async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    if shared.term.borrow().is_some() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not the leader\n").into_response()
    }
}

async fn metrics_text(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics::render(&shared.registry),
    )
        .into_response()
}

async fn sources(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let list: Vec<serde_json::Value> = shared.sources.iter().map(|s| s.view()).collect();
    Json(json!({ "sources": list }))
}

async fn sync(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    match shared.sources.iter().find(|s| s.config.name == name) {
        Some(source) => {
            source.trigger(Trigger::Manual);
            (StatusCode::ACCEPTED, Json(json!({"triggered": [name]}))).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no source named \"{name}\"")})),
        )
            .into_response(),
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn github(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(secret) = &shared.webhook_secret else {
        shared.metrics.delivery(Event::Other, Delivery::Disabled);
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no webhook secret is configured"})),
        )
            .into_response();
    };
    if let Err(err) = webhook::verify(secret, &body, header(&headers, "x-hub-signature-256")) {
        return refused(&shared, client, &err);
    }
    // Verified: from here the headers are GitHub's word.
    let event = Event::from_header(header(&headers, "x-github-event"));
    let answer = |status: StatusCode, result: Delivery, body: serde_json::Value| {
        shared.metrics.delivery(event, result);
        (status, Json(body)).into_response()
    };
    if let Some(delivery) = header(&headers, "x-github-delivery") {
        let first = shared
            .deliveries
            .lock()
            .map(|mut d| d.first_time(delivery))
            .unwrap_or(true);
        if !first {
            return answer(
                StatusCode::OK,
                Delivery::Duplicate,
                json!({"ignored": "delivery already received"}),
            );
        }
    }
    match event {
        Event::Ping => answer(StatusCode::OK, Delivery::Ok, json!({"ok": true})),
        Event::Push => match webhook::parse_push(&body) {
            Ok(push) => {
                let triggered = act_on(&shared, |s| {
                    webhook::moves(&push, &s.config).then(|| s.trigger(Trigger::Webhook))
                });
                tracing::info!(
                    repository = push.repository.full_name,
                    reference = push.reference,
                    commit = push.after,
                    sources = ?triggered,
                    "push received"
                );
                accepted(answer, "triggered", triggered)
            }
            Err(err) => bad_payload(answer, &err),
        },
        Event::PullRequest => match webhook::parse_pull_request(&body) {
            Ok(pull) => pull_request(&shared, &pull, answer),
            Err(err) => bad_payload(answer, &err),
        },
        Event::Other => {
            let name = header(&headers, "x-github-event").unwrap_or("none");
            tracing::debug!(event = name, "webhook event not used");
            answer(
                StatusCode::ACCEPTED,
                Delivery::Ignored,
                json!({"ignored": format!("event {name}")}),
            )
        }
    }
}

/// A delivery whose signature failed: 401 within the limits, 429 with `Retry-After` past
/// them. Counted as `event="other"`: an unverified header is nobody's word.
fn refused(shared: &Shared, client: SocketAddr, err: &webhook::WebhookError) -> Response {
    let admission = shared
        .failures
        .lock()
        .map(|mut f| f.failed(client.ip(), Instant::now()))
        .unwrap_or(Admission::Allowed);
    match admission {
        Admission::Allowed => {
            tracing::warn!(client = %client.ip(), error = %err, "webhook refused");
            shared.metrics.delivery(Event::Other, err.category());
            (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": err.to_string()})),
            )
                .into_response()
        }
        Admission::Limited { scope, retry_after } => {
            let seconds = webhook::retry_after_seconds(retry_after);
            tracing::debug!(
                client = %client.ip(),
                ?scope,
                retry_after = seconds,
                "webhook refused: too many failed signatures"
            );
            shared.metrics.delivery(Event::Other, Delivery::RateLimited);
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(RETRY_AFTER, seconds.to_string())],
                Json(json!({"error": "too many deliveries with a wrong signature"})),
            )
                .into_response()
        }
    }
}

/// Queues a plan on every source whose policy allows it; those whose policy refuses it are
/// named (`refused`), logged and counted, and GitHub is told nothing.
fn pull_request(
    shared: &Shared,
    pull: &webhook::PullRequestEvent,
    answer: impl FnOnce(StatusCode, Delivery, serde_json::Value) -> Response,
) -> Response {
    let mut planning = Vec::new();
    let mut refused = Vec::new();
    for source in &shared.sources {
        let name = source.config.name.clone();
        match webhook::plans(pull, &source.config) {
            Planning::NotOurs => {}
            Planning::Refuse(association) => {
                let head_repository = pull.pull_request.head.repo.as_ref();
                tracing::warn!(
                    source = name,
                    repository = pull.repository.full_name,
                    number = pull.number,
                    head_repository = head_repository.map(|r| r.full_name.as_str()),
                    author_association = ?association,
                    "pull request from a fork by an outside author: not planned \
                     (pullRequests.forks: true plans it)"
                );
                refused.push(name);
            }
            Planning::Plan => {
                let head = &pull.pull_request.head.sha;
                if let Queued::Displaced(dropped) = source.plan_pull_request(pull.number, head) {
                    tracing::warn!(
                        source = name,
                        dropped = dropped.number,
                        head = dropped.head,
                        "too many pull requests waiting for a plan: the oldest is dropped"
                    );
                    shared.metrics.pull_request_dropped(&name);
                }
                planning.push(name);
            }
        }
    }
    tracing::info!(
        repository = pull.repository.full_name,
        number = pull.number,
        action = pull.action,
        sources = ?planning,
        refused = ?refused,
        "pull request received"
    );
    let result = if !planning.is_empty() {
        Delivery::Accepted
    } else if !refused.is_empty() {
        Delivery::Refused
    } else {
        Delivery::Ignored
    };
    answer(
        StatusCode::ACCEPTED,
        result,
        json!({"planning": planning, "refused": refused}),
    )
}

/// Runs `act` on every source; the names of those it acted on (returned `Some`).
fn act_on(shared: &Shared, act: impl Fn(&SourceHandle) -> Option<()>) -> Vec<String> {
    shared
        .sources
        .iter()
        .filter_map(|s| act(s).map(|()| s.config.name.clone()))
        .collect()
}

/// 202 with the sources acted on under `key`; `ignored` in the metric when there are none.
fn accepted(
    answer: impl FnOnce(StatusCode, Delivery, serde_json::Value) -> Response,
    key: &str,
    sources: Vec<String>,
) -> Response {
    let result = if sources.is_empty() {
        Delivery::Ignored
    } else {
        Delivery::Accepted
    };
    answer(StatusCode::ACCEPTED, result, json!({ key: sources }))
}

fn bad_payload(
    answer: impl FnOnce(StatusCode, Delivery, serde_json::Value) -> Response,
    err: &webhook::WebhookError,
) -> Response {
    answer(
        StatusCode::BAD_REQUEST,
        err.category(),
        json!({"error": err.to_string()}),
    )
}
