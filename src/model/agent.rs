//! The agent's configuration file (`meshops agent --config FILE`): which repositories it
//! follows and how. Validated like every manifest (schema `schemas/agentconfig.json`), so a
//! typo is an error with its file, line and field, before the agent touches a cluster.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::settings::Mode;

pub const AGENT_CONFIG_API_VERSION: &str = "meshops.io/v1alpha1";

/// Durations as people write them in YAML (`30s`, `1m`, `1h30m`).
const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h|d))+$";

#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentConfig {
    pub api_version: String,
    pub kind: String,
    /// Where the bare clones are cached (default `/var/lib/meshops`); losing it costs one
    /// full fetch per source, nothing else: what was applied is recorded in the cluster.
    pub state_dir: Option<PathBuf>,
    pub webhook: Option<WebhookConfig>,
    /// Leader election; on by default so that two replicas never apply at once.
    pub leader_election: Option<LeaderElection>,
    /// Reporting to GitHub (commit statuses, pull-request plans); sources name their
    /// repository with `github.repo`.
    pub github: Option<GithubAccess>,
    #[schemars(length(min = 1))]
    pub sources: Vec<SourceConfig>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookConfig {
    /// File holding the GitHub webhook secret; without a webhook section the agent only
    /// polls and `POST /webhooks/github` answers 404.
    pub secret_file: PathBuf,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaderElection {
    /// Default true.
    pub enabled: Option<bool>,
    /// Namespace of the Lease (default: the pod's namespace, else `default`).
    pub namespace: Option<String>,
    /// Name of the Lease (default `meshops-agent`).
    pub lease_name: Option<String>,
    /// How long a leader's lease lasts without renewal (default 15s): the failover time.
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub lease_duration: Option<String>,
}

/// How the agent reaches GitHub: a token, or a GitHub App installation.
#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GithubAccess {
    /// The REST API (default `https://api.github.com`; GitHub Enterprise:
    /// `https://HOST/api/v3`).
    pub api_url: Option<String>,
    /// A file holding a token (fine-grained: commit statuses and pull requests, read and write).
    pub token_file: Option<PathBuf>,
    /// The environment variable holding a token.
    pub token_env: Option<String>,
    /// A GitHub App; needed for check runs with annotations.
    pub app: Option<GithubApp>,
    /// Where a status's "Details" link points (e.g. this agent's sources API).
    pub target_url: Option<String>,
    /// How long one request to GitHub may take, answer included (default 30s). Reports are
    /// queued and retried, so this bounds only how long a slow GitHub holds one delivery.
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub request_timeout: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GithubApp {
    pub app_id: u64,
    pub installation_id: u64,
    /// The App's private key (PEM), to sign the JWT exchanged for installation tokens.
    pub private_key_file: PathBuf,
}

/// One repository path the agent keeps applied: the unit of inventory, as `--source`.
#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceConfig {
    /// The inventory unit (`meshops-inventory-<name>`), as `meshops apply --source`.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 43))]
    pub name: String,
    /// `https://…`, `ssh://…`, `git@host:path` or `file://…`.
    #[schemars(length(min = 1))]
    pub url: String,
    /// A branch name, or `{tag: v1.2}`, or `{commit: <sha>}` (default: branch `main`).
    #[serde(rename = "ref")]
    pub reference: Option<GitRef>,
    /// Directory inside the repository (default: its root).
    pub path: Option<String>,
    /// How often to ask the remote for a new commit, ±10 % jitter (default 1m).
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub interval: Option<String>,
    pub credentials: Option<Credentials>,
    /// Namespaces the source may write to; an object elsewhere is an error and nothing of
    /// the commit is applied. Unset: any namespace.
    pub namespaces: Option<Vec<String>>,
    /// Delete what the source no longer renders (default true).
    pub prune: Option<bool>,
    /// Re-apply when the cluster drifted from Git (default false: report only).
    pub self_heal: Option<bool>,
    /// How often to compare the cluster with the last applied commit (default 5m).
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub drift_interval: Option<String>,
    /// Overrides the mode in the source's meshops.yaml.
    pub mode: Option<Mode>,
    /// Namespace of the inventory ConfigMap (default: the first of `namespaces`, else
    /// `default`).
    pub inventory_namespace: Option<String>,
    /// How long one git network operation may take (default 1m).
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub timeout: Option<String>,
    /// How long to follow the rollout after an apply before the sync is a failure (default
    /// 5m; `0s`: do not wait).
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub rollout_timeout: Option<String>,
    pub github: Option<GithubConfig>,
    /// Which pull requests against the followed branch are planned, and how many plans may
    /// wait (needs `github`).
    pub pull_requests: Option<PullRequestPolicy>,
}

/// Pull-request plans run server-side dry-runs with the source's own identity, so who may
/// ask for one is a policy, not "anyone who can open a pull request": by default a pull
/// request is planned when its head is a branch of the same repository (its author could
/// push there) or its author is the repository's OWNER, a MEMBER of its organisation or a
/// COLLABORATOR — as GitHub Actions withholds secrets from forks and Atlantis refuses fork
/// pull requests unless allowed.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PullRequestPolicy {
    /// Also plan pull requests from forks opened by anyone else (contributors, first-timers,
    /// strangers); default false: those are refused, logged and counted, never planned.
    pub forks: Option<bool>,
    /// How many pull requests may wait for a plan (default 5); past it the one waiting
    /// longest is dropped (logged and counted) — a new push to it queues it again.
    #[schemars(range(min = 1, max = 100))]
    pub max_queued: Option<u32>,
}

impl PullRequestPolicy {
    /// Pull-request plans that may wait per source unless configured.
    pub const DEFAULT_MAX_QUEUED: usize = 5;
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum GitRef {
    Branch(String),
    Tag(TagRef),
    Commit(CommitRef),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TagRef {
    pub tag: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommitRef {
    #[schemars(regex(pattern = "^[0-9a-f]{40}$"))]
    pub commit: String,
}

/// Where the secret for the repository is; never the secret itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Credentials {
    TokenFile(TokenFile),
    TokenEnv(TokenEnv),
    Ssh(SshCredentials),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenFile {
    /// A file holding an HTTPS token (sent as basic auth, user `x-access-token`).
    pub token_file: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenEnv {
    /// The environment variable holding an HTTPS token.
    pub token_env: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SshCredentials {
    /// An unencrypted private key.
    pub ssh_key_file: PathBuf,
    /// The server's host keys; an unknown or changed key is refused.
    pub known_hosts_file: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GithubConfig {
    /// `owner/name`, for commit statuses.
    #[schemars(regex(pattern = r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$"))]
    pub repo: String,
}

/// Parses a duration as the schema allows it; `None` for anything else.
pub fn duration(text: &str) -> Option<Duration> {
    humantime::parse_duration(text).ok()
}

impl SourceConfig {
    pub fn interval(&self) -> Duration {
        self.interval
            .as_deref()
            .and_then(duration)
            .unwrap_or(Duration::from_secs(60))
    }

    pub fn drift_interval(&self) -> Duration {
        self.drift_interval
            .as_deref()
            .and_then(duration)
            .unwrap_or(Duration::from_secs(300))
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
            .as_deref()
            .and_then(duration)
            .unwrap_or(Duration::from_secs(60))
    }

    /// Where the inventory lives: as configured, else the first namespace the source may
    /// write to, else `default` — so an allow-list never refuses the source's own inventory.
    pub fn inventory_namespace(&self) -> String {
        self.inventory_namespace
            .clone()
            .or_else(|| self.namespaces.as_ref()?.first().cloned())
            .unwrap_or_else(|| "default".into())
    }

    /// `None`: apply without following the rollout.
    pub fn rollout_timeout(&self) -> Option<Duration> {
        let timeout = self
            .rollout_timeout
            .as_deref()
            .and_then(duration)
            .unwrap_or(Duration::from_secs(300));
        (!timeout.is_zero()).then_some(timeout)
    }

    pub fn git_ref(&self) -> GitRef {
        self.reference
            .clone()
            .unwrap_or_else(|| GitRef::Branch("main".into()))
    }

    /// Whether pull requests from forks by authors without write access are planned.
    pub fn plans_forks(&self) -> bool {
        self.pull_requests
            .as_ref()
            .and_then(|p| p.forks)
            .unwrap_or(false)
    }

    /// How many pull-request plans may wait (at least 1).
    pub fn max_queued_pull_requests(&self) -> usize {
        self.pull_requests
            .as_ref()
            .and_then(|p| p.max_queued)
            .map_or(PullRequestPolicy::DEFAULT_MAX_QUEUED, |n| n.max(1) as usize)
    }

    pub fn path(&self) -> &str {
        self.path.as_deref().unwrap_or("")
    }

    pub fn allowed_namespaces(&self) -> Option<BTreeSet<&str>> {
        self.namespaces
            .as_ref()
            .map(|n| n.iter().map(String::as_str).collect())
    }
}

impl AgentConfig {
    /// Names of sources given twice: each is an inventory unit, so they must be unique.
    pub fn duplicate_sources(&self) -> Vec<(usize, &str)> {
        let mut seen = BTreeSet::new();
        self.sources
            .iter()
            .enumerate()
            .filter(|(_, s)| !seen.insert(s.name.as_str()))
            .map(|(i, s)| (i, s.name.as_str()))
            .collect()
    }
}
