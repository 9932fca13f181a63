//! GitHub webhooks: the signature, the push event, and deliveries seen before.
//!
//! A webhook only says "look now"; the agent still asks the remote for the commit. So a
//! forged or replayed push could at worst cause an extra fetch — but the signature is still
//! mandatory, and checked in constant time, so that nobody can make the agent do even that.

use std::collections::{HashSet, VecDeque};

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
    /// The metric label.
    pub fn category(&self) -> &'static str {
        match self {
            WebhookError::MissingSignature
            | WebhookError::MalformedSignature
            | WebhookError::WrongSignature => "unauthorized",
            WebhookError::BadPayload(_) => "bad-payload",
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
    pub head: Commit,
    pub base: Branch,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Commit {
    pub sha: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Branch {
    #[serde(rename = "ref")]
    pub reference: String,
}

pub fn parse_pull_request(body: &[u8]) -> Result<PullRequestEvent, WebhookError> {
    serde_json::from_slice(body).map_err(|e| WebhookError::BadPayload(e.to_string()))
}

/// Whether `event` asks for a plan by `source`: opened, pushed to or reopened, against the
/// branch the source follows, in its repository. Closed pull requests are not planned.
pub fn plans(event: &PullRequestEvent, source: &SourceConfig) -> bool {
    let GitRef::Branch(branch) = source.git_ref() else {
        return false;
    };
    matches!(event.action.as_str(), "opened" | "synchronize" | "reopened")
        && event.pull_request.base.reference == branch
        && same_repository(&event.repository, source)
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

/// The last deliveries seen (`X-GitHub-Delivery`), so a redelivery is not acted on twice.
#[derive(Debug, Default)]
pub struct Deliveries {
    order: VecDeque<String>,
    seen: HashSet<String>,
}

impl Deliveries {
    const REMEMBERED: usize = 1024;

    /// Records `id`; false if it was seen already.
    pub fn first_time(&mut self, id: &str) -> bool {
        if !self.seen.insert(id.to_owned()) {
            return false;
        }
        self.order.push_back(id.to_owned());
        if self.order.len() > Self::REMEMBERED {
            if let Some(oldest) = self.order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
        true
    }
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
                    "pull_request": {"head": {"sha": "abc"}, "base": {"ref": base}},
                    "repository": {"full_name": "acme/functions",
                                   "clone_url": "https://github.com/acme/functions.git"}})
                .to_string()
                .as_bytes(),
            )
            .unwrap()
        };
        let main = source("https://github.com/acme/functions", None, None);
        for action in ["opened", "synchronize", "reopened"] {
            assert!(plans(&event(action, "main"), &main), "{action}");
        }
        assert!(!plans(&event("closed", "main"), &main));
        assert!(!plans(&event("labeled", "main"), &main));
        assert!(!plans(&event("opened", "release"), &main));
        let other = source("https://github.com/acme/other", None, None);
        assert!(!plans(&event("opened", "main"), &other));
        assert!(parse_pull_request(b"{}").is_err());
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
