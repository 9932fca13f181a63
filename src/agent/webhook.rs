//! GitHub webhooks: the signature, the events, the policy on pull requests, deliveries seen
//! before, and the limit on failed signatures.
//!
//! A webhook only says "look now"; the agent still asks the remote for the commit. So a
//! forged or replayed push could at worst cause an extra fetch — but the signature is still
//! mandatory, and checked in constant time, so that nobody can make the agent do even that.
//! Everything an unauthenticated caller can make the agent keep — metric series, remembered
//! deliveries, per-client counters — has a fixed bound.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::model::agent::{GitRef, SourceConfig};

/// Largest body accepted (GitHub caps payloads at 25 MB, but a push of manifests is small).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("no X-Hub-Signature-256 header")]
    MissingSignature,
    #[error("X-Hub-Signature-256 is not sha256=<hex>")]
    MalformedSignature,
    #[error("the signature does not match the body (wrong secret, or a changed body)")]
    WrongSignature,
    #[error("the push event is not JSON GitHub sends: {0}")]
    BadPayload(String),
}

impl WebhookError {
    /// The metric's `result`.
    pub fn category(&self) -> Delivery {
        match self {
            WebhookError::MissingSignature
            | WebhookError::MalformedSignature
            | WebhookError::WrongSignature => Delivery::Unauthorized,
            WebhookError::BadPayload(_) => Delivery::BadPayload,
        }
    }
}

/// The `event` label of `meshops_webhook_deliveries_total`: the events the agent acts on,
/// and `other` for everything else — never the raw header, which anyone can set, so the
/// number of series stays fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    Push,
    PullRequest,
    Ping,
    Other,
}

impl Event {
    /// The event a verified delivery's `X-GitHub-Event` names.
    pub fn from_header(header: Option<&str>) -> Event {
        match header {
            Some("push") => Event::Push,
            Some("pull_request") => Event::PullRequest,
            Some("ping") => Event::Ping,
            _ => Event::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Event::Push => "push",
            Event::PullRequest => "pull_request",
            Event::Ping => "ping",
            Event::Other => "other",
        }
    }
}

/// What became of a delivery: the `result` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Delivery {
    /// A ping answered.
    Ok,
    /// At least one source triggered or a plan queued.
    Accepted,
    /// Verified, but no source follows what it names (or an event the agent does not use).
    Ignored,
    /// A pull request no source may plan (a fork by an outside author).
    Refused,
    /// An `X-GitHub-Delivery` seen before.
    Duplicate,
    /// The signature is missing, malformed or wrong.
    Unauthorized,
    /// A failed signature past the per-client or global limit: 429.
    RateLimited,
    /// Verified, but not the JSON GitHub sends.
    BadPayload,
    /// No webhook secret is configured: 404.
    Disabled,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Ok => "ok",
            Delivery::Accepted => "accepted",
            Delivery::Ignored => "ignored",
            Delivery::Refused => "refused",
            Delivery::Duplicate => "duplicate",
            Delivery::Unauthorized => "unauthorized",
            Delivery::RateLimited => "rate-limited",
            Delivery::BadPayload => "bad-payload",
            Delivery::Disabled => "disabled",
        }
    }
}

/// Checks `X-Hub-Signature-256: sha256=<hex of HMAC-SHA256(secret, body)>`. The comparison
/// is the `hmac` crate's constant-time one.
pub fn verify(secret: &[u8], body: &[u8], header: Option<&str>) -> Result<(), WebhookError> {
    let header = header.ok_or(WebhookError::MissingSignature)?;
    let hex_digest = header
        .strip_prefix("sha256=")
        .ok_or(WebhookError::MalformedSignature)?;
    let expected = hex::decode(hex_digest).map_err(|_| WebhookError::MalformedSignature)?;
    // HMAC takes keys of any length: this cannot fail.
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret).map_err(|_| WebhookError::WrongSignature)?;
    mac.update(body);
    mac.verify_slice(&expected)
        .map_err(|_| WebhookError::WrongSignature)
}

/// The signature header for `body`, as GitHub computes it (for tests and for docs' curl).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The parts of a push event the agent reads.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Push {
    #[serde(rename = "ref")]
    pub reference: String,
    #[serde(default)]
    pub after: String,
    pub repository: Repository,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Repository {
    pub full_name: String,
    #[serde(default)]
    pub clone_url: Option<String>,
    #[serde(default)]
    pub ssh_url: Option<String>,
    #[serde(default)]
    pub html_url: Option<String>,
}

pub fn parse_push(body: &[u8]) -> Result<Push, WebhookError> {
    serde_json::from_slice(body).map_err(|e| WebhookError::BadPayload(e.to_string()))
}

/// The parts of a pull_request event the agent reads.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct PullRequestEvent {
    pub action: String,
    pub number: u64,
    pub pull_request: PullRequest,
    pub repository: Repository,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct PullRequest {
    pub head: Head,
    pub base: Branch,
    /// Missing in old payloads: then the author counts as no one in particular.
    #[serde(default)]
    pub author_association: AuthorAssociation,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Head {
    pub sha: String,
    /// The repository the head branch lives in; `null` when that fork was deleted.
    #[serde(default)]
    pub repo: Option<HeadRepository>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct HeadRepository {
    pub full_name: String,
}

/// GitHub's `author_association`: how the pull request's author relates to the repository.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthorAssociation {
    Owner,
    Member,
    Collaborator,
    Contributor,
    FirstTimeContributor,
    FirstTimer,
    Mannequin,
    #[default]
    #[serde(other)]
    None,
}

impl AuthorAssociation {
    /// Owner, member of the organisation or collaborator: people who could push a branch to
    /// the repository anyway.
    pub fn trusted(self) -> bool {
        matches!(
            self,
            AuthorAssociation::Owner | AuthorAssociation::Member | AuthorAssociation::Collaborator
        )
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Branch {
    #[serde(rename = "ref")]
    pub reference: String,
}

pub fn parse_pull_request(body: &[u8]) -> Result<PullRequestEvent, WebhookError> {
    serde_json::from_slice(body).map_err(|e| WebhookError::BadPayload(e.to_string()))
}

/// What a source does with a pull-request event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Planning {
    /// Not for this source: another branch or repository, or closed, labelled …
    NotOurs,
    /// Planned: same repository, a trusted author, or the source plans forks.
    Plan,
    /// A fork by an author without write access, and the source does not plan forks.
    Refuse(AuthorAssociation),
}

/// Whether `event` asks for a plan by `source`: opened, pushed to or reopened, against the
/// branch the source follows, in its repository — and, since the plan dry-runs with the
/// source's identity, only when its head is a branch of the same repository, its author is
/// trusted, or the source opted in to forks. Closed pull requests are not planned.
pub fn plans(event: &PullRequestEvent, source: &SourceConfig) -> Planning {
    let GitRef::Branch(branch) = source.git_ref() else {
        return Planning::NotOurs;
    };
    let ours = matches!(event.action.as_str(), "opened" | "synchronize" | "reopened")
        && event.pull_request.base.reference == branch
        && same_repository(&event.repository, source);
    if !ours {
        return Planning::NotOurs;
    }
    let pull = &event.pull_request;
    let from_here = pull.head.repo.as_ref().is_some_and(|r| {
        r.full_name
            .eq_ignore_ascii_case(&event.repository.full_name)
    });
    if from_here || pull.author_association.trusted() || source.plans_forks() {
        Planning::Plan
    } else {
        Planning::Refuse(pull.author_association)
    }
}

/// Whether `repository` (from an event) is the one `source` follows: its `github.repo`, or
/// its URL in any spelling.
fn same_repository(repository: &Repository, source: &SourceConfig) -> bool {
    let by_name = source
        .github
        .as_ref()
        .is_some_and(|g| g.repo.eq_ignore_ascii_case(&repository.full_name));
    let ours = repository_key(&source.url);
    let by_url = [
        &repository.clone_url,
        &repository.ssh_url,
        &repository.html_url,
    ]
    .into_iter()
    .flatten()
    .any(|url| repository_key(url) == ours);
    by_name || by_url
}

/// `host/owner/name` of a git URL in any of its spellings (https, ssh://, scp-like `git@host:`,
/// with or without `.git`, any case), so a push names a source however its URL was written.
pub fn repository_key(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    let url = url.strip_suffix(".git").unwrap_or(url);
    let rest = match url.split_once("://") {
        Some((_, rest)) => rest.to_owned(),
        // scp-like: git@github.com:acme/functions
        None => url.replacen(':', "/", 1),
    };
    let rest = rest.rsplit_once('@').map_or(rest.as_str(), |(_, r)| r);
    // A port (ssh://git@host:22/x) is not part of the repository's name.
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = host.split(':').next().unwrap_or(host);
    format!("{host}/{path}").to_ascii_lowercase()
}

/// Whether `push` moves what `source` tracks: same repository (its `github.repo`, or its
/// URL) and its branch or tag. A pinned commit never moves.
pub fn moves(push: &Push, source: &SourceConfig) -> bool {
    let tracked = match source.git_ref() {
        GitRef::Branch(branch) => format!("refs/heads/{branch}"),
        GitRef::Tag(tag) => format!("refs/tags/{}", tag.tag),
        GitRef::Commit(_) => return false,
    };
    push.reference == tracked && same_repository(&push.repository, source)
}

/// The last deliveries seen (`X-GitHub-Delivery`), so a redelivery is not acted on twice;
/// only the last [`Deliveries::REMEMBERED`] are kept (GitHub redelivers within minutes, and
/// only verified deliveries are recorded), so the table has a fixed size.
#[derive(Debug, Default)]
pub struct Deliveries {
    order: VecDeque<String>,
    seen: HashSet<String>,
}

impl Deliveries {
    pub const REMEMBERED: usize = 1000;

    /// Records `id`; false if it was seen already.
    pub fn first_time(&mut self, id: &str) -> bool {
        if !self.seen.insert(id.to_owned()) {
            return false;
        }
        self.order.push_back(id.to_owned());
        while self.order.len() > Self::REMEMBERED {
            if let Some(oldest) = self.order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
        true
    }
}

/// The limits on failed signatures. A failure costs the agent only an HMAC, but each is a
/// warning in the log and a client that keeps failing is guessing or misconfigured: past the
/// limit it gets 429 with `Retry-After` (and a debug line) instead. A verified delivery is
/// never limited, so a flood cannot lock GitHub out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailureLimits {
    /// Failed signatures per client address (IPv6: per /64) per minute.
    pub per_client: u32,
    /// Failed signatures from all clients together per minute.
    pub global: u32,
    /// Clients tracked at once; past it (after forgetting those back at a full allowance)
    /// new clients are held by the global limit only.
    pub clients: usize,
}

impl Default for FailureLimits {
    fn default() -> Self {
        FailureLimits {
            per_client: 10,
            global: 100,
            clients: 10_000,
        }
    }
}

/// Which limit refused a failed signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Client,
    Global,
}

/// Whether a failed signature is answered 401 or 429.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Within the limits: 401.
    Allowed,
    /// Over a limit: 429, try again after `retry_after`.
    Limited { scope: Scope, retry_after: Duration },
}

/// GCRA (a token bucket kept as one instant per key): `limit` failures per minute, all of
/// them at once as a burst, one more every `60 s / limit`. The instant is when the bucket
/// is full again, so a key whose instant has passed can be forgotten.
#[derive(Debug)]
pub struct FailureLimiter {
    limits: FailureLimits,
    global: Option<Instant>,
    clients: HashMap<IpAddr, Instant>,
}

const WINDOW: Duration = Duration::from_secs(60);

impl FailureLimiter {
    pub fn new(limits: FailureLimits) -> FailureLimiter {
        FailureLimiter {
            limits,
            global: None,
            clients: HashMap::new(),
        }
    }

    /// Counts one failed signature from `client` at `now`. A refused failure counts against
    /// no limit, so a client held back does not use up everybody's allowance.
    pub fn failed(&mut self, client: IpAddr, now: Instant) -> Admission {
        let key = client_key(client);
        let tracked = self.clients.contains_key(&key) || self.make_room(now);
        let client_next = if tracked {
            let full = self.clients.get(&key).copied();
            match gcra(full, self.limits.per_client, now) {
                Ok(next) => Some(next),
                Err(retry_after) => {
                    return Admission::Limited {
                        scope: Scope::Client,
                        retry_after,
                    }
                }
            }
        } else {
            None
        };
        match gcra(self.global, self.limits.global, now) {
            Ok(next) => self.global = Some(next),
            Err(retry_after) => {
                return Admission::Limited {
                    scope: Scope::Global,
                    retry_after,
                }
            }
        }
        if let Some(next) = client_next {
            self.clients.insert(key, next);
        }
        Admission::Allowed
    }

    /// Whether a new client can be tracked: forgets clients back at a full allowance when
    /// the table is full.
    fn make_room(&mut self, now: Instant) -> bool {
        if self.clients.len() >= self.limits.clients {
            self.clients.retain(|_, full| *full > now);
        }
        self.clients.len() < self.limits.clients
    }

    pub fn clients_tracked(&self) -> usize {
        self.clients.len()
    }
}

/// One GCRA step: the new "full again" instant, or how long until one more is allowed.
fn gcra(full: Option<Instant>, limit: u32, now: Instant) -> Result<Instant, Duration> {
    let limit = limit.max(1);
    let each = WINDOW / limit;
    let full = full.map_or(now, |f| f.max(now));
    // Allowed while the debt stays within the burst: `full - now <= WINDOW - each`.
    let debt = full - now;
    if debt + each > WINDOW {
        Err(debt + each - WINDOW)
    } else {
        Ok(full + each)
    }
}

/// The key a client is limited by: its IPv4 address, or its IPv6 /64 (one host usually
/// holds a whole /64, and would otherwise have 2^64 allowances).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// `Retry-After` in whole seconds, at least 1.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    let whole = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    whole.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"It's a Secret to Everybody";
    const BODY: &[u8] = b"Hello, World!";

    #[test]
    fn a_valid_signature_passes() {
        // GitHub's documented example: secret, payload and signature.
        let expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(sign(SECRET, BODY), expected);
        assert_eq!(verify(SECRET, BODY, Some(expected)), Ok(()));
    }

    #[test]
    fn every_bad_signature_is_refused() {
        let good = sign(SECRET, BODY);
        assert_eq!(
            verify(SECRET, BODY, None),
            Err(WebhookError::MissingSignature)
        );
        assert_eq!(
            verify(b"another secret", BODY, Some(&good)),
            Err(WebhookError::WrongSignature)
        );
        assert_eq!(
            verify(SECRET, b"Hello, World?", Some(&good)),
            Err(WebhookError::WrongSignature)
        );
        let sha1 = good.replace("sha256=", "sha1=");
        assert_eq!(
            verify(SECRET, BODY, Some(&sha1)),
            Err(WebhookError::MalformedSignature)
        );
        assert_eq!(
            verify(SECRET, BODY, Some("sha256=zz")),
            Err(WebhookError::MalformedSignature)
        );
        let truncated = &good[..good.len() - 2];
        assert_eq!(
            verify(SECRET, BODY, Some(truncated)),
            Err(WebhookError::WrongSignature)
        );
        assert_eq!(
            verify(SECRET, BODY, Some("sha256=")),
            Err(WebhookError::WrongSignature)
        );
    }

    #[test]
    fn a_replayed_delivery_is_seen_once() {
        let mut deliveries = Deliveries::default();
        assert!(deliveries.first_time("a"));
        assert!(!deliveries.first_time("a"));
        assert!(deliveries.first_time("b"));
        for i in 0..Deliveries::REMEMBERED {
            deliveries.first_time(&i.to_string());
        }
        assert!(deliveries.first_time("a"), "the oldest ids are forgotten");
        assert!(deliveries.seen.len() <= Deliveries::REMEMBERED);
    }

    #[test]
    fn the_delivery_table_keeps_the_last_thousand() {
        let mut deliveries = Deliveries::default();
        for i in 0..10 * Deliveries::REMEMBERED {
            assert!(deliveries.first_time(&format!("delivery-{i}")));
            assert!(deliveries.seen.len() <= Deliveries::REMEMBERED);
            assert_eq!(deliveries.order.len(), deliveries.seen.len());
        }
        let last = 10 * Deliveries::REMEMBERED - 1;
        assert!(!deliveries.first_time(&format!("delivery-{last}")));
        let oldest_kept = last + 1 - Deliveries::REMEMBERED;
        assert!(!deliveries.first_time(&format!("delivery-{oldest_kept}")));
        assert!(deliveries.first_time(&format!("delivery-{}", oldest_kept - 1)));
    }

    #[test]
    fn a_push_that_is_not_json_is_a_bad_payload() {
        assert!(matches!(
            parse_push(b"not json"),
            Err(WebhookError::BadPayload(_))
        ));
        assert!(matches!(
            parse_push(br#"{"zen": "ping"}"#),
            Err(WebhookError::BadPayload(_))
        ));
    }

    fn source(url: &str, reference: Option<GitRef>, github: Option<&str>) -> SourceConfig {
        serde_json::from_value(serde_json::json!({
            "name": "prod", "url": url, "ref": reference,
            "github": github.map(|r| serde_json::json!({"repo": r})),
        }))
        .unwrap()
    }

    fn push(reference: &str, full_name: &str, clone_url: &str) -> Push {
        parse_push(
            serde_json::json!({"ref": reference, "after": "abc", "repository": {
                "full_name": full_name, "clone_url": clone_url,
                "ssh_url": format!("git@github.com:{full_name}.git"),
            }})
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn pull_requests_against_the_tracked_branch_are_planned_while_open() {
        let event = |action: &str, base: &str| {
            parse_pull_request(
                serde_json::json!({"action": action, "number": 7,
                    "pull_request": {"head": {"sha": "abc",
                                              "repo": {"full_name": "acme/functions"}},
                                     "base": {"ref": base}},
                    "repository": {"full_name": "acme/functions",
                                   "clone_url": "https://github.com/acme/functions.git"}})
                .to_string()
                .as_bytes(),
            )
            .unwrap()
        };
        let main = source("https://github.com/acme/functions", None, None);
        for action in ["opened", "synchronize", "reopened"] {
            assert_eq!(
                plans(&event(action, "main"), &main),
                Planning::Plan,
                "{action}"
            );
        }
        assert_eq!(plans(&event("closed", "main"), &main), Planning::NotOurs);
        assert_eq!(plans(&event("labeled", "main"), &main), Planning::NotOurs);
        assert_eq!(plans(&event("opened", "release"), &main), Planning::NotOurs);
        let other = source("https://github.com/acme/other", None, None);
        assert_eq!(plans(&event("opened", "main"), &other), Planning::NotOurs);
        assert!(parse_pull_request(b"{}").is_err());
    }

    fn fork_event(head_repo: Option<&str>, association: Option<&str>) -> PullRequestEvent {
        let mut pull = serde_json::json!({"head": {"sha": "abc"}, "base": {"ref": "main"}});
        if let Some(repo) = head_repo {
            pull["head"]["repo"] = serde_json::json!({"full_name": repo});
        }
        if let Some(association) = association {
            pull["author_association"] = association.into();
        }
        parse_pull_request(
            serde_json::json!({"action": "opened", "number": 7, "pull_request": pull,
                "repository": {"full_name": "acme/functions"}})
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn forks_are_planned_only_for_trusted_authors_unless_the_source_plans_forks() {
        let main = source("file:///mirror", None, Some("acme/functions"));
        // A branch of the same repository: whoever opened it could push there.
        let same = fork_event(Some("Acme/Functions"), Some("CONTRIBUTOR"));
        assert_eq!(plans(&same, &main), Planning::Plan);
        for trusted in ["OWNER", "MEMBER", "COLLABORATOR"] {
            let fork = fork_event(Some("mallory/functions"), Some(trusted));
            assert_eq!(plans(&fork, &main), Planning::Plan, "{trusted}");
        }
        for (outsider, association) in [
            ("CONTRIBUTOR", AuthorAssociation::Contributor),
            (
                "FIRST_TIME_CONTRIBUTOR",
                AuthorAssociation::FirstTimeContributor,
            ),
            ("FIRST_TIMER", AuthorAssociation::FirstTimer),
            ("MANNEQUIN", AuthorAssociation::Mannequin),
            ("NONE", AuthorAssociation::None),
            ("SOMETHING_NEW", AuthorAssociation::None),
        ] {
            let fork = fork_event(Some("mallory/functions"), Some(outsider));
            assert_eq!(
                plans(&fork, &main),
                Planning::Refuse(association),
                "{outsider}"
            );
        }
        // A deleted fork, or a payload without the fields: not known to be ours.
        assert_eq!(
            plans(&fork_event(None, Some("NONE")), &main),
            Planning::Refuse(AuthorAssociation::None)
        );
        assert_eq!(
            plans(&fork_event(None, None), &main),
            Planning::Refuse(AuthorAssociation::None)
        );
        let mut open = main.clone();
        open.pull_requests = Some(crate::model::agent::PullRequestPolicy {
            forks: Some(true),
            max_queued: None,
        });
        let fork = fork_event(Some("mallory/functions"), Some("NONE"));
        assert_eq!(plans(&fork, &open), Planning::Plan);
    }

    #[test]
    fn the_event_label_is_one_of_four() {
        assert_eq!(Event::from_header(Some("push")), Event::Push);
        assert_eq!(Event::from_header(Some("pull_request")), Event::PullRequest);
        assert_eq!(Event::from_header(Some("ping")), Event::Ping);
        for header in [None, Some("issues"), Some("PUSH"), Some("x\"\n}")] {
            assert_eq!(Event::from_header(header), Event::Other);
        }
    }

    #[test]
    fn failed_signatures_are_limited_per_client_then_globally() {
        let limits = FailureLimits {
            per_client: 10,
            global: 30,
            clients: 4,
        };
        let mut limiter = FailureLimiter::new(limits);
        let now = Instant::now();
        let mallory: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..10 {
            assert_eq!(limiter.failed(mallory, now), Admission::Allowed);
        }
        assert_eq!(
            limiter.failed(mallory, now),
            Admission::Limited {
                scope: Scope::Client,
                retry_after: Duration::from_secs(6)
            }
        );
        // Others have their own allowance, until all together reach the global limit.
        for client in ["192.0.2.2", "192.0.2.3"] {
            for _ in 0..10 {
                let client: IpAddr = client.parse().unwrap();
                assert_eq!(limiter.failed(client, now), Admission::Allowed);
            }
        }
        let fresh: IpAddr = "192.0.2.4".parse().unwrap();
        let Admission::Limited { scope, retry_after } = limiter.failed(fresh, now) else {
            panic!("the global limit holds");
        };
        assert_eq!(scope, Scope::Global);
        assert_eq!(retry_after_seconds(retry_after), 2);
        // One more allowed each 6 s per client (each 2 s globally).
        let later = now + Duration::from_secs(6);
        assert_eq!(limiter.failed(mallory, later), Admission::Allowed);
        assert!(matches!(
            limiter.failed(mallory, later),
            Admission::Limited {
                scope: Scope::Client,
                ..
            }
        ));
        // A full minute later everybody starts over, and the table forgets the idle.
        let after = later + Duration::from_secs(61);
        for n in 10..20 {
            let client: IpAddr = format!("192.0.2.{n}").parse().unwrap();
            assert_eq!(limiter.failed(client, after), Admission::Allowed);
            assert!(limiter.clients_tracked() <= limits.clients);
        }
    }

    #[test]
    fn an_ipv6_client_is_limited_by_its_slash_64() {
        let mut limiter = FailureLimiter::new(FailureLimits::default());
        let now = Instant::now();
        for n in 0..10 {
            let ip: IpAddr = format!("2001:db8::{n:x}").parse().unwrap();
            assert_eq!(limiter.failed(ip, now), Admission::Allowed);
        }
        let same_64: IpAddr = "2001:db8::ffff:1".parse().unwrap();
        assert!(matches!(
            limiter.failed(same_64, now),
            Admission::Limited {
                scope: Scope::Client,
                ..
            }
        ));
        let other_64: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        assert_eq!(limiter.failed(other_64, now), Admission::Allowed);
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(client_key(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(600)), 1);
        assert_eq!(retry_after_seconds(Duration::from_secs(6)), 6);
        assert_eq!(retry_after_seconds(Duration::from_millis(6001)), 7);
    }

    #[test]
    fn a_push_moves_the_sources_of_its_repository_and_branch() {
        let p = push(
            "refs/heads/main",
            "Acme/Functions",
            "https://github.com/Acme/Functions.git",
        );
        assert!(moves(
            &p,
            &source("https://github.com/acme/functions", None, None)
        ));
        assert!(moves(
            &p,
            &source("git@github.com:acme/functions.git", None, None)
        ));
        assert!(moves(
            &p,
            &source("ssh://git@github.com:22/acme/functions", None, None)
        ));
        assert!(moves(
            &p,
            &source("file:///mirror", None, Some("acme/functions"))
        ));
        assert!(!moves(
            &p,
            &source("https://github.com/acme/other", None, None)
        ));
        let release = source(
            "https://github.com/acme/functions",
            Some(GitRef::Branch("release".into())),
            None,
        );
        assert!(!moves(&p, &release));
        let tag = push(
            "refs/tags/v1.2",
            "acme/functions",
            "https://github.com/acme/functions.git",
        );
        let tagged = source(
            "https://github.com/acme/functions",
            Some(GitRef::Tag(crate::model::agent::TagRef {
                tag: "v1.2".into(),
            })),
            None,
        );
        assert!(moves(&tag, &tagged));
        let pinned = source(
            "https://github.com/acme/functions",
            Some(GitRef::Commit(crate::model::agent::CommitRef {
                commit: "a".repeat(40),
            })),
            None,
        );
        assert!(!moves(&p, &pinned));
    }
}
