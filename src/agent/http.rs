//! The agent's HTTP side: GitHub webhooks, probes, metrics and a read-only view of the
//! sources. Webhooks are verified and answered at once; the reconcile they trigger runs on
//! the source's own task (as Flux's notification-controller receivers do).

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::sync::watch;

use super::metrics::{self, Metrics};
use super::schedule::Trigger;
use super::source::SourceHandle;
use super::webhook::{self, Deliveries, MAX_BODY_BYTES};

/// What the handlers share.
pub struct Shared {
    pub sources: Vec<Arc<SourceHandle>>,
    pub metrics: Metrics,
    pub registry: Registry,
    /// `None`: no webhook configured, the endpoint answers 404.
    pub webhook_secret: Option<Vec<u8>>,
    pub deliveries: Mutex<Deliveries>,
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

async fn github(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let event = header(&headers, "x-github-event")
        .unwrap_or("unknown")
        .to_owned();
    let answer = |status: StatusCode, result: &str, body: serde_json::Value| {
        shared.metrics.delivery(&event, result);
        (status, Json(body)).into_response()
    };
    let Some(secret) = &shared.webhook_secret else {
        return answer(
            StatusCode::NOT_FOUND,
            "disabled",
            json!({"error": "no webhook secret is configured"}),
        );
    };
    if let Err(err) = webhook::verify(secret, &body, header(&headers, "x-hub-signature-256")) {
        tracing::warn!(event, error = %err, "webhook refused");
        return answer(
            StatusCode::UNAUTHORIZED,
            err.category(),
            json!({"error": err.to_string()}),
        );
    }
    if let Some(delivery) = header(&headers, "x-github-delivery") {
        let first = shared
            .deliveries
            .lock()
            .map(|mut d| d.first_time(delivery))
            .unwrap_or(true);
        if !first {
            return answer(
                StatusCode::OK,
                "duplicate",
                json!({"ignored": "delivery already received"}),
            );
        }
    }
    match event.as_str() {
        "ping" => answer(StatusCode::OK, "ok", json!({"ok": true})),
        "push" => match webhook::parse_push(&body) {
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
        "pull_request" => match webhook::parse_pull_request(&body) {
            Ok(pull) => {
                let planning = act_on(&shared, |s| {
                    webhook::plans(&pull, &s.config).then(|| s.plan_pull_request(pull.number))
                });
                tracing::info!(
                    repository = pull.repository.full_name,
                    number = pull.number,
                    action = pull.action,
                    sources = ?planning,
                    "pull request received"
                );
                accepted(answer, "planning", planning)
            }
            Err(err) => bad_payload(answer, &err),
        },
        _ => answer(
            StatusCode::ACCEPTED,
            "ignored",
            json!({"ignored": format!("event {event}")}),
        ),
    }
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
    answer: impl FnOnce(StatusCode, &str, serde_json::Value) -> Response,
    key: &str,
    sources: Vec<String>,
) -> Response {
    let result = if sources.is_empty() {
        "ignored"
    } else {
        "accepted"
    };
    answer(StatusCode::ACCEPTED, result, json!({ key: sources }))
}

fn bad_payload(
    answer: impl FnOnce(StatusCode, &str, serde_json::Value) -> Response,
    err: &webhook::WebhookError,
) -> Response {
    answer(
        StatusCode::BAD_REQUEST,
        err.category(),
        json!({"error": err.to_string()}),
    )
}
