//! One retry layer and one write fence for every request the kube client sends.
//!
//! The layer sits in the client's service stack (see [`super::Cluster::connect`]), below the
//! request counter, so a LIST, a server-side apply, a delete, an access review, the agent's
//! Lease and its Events all get the same treatment instead of a loop per call site:
//!
//! - An attempt that fails transiently is sent again: connection refused, reset or cut short,
//!   no answer within [`ATTEMPT_TIMEOUT`], HTTP 429, 500, 502, 503 and 504. A `Retry-After`
//!   in seconds is honoured up to [`MAX_RETRY_AFTER`]; otherwise the delay doubles from
//!   [`BASE_DELAY`] up to [`MAX_DELAY`] with equal jitter. A request gets at most [`TRIES`]
//!   attempts, client-go's budget. When the budget is spent the last answer or error is
//!   returned as is, so callers see the same typed error as without the layer.
//! - What is retried depends on what a second copy can do. GET, PUT, DELETE and PATCH are
//!   idempotent (server-side apply, its dry-run and merge patches set values; a DELETE that
//!   meshops plans carries a uid precondition), and so is the POST of an access review, which
//!   writes nothing. Any other POST creates something: it is sent again only when the server
//!   provably did not process it (the connection was refused) or refused it before
//!   processing (429, answered by the API server's flow control before any handler runs); a
//!   500 or a cut connection after a create may hide a created object, and a second create
//!   would then fail with 409 or create a duplicate (generateName). A JSON patch is treated
//!   like a create: "add to this list" applied twice adds twice.
//! - Watches and other streams are passed through untouched: no retry, no timeout, no
//!   buffering (they are answered for minutes).
//! - The [`Fence`]: once the token installed with [`super::Cluster::fence`] is cancelled
//!   (shutdown, lost Lease), every request that can change the cluster fails at once with
//!   [`RequestError::Fenced`] without being sent, and no request is retried any more.
//!
//! The answer of every non-stream attempt is read completely inside the attempt, so a
//! connection cut in the middle of a LIST is a failed attempt (and retried) rather than an
//! error after the layer has let go, and the timeout counts silence, not size: a LIST of a big
//! namespace that keeps streaming is never cut off.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use kube::client::Body;
use tokio_util::sync::CancellationToken;
use tower::buffer::Buffer;
use tower::{BoxError, Layer, Service, ServiceExt};

/// Attempts of one request, the first included: client-go's budget (`maxRetries` 10).
pub const TRIES: u32 = 10;
/// The first backoff delay; it doubles with each retry.
pub const BASE_DELAY: Duration = Duration::from_millis(100);
/// The longest backoff delay: 100 ms doubled five times is 3.2 s, so from the sixth retry on
/// the delay stays here and the whole budget waits 7.5–15 s without `Retry-After`.
pub const MAX_DELAY: Duration = Duration::from_secs(3);
/// The longest `Retry-After` honoured: the API server asks for 1 s under flow control; a
/// proxy asking for minutes would otherwise stall a pass on one request.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);
/// Silence that fails an attempt: no response headers, or no part of the body, for this long.
/// 30 s is the longest an admission webhook may take (`timeoutSeconds` is capped at 30), so a
/// write slowed by a webhook is not cut off and sent again; the API server answers anything
/// else well within it, and gives up on a request itself after 60 s. Only silence counts, so
/// a LIST of a big namespace that keeps streaming is never cut off. A hung connection costs
/// one attempt, not the kube client's 295 s write timeout.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests queued for the wrapped service, as the kube client's own buffer.
const BUFFER: usize = 1024;

/// How requests are retried; [`RetryOptions::default`] is what meshops uses, tests shorten
/// the delays and the timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryOptions {
    /// Attempts of one request, the first included.
    pub tries: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    pub max_retry_after: Duration,
    /// Silence that fails an attempt (see [`ATTEMPT_TIMEOUT`]).
    pub attempt_timeout: Duration,
}

impl Default for RetryOptions {
    fn default() -> RetryOptions {
        RetryOptions {
            tries: TRIES,
            base_delay: BASE_DELAY,
            max_delay: MAX_DELAY,
            max_retry_after: MAX_RETRY_AFTER,
            attempt_timeout: ATTEMPT_TIMEOUT,
        }
    }
}

/// Errors the layer itself produces; they reach [`super::Cluster`] inside
/// `kube::Error::Service`.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The fence is closed: this replica writes nothing more.
    #[error("not sent: the write fence is closed (shutting down or the leader Lease was lost)")]
    Fenced,
    /// The server said nothing for the attempt timeout.
    #[error("no answer within {}", humantime::format_duration(*.0))]
    NoAnswer(Duration),
}

/// What a second copy of a request can do, which decides what may be retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replay {
    /// Sending it twice leaves the cluster as sending it once.
    Idempotent,
    /// It may create something twice: retried only when it was provably not processed.
    Create,
    /// A watch or another stream: passed through, never retried.
    Stream,
}

impl Replay {
    pub fn of(method: &Method, uri: &Uri, headers: &HeaderMap) -> Replay {
        let query = uri.query().unwrap_or_default();
        let streams = query
            .split('&')
            .any(|pair| matches!(pair, "watch=true" | "watch=1" | "follow=true"));
        if streams {
            return Replay::Stream;
        }
        let json_patch = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json-patch+json"));
        match *method {
            Method::POST if uri.path().ends_with("accessreviews") => Replay::Idempotent,
            Method::POST => Replay::Create,
            Method::PATCH if json_patch => Replay::Create,
            _ => Replay::Idempotent,
        }
    }
}

/// How one attempt failed, as far as retrying is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// An HTTP error answer, with its `Retry-After` in seconds if it had one.
    Status {
        code: u16,
        retry_after: Option<Duration>,
    },
    /// The connection was refused: nothing was sent.
    Refused,
    /// The connection was reset, broken or closed before the answer was complete.
    Dropped,
    /// No answer within the attempt timeout (or the connect timeout).
    TimedOut,
    /// Anything else (TLS, a bad URL, an error of this side): another attempt would fail too.
    Permanent,
}

/// Whether an attempt that failed so may be sent again (before budget and fence).
pub fn retryable(replay: Replay, failure: Failure) -> bool {
    match (replay, failure) {
        (Replay::Stream, _) | (_, Failure::Permanent) => false,
        (_, Failure::Refused) | (_, Failure::Status { code: 429, .. }) => true,
        (Replay::Create, _) => false,
        (Replay::Idempotent, Failure::Status { code, .. }) => {
            matches!(code, 500 | 502 | 503 | 504)
        }
        (Replay::Idempotent, Failure::Dropped | Failure::TimedOut) => true,
    }
}

/// The wait before retry number `retry` (1 for the first retry): the server's `Retry-After`
/// up to the cap, otherwise `base × 2^(retry-1)` up to `max_delay` with equal jitter (half
/// fixed, half random by `jitter` in [0, 1)), so that requests failed together by one outage
/// do not come back together, yet none comes back at once.
pub fn delay(
    options: &RetryOptions,
    retry: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    if let Some(asked) = retry_after {
        return asked.min(options.max_retry_after);
    }
    let factor = 2u32.saturating_pow(retry.saturating_sub(1));
    let backoff = options
        .base_delay
        .saturating_mul(factor)
        .min(options.max_delay);
    let half = backoff / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

/// `Retry-After` in its seconds form; the HTTP-date form is ignored (backoff applies): the
/// API server and the proxies in front of it send seconds.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    text.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The failure an error of the client stack stands for, from its chain of causes.
pub fn failure_of(error: &(dyn std::error::Error + 'static)) -> Failure {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(ours) = error.downcast_ref::<RequestError>() {
            return match ours {
                RequestError::NoAnswer(_) => Failure::TimedOut,
                RequestError::Fenced => Failure::Permanent,
            };
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind;
            match io.kind() {
                ErrorKind::ConnectionRefused => return Failure::Refused,
                ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
                | ErrorKind::UnexpectedEof
                | ErrorKind::NotConnected => return Failure::Dropped,
                ErrorKind::TimedOut => return Failure::TimedOut,
                _ => {}
            }
            // An io::Error's `source` skips the error it wraps; look at that one too.
            if let Some(inner) = io.get_ref() {
                let found = failure_of(inner);
                if found != Failure::Permanent {
                    return found;
                }
            }
        }
        if let Some(hyper) = error.downcast_ref::<hyper::Error>() {
            if hyper.is_incomplete_message() || hyper.is_canceled() || hyper.is_closed() {
                return Failure::Dropped;
            }
            if hyper.is_timeout() {
                return Failure::TimedOut;
            }
        }
        current = error.source();
    }
    Failure::Permanent
}

/// Whether a request can change the cluster, and so is refused once the fence is closed:
/// anything but GET and HEAD, except asking RBAC (an access review writes nothing) and the
/// agent's own bookkeeping, the leader Lease (coordination.k8s.io: releasing it on shutdown
/// lets another replica take over at once) and Events.
pub fn changes_cluster(method: &Method, path: &str) -> bool {
    let reads = matches!(*method, Method::GET | Method::HEAD);
    let review = *method == Method::POST && path.ends_with("accessreviews");
    let bookkeeping =
        path.starts_with("/apis/coordination.k8s.io/") || path.starts_with("/apis/events.k8s.io/");
    !(reads || review || bookkeeping)
}

/// The write fence: a cancellation token shared by every clone of the client. None installed
/// (the CLI) refuses nothing.
#[derive(Clone, Debug, Default)]
pub struct Fence(Arc<RwLock<Option<CancellationToken>>>);

impl Fence {
    /// Installs `token`, replacing the previous one.
    pub fn install(&self, token: CancellationToken) {
        // A poisoned lock only means a panic elsewhere while installing; the value is whole.
        let mut slot = self.0.write().unwrap_or_else(|e| e.into_inner());
        *slot = Some(token);
    }

    fn token(&self) -> Option<CancellationToken> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Closed: the installed token is cancelled.
    pub fn closed(&self) -> bool {
        self.token().is_some_and(|t| t.is_cancelled())
    }

    /// Sleeps for `delay`; false when the fence closed in the meantime (the sleep is cut).
    async fn sleep(&self, delay: Duration) -> bool {
        match self.token() {
            Some(token) => tokio::select! {
                _ = tokio::time::sleep(delay) => !token.is_cancelled(),
                _ = token.cancelled() => false,
            },
            None => {
                tokio::time::sleep(delay).await;
                true
            }
        }
    }
}

/// The body of an answer that went through the layer: read completely, or a stream's.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// Adds [`RetryService`] to a client's stack.
#[derive(Clone, Debug)]
pub struct RetryLayer {
    options: RetryOptions,
    fence: Fence,
    retries: Arc<AtomicU64>,
}

impl RetryLayer {
    /// `retries` counts the attempts sent again.
    pub fn new(options: RetryOptions, fence: Fence, retries: Arc<AtomicU64>) -> RetryLayer {
        RetryLayer {
            options,
            fence,
            retries,
        }
    }
}

impl<S, B> Layer<S> for RetryLayer
where
    S: Service<Request<Body>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + Sync,
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Service = RetryService<S::Future>;

    /// Must run on a Tokio runtime: the wrapped service is put behind a buffer (its task) so
    /// that one call can send several attempts.
    fn layer(&self, inner: S) -> Self::Service {
        RetryService {
            inner: Buffer::new(inner, BUFFER),
            options: self.options,
            fence: self.fence.clone(),
            retries: self.retries.clone(),
        }
    }
}

/// The service of [`RetryLayer`]; `F` is the wrapped service's future.
pub struct RetryService<F> {
    inner: Buffer<Request<Body>, F>,
    options: RetryOptions,
    fence: Fence,
    retries: Arc<AtomicU64>,
}

impl<F: Send + 'static> Clone for RetryService<F> {
    fn clone(&self) -> Self {
        RetryService {
            inner: self.inner.clone(),
            options: self.options,
            fence: self.fence.clone(),
            retries: self.retries.clone(),
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<F, B, E> Service<Request<Body>> for RetryService<F>
where
    F: Future<Output = Result<Response<B>, E>> + Send + 'static,
    E: Into<BoxError> + Send + Sync,
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<ResponseBody>, BoxError>>;

    /// Always ready: each attempt waits for the wrapped service itself.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.send(request).await })
    }
}

impl<F, B, E> RetryService<F>
where
    F: Future<Output = Result<Response<B>, E>> + Send + 'static,
    E: Into<BoxError> + Send + Sync,
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    async fn send(mut self, request: Request<Body>) -> Result<Response<ResponseBody>, BoxError> {
        let guarded = changes_cluster(request.method(), request.uri().path());
        if guarded && self.fence.closed() {
            return Err(RequestError::Fenced.into());
        }
        let replay = Replay::of(request.method(), request.uri(), request.headers());
        if replay == Replay::Stream {
            let response = self.inner.ready().await?.call(request).await?;
            return Ok(response.map(|body| body.map_err(Into::into).boxed_unsync()));
        }
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let mut request = request;
        let mut attempt = 1;
        loop {
            // A request whose body cannot be copied gets one attempt (the client's own
            // requests all have bodies that can).
            let spare = copy(&request);
            let result = self.attempt(request).await;
            let failure = match &result {
                Ok(response) if response.status().is_success() => return result,
                Ok(response) if response.status().as_u16() < 400 => return result,
                Ok(response) => Failure::Status {
                    code: response.status().as_u16(),
                    retry_after: retry_after(response.headers()),
                },
                Err(error) => failure_of(error.as_ref()),
            };
            let Some(next) = spare.filter(|_| retryable(replay, failure)) else {
                return result;
            };
            if attempt >= self.options.tries {
                tracing::debug!(%method, path, attempt, ?failure, "retry budget spent");
                return result;
            }
            if self.fence.closed() {
                return if guarded {
                    Err(RequestError::Fenced.into())
                } else {
                    result
                };
            }
            let retry_after = match failure {
                Failure::Status { retry_after, .. } => retry_after,
                _ => None,
            };
            let wait = delay(&self.options, attempt, retry_after, fastrand::f64());
            tracing::debug!(%method, path, attempt, ?failure, delay = ?wait, "retrying");
            if !self.fence.sleep(wait).await {
                return if guarded {
                    Err(RequestError::Fenced.into())
                } else {
                    result
                };
            }
            self.retries.fetch_add(1, Ordering::Relaxed);
            attempt += 1;
            request = next;
        }
    }

    /// One attempt: the answer read completely, failed by silence of the attempt timeout.
    async fn attempt(
        &mut self,
        request: Request<Body>,
    ) -> Result<Response<ResponseBody>, BoxError> {
        let timeout = self.options.attempt_timeout;
        let no_answer = || -> BoxError { RequestError::NoAnswer(timeout).into() };
        let inner = &mut self.inner;
        let response =
            tokio::time::timeout(
                timeout,
                async move { inner.ready().await?.call(request).await },
            )
            .await
            .map_err(|_| no_answer())??;
        let (parts, mut body) = response.into_parts();
        let mut chunks: Vec<Bytes> = Vec::new();
        loop {
            let frame = tokio::time::timeout(timeout, body.frame())
                .await
                .map_err(|_| no_answer())?;
            match frame {
                None => break,
                Some(Err(error)) => return Err(error.into()),
                Some(Ok(frame)) => {
                    // Trailers carry nothing the client reads.
                    if let Ok(data) = frame.into_data() {
                        chunks.push(data);
                    }
                }
            }
        }
        let bytes = match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.swap_remove(0),
            _ => {
                let mut all = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
                for chunk in chunks {
                    all.extend_from_slice(&chunk);
                }
                all.freeze()
            }
        };
        let body = Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync();
        Ok(Response::from_parts(parts, body))
    }
}

/// A copy of a request to send again, or `None` when its body cannot be copied.
fn copy(request: &Request<Body>) -> Option<Request<Body>> {
    let body = request.body().try_clone()?;
    let mut copy = Request::new(body);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    *copy.extensions_mut() = request.extensions().clone();
    Some(copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(text: &str) -> Uri {
        text.parse().unwrap()
    }

    fn replay(method: Method, path: &str) -> Replay {
        Replay::of(&method, &uri(path), &HeaderMap::new())
    }

    fn status(code: u16) -> Failure {
        Failure::Status {
            code,
            retry_after: None,
        }
    }

    #[test]
    fn reads_writes_and_reviews_are_idempotent_creates_and_streams_are_not() {
        let configmaps = "/api/v1/namespaces/a/configmaps";
        assert_eq!(replay(Method::GET, configmaps), Replay::Idempotent);
        assert_eq!(
            replay(
                Method::PATCH,
                &format!("{configmaps}/x?fieldManager=meshops&force=true")
            ),
            Replay::Idempotent
        );
        assert_eq!(
            replay(Method::DELETE, &format!("{configmaps}/x")),
            Replay::Idempotent
        );
        assert_eq!(
            replay(
                Method::POST,
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
            ),
            Replay::Idempotent
        );
        assert_eq!(replay(Method::POST, configmaps), Replay::Create);
        assert_eq!(
            replay(
                Method::GET,
                &format!("{configmaps}?watch=true&resourceVersion=1")
            ),
            Replay::Stream
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            "application/json-patch+json".parse().unwrap(),
        );
        assert_eq!(
            Replay::of(&Method::PATCH, &uri(&format!("{configmaps}/x")), &headers),
            Replay::Create
        );
    }

    #[test]
    fn idempotent_requests_retry_transport_failures_429_and_5xx_only() {
        let i = Replay::Idempotent;
        for code in [429, 500, 502, 503, 504] {
            assert!(retryable(i, status(code)), "{code}");
        }
        for code in [400, 401, 403, 404, 409, 422, 501] {
            assert!(!retryable(i, status(code)), "{code}");
        }
        for failure in [Failure::Refused, Failure::Dropped, Failure::TimedOut] {
            assert!(retryable(i, failure), "{failure:?}");
        }
        assert!(!retryable(i, Failure::Permanent));
    }

    #[test]
    fn a_create_is_retried_only_when_it_was_provably_not_processed() {
        let c = Replay::Create;
        assert!(retryable(c, Failure::Refused));
        assert!(retryable(c, status(429)));
        for failure in [
            status(500),
            status(503),
            Failure::Dropped,
            Failure::TimedOut,
            Failure::Permanent,
        ] {
            assert!(!retryable(c, failure), "{failure:?}");
        }
    }

    #[test]
    fn streams_are_never_retried() {
        for failure in [Failure::Refused, status(429), Failure::Dropped] {
            assert!(!retryable(Replay::Stream, failure));
        }
    }

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_cap_with_equal_jitter() {
        let options = RetryOptions::default();
        let ms = Duration::from_millis;
        // Without jitter: half the backoff; with the most jitter: all of it.
        assert_eq!(delay(&options, 1, None, 0.0), ms(50));
        assert_eq!(delay(&options, 1, None, 1.0), ms(100));
        assert_eq!(delay(&options, 2, None, 1.0), ms(200));
        assert_eq!(delay(&options, 5, None, 1.0), ms(1600));
        assert_eq!(delay(&options, 6, None, 1.0), MAX_DELAY);
        assert_eq!(delay(&options, 9, None, 0.0), MAX_DELAY / 2);
        assert_eq!(delay(&options, 40, None, 0.5), MAX_DELAY * 3 / 4);
        let spread = delay(&options, 3, None, 0.5);
        assert!(spread > ms(200) && spread < ms(400), "{spread:?}");
    }

    #[test]
    fn retry_after_is_honoured_up_to_its_cap() {
        let options = RetryOptions::default();
        let s = Duration::from_secs;
        assert_eq!(delay(&options, 1, Some(s(2)), 0.9), s(2));
        assert_eq!(delay(&options, 7, Some(s(0)), 0.9), s(0));
        assert_eq!(delay(&options, 1, Some(s(3600)), 0.0), MAX_RETRY_AFTER);
        let mut headers = HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, " 3 ".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(s(3)));
        headers.insert(
            http::header::RETRY_AFTER,
            "Wed, 21 Oct 2026 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn the_whole_budget_waits_at_most_fifteen_seconds_without_retry_after() {
        let options = RetryOptions::default();
        let worst: Duration = (1..options.tries)
            .map(|retry| delay(&options, retry, None, 1.0))
            .sum();
        assert_eq!(worst, Duration::from_millis(15_100));
        assert_eq!(options.tries, 10);
    }

    #[test]
    fn transport_errors_are_classified_from_their_causes() {
        use std::io::{Error, ErrorKind};
        let wrapped = |kind: ErrorKind| -> BoxError {
            // As hyper-util wraps a connect error: the io::Error is a cause, not the error.
            Box::new(Error::other(Error::new(kind, "inner")))
        };
        assert_eq!(
            failure_of(wrapped(ErrorKind::ConnectionRefused).as_ref()),
            Failure::Refused
        );
        for kind in [
            ErrorKind::ConnectionReset,
            ErrorKind::BrokenPipe,
            ErrorKind::UnexpectedEof,
        ] {
            assert_eq!(failure_of(wrapped(kind).as_ref()), Failure::Dropped);
        }
        assert_eq!(
            failure_of(wrapped(ErrorKind::TimedOut).as_ref()),
            Failure::TimedOut
        );
        let no_answer: BoxError = RequestError::NoAnswer(Duration::from_secs(1)).into();
        assert_eq!(failure_of(no_answer.as_ref()), Failure::TimedOut);
        let fenced: BoxError = RequestError::Fenced.into();
        assert_eq!(failure_of(fenced.as_ref()), Failure::Permanent);
        let tls: BoxError = Box::new(Error::new(ErrorKind::InvalidData, "bad certificate"));
        assert_eq!(failure_of(tls.as_ref()), Failure::Permanent);
    }

    #[test]
    fn the_fence_guards_writes_but_not_reads_reviews_the_lease_or_events() {
        let configmap = "/api/v1/namespaces/a/configmaps/x";
        for method in [Method::PATCH, Method::POST, Method::PUT, Method::DELETE] {
            assert!(changes_cluster(&method, configmap), "{method}");
        }
        assert!(!changes_cluster(&Method::GET, configmap));
        assert!(!changes_cluster(&Method::HEAD, configmap));
        assert!(!changes_cluster(
            &Method::POST,
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
        ));
        assert!(!changes_cluster(
            &Method::PUT,
            "/apis/coordination.k8s.io/v1/namespaces/a/leases/meshops-agent"
        ));
        assert!(!changes_cluster(
            &Method::POST,
            "/apis/events.k8s.io/v1/namespaces/a/events"
        ));
    }

    #[tokio::test]
    async fn the_fence_closes_when_its_latest_token_is_cancelled_and_cuts_a_sleep() {
        let fence = Fence::default();
        assert!(!fence.closed(), "no token: nothing refused");
        let first = CancellationToken::new();
        fence.install(first.clone());
        let second = CancellationToken::new();
        fence.install(second.clone());
        first.cancel();
        assert!(!fence.closed(), "the replaced token no longer counts");
        assert!(fence.sleep(Duration::from_millis(1)).await);
        let clone = fence.clone();
        let started = std::time::Instant::now();
        let sleeping = tokio::spawn(async move { clone.sleep(Duration::from_secs(60)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        second.cancel();
        assert!(!sleeping.await.unwrap(), "the sleep ends with the fence");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(fence.closed());
    }
}
