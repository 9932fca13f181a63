//! The git2 adapter: which commit a remote ref points at, fetching just that commit into a
//! bare mirror, and reading the files of a commit's tree without a working tree.
//!
//! Everything here blocks (libgit2 is synchronous); the agent calls it inside
//! `tokio::task::spawn_blocking`. Each network step has a deadline: libgit2's process-wide
//! connect and read timeouts catch a server that stops answering, and the progress callbacks
//! abort a transfer that is still flowing when the remote's `timeout` has passed.
//!
//! Secrets never leave this module in text: URLs are shown without userinfo, libgit2's messages
//! are scrubbed of the URL's password and the token, and [`Credentials`]' `Debug` redacts them.
//! SSH host keys are checked here against the configured known_hosts file (see
//! [`known_hosts`]), never against `~/.ssh`, and never added to it.

mod known_hosts;
mod url;

/// A git URL without its userinfo, for messages and the sources API.
pub use url::redact;

use std::cell::{Cell, RefCell};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, Direction, ErrorClass, ErrorCode,
    FetchOptions, ObjectType, Oid, RemoteCallbacks, Repository, RepositoryInitOptions,
};
use tracing::{debug, info, warn};

use known_hosts::{KnownHosts, Verdict};
use url::Transport;

/// The ref a source tracks.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    /// A branch name (`main`), not `refs/heads/main`.
    Branch(String),
    /// A tag name (`v1.2`); an annotated tag stands for the commit it points at.
    Tag(String),
    /// A full 40-hex commit id: the source is pinned and never asks the remote where it is.
    Commit(String),
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Branch(name) => write!(f, "branch {name}"),
            Reference::Tag(name) => write!(f, "tag {name}"),
            Reference::Commit(id) => write!(f, "commit {}", short(id)),
        }
    }
}

impl Reference {
    /// The full ref name the remote advertises it under; `None` for a pinned commit.
    fn ref_name(&self) -> Option<String> {
        match self {
            Reference::Branch(name) => Some(format!("refs/heads/{name}")),
            Reference::Tag(name) => Some(format!("refs/tags/{name}")),
            Reference::Commit(_) => None,
        }
    }
}

/// How to authenticate to the remote.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `file://`, anonymous HTTPS or `git://`.
    None,
    /// HTTPS basic auth as GitHub expects it: user `x-access-token`, the token as password.
    Token(String),
    /// An unencrypted private key file, and the known_hosts file the server's key must be in.
    /// The user comes from the URL (`ssh://git@host/..`, `git@host:..`), else `git`.
    Ssh {
        key_file: PathBuf,
        known_hosts_file: PathBuf,
    },
}

/// Redacts the token: `Debug` output ends up in logs and panic messages.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::Token(_) => f.write_str("Token(<redacted>)"),
            Credentials::Ssh {
                key_file,
                known_hosts_file,
            } => f
                .debug_struct("Ssh")
                .field("key_file", key_file)
                .field("known_hosts_file", known_hosts_file)
                .finish(),
        }
    }
}

/// Where a source's commits come from.
#[derive(Clone, PartialEq, Eq)]
pub struct Remote {
    pub url: String,
    pub reference: Reference,
    pub credentials: Credentials,
    /// Budget for each network operation (one ls-remote, one fetch).
    pub timeout: Duration,
}

/// Shows the URL without userinfo, which may hold a password.
impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("url", &url::redact(&self.url))
            .field("reference", &self.reference)
            .field("credentials", &self.credentials)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// One regular file of a commit's tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeFile {
    /// Relative to the repository root.
    pub path: PathBuf,
    pub size: u64,
    /// `None` when the blob is over the size limit: it was not read.
    pub content: Option<Vec<u8>>,
}

/// What was being done when an error happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Open,
    LsRemote,
    Fetch,
    ReadTree,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Open => "opening the mirror",
            Operation::LsRemote => "ls-remote",
            Operation::Fetch => "fetch",
            Operation::ReadTree => "reading the tree",
        })
    }
}

/// Operation, URL (without credentials) and ref: the start of every error message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    pub operation: Operation,
    pub url: String,
    pub reference: String,
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} from {}",
            self.operation, self.reference, self.url
        )
    }
}

/// Why a host key was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostKeyProblem {
    UnknownHost,
    UnknownKeyType { listed: Vec<String> },
    Changed,
    Revoked,
}

impl fmt::Display for HostKeyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostKeyProblem::UnknownHost => f.write_str("unknown host: no entry for it"),
            HostKeyProblem::UnknownKeyType { listed } => write!(
                f,
                "unknown key type: only {} keys are listed for the host",
                listed.join(", ")
            ),
            HostKeyProblem::Changed => f.write_str(
                "the host key has changed (possible man-in-the-middle): \
                 a different key of this type is listed",
            ),
            HostKeyProblem::Revoked => f.write_str("the key is marked @revoked"),
        }
    }
}

/// A host key that known_hosts does not vouch for, with what the operator needs to check it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostKeyRefusal {
    /// `host` or `[host]:port`, as known_hosts lists it.
    pub host: String,
    pub key_type: String,
    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    pub problem: HostKeyProblem,
    pub known_hosts: PathBuf,
}

impl fmt::Display for HostKeyRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "refused the host key of {} ({} {}): {} in {}",
            self.host,
            self.key_type,
            self.fingerprint,
            self.problem,
            self.known_hosts.display()
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("{context}: invalid remote: {reason}")]
    InvalidRemote { context: Context, reason: String },
    #[error("{context}: {}: {source}", path.display())]
    Io {
        context: Context,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{context}: repository {}: {message}", path.display())]
    Repository {
        context: Context,
        path: PathBuf,
        message: String,
    },
    #[error("{context}: authentication failed: {detail}")]
    Auth { context: Context, detail: String },
    #[error("{context}: {refusal}")]
    HostKey {
        context: Context,
        refusal: Box<HostKeyRefusal>,
    },
    #[error("{context}: the server's TLS certificate was refused: {message}")]
    Certificate { context: Context, message: String },
    #[error("{context}: timed out after {}", humantime::format_duration(*timeout))]
    Timeout { context: Context, timeout: Duration },
    #[error("{context}: {what}")]
    NotFound { context: Context, what: String },
    #[error("{context}: {message}")]
    Network { context: Context, message: String },
}

impl GitError {
    /// Stable label for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            GitError::InvalidRemote { .. } => "config",
            GitError::Io { .. } | GitError::Repository { .. } => "io",
            GitError::Auth { .. } => "auth",
            GitError::HostKey { .. } | GitError::Certificate { .. } => "host-key",
            GitError::Timeout { .. } => "timeout",
            GitError::NotFound { .. } => "not-found",
            GitError::Network { .. } => "network",
        }
    }

    pub fn context(&self) -> &Context {
        match self {
            GitError::InvalidRemote { context, .. }
            | GitError::Io { context, .. }
            | GitError::Repository { context, .. }
            | GitError::Auth { context, .. }
            | GitError::HostKey { context, .. }
            | GitError::Certificate { context, .. }
            | GitError::Timeout { context, .. }
            | GitError::NotFound { context, .. }
            | GitError::Network { context, .. } => context,
        }
    }
}

/// A bare repository cached under the state dir, holding the commits fetched for one source.
pub struct Mirror {
    repo: Repository,
    path: PathBuf,
    remote: Remote,
    /// The URL without credentials: what messages show and what `origin` records.
    shown_url: String,
    transport: Transport,
}

impl fmt::Debug for Mirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mirror")
            .field("path", &self.path)
            .field("remote", &self.remote)
            .finish()
    }
}

/// The user name of GitHub-compatible token authentication.
const TOKEN_USER: &str = "x-access-token";
const DEFAULT_SSH_USER: &str = "git";

impl Mirror {
    /// Opens or creates `<state_dir>/<name>.git` (bare, no work tree). A cached mirror whose
    /// origin URL differs, or that libgit2 cannot open, is re-initialised: it is only a cache.
    pub fn open(state_dir: &Path, name: &str, remote: Remote) -> Result<Mirror, GitError> {
        let shown_url = url::redact(&remote.url);
        let context = Context {
            operation: Operation::Open,
            url: shown_url.clone(),
            reference: remote.reference.to_string(),
        };
        let transport = validate(&remote, name).map_err(|reason| GitError::InvalidRemote {
            context: context.clone(),
            reason,
        })?;
        configure_libgit2(remote.timeout);
        std::fs::create_dir_all(state_dir).map_err(|source| GitError::Io {
            context: context.clone(),
            path: state_dir.to_path_buf(),
            source,
        })?;
        let path = state_dir.join(format!("{name}.git"));
        let repo = match Repository::open_bare(&path) {
            Ok(repo) if origin_url(&repo).as_deref() == Some(shown_url.as_str()) => repo,
            Ok(repo) => {
                info!(
                    mirror = %path.display(),
                    was = origin_url(&repo).unwrap_or_default(),
                    now = %shown_url,
                    "the mirror's origin changed; re-initialising it"
                );
                drop(repo);
                recreate(&path, &shown_url, &context)?
            }
            Err(err) if path.exists() => {
                warn!(mirror = %path.display(), error = %err, "the mirror cannot be opened; re-initialising it");
                recreate(&path, &shown_url, &context)?
            }
            Err(_) => init(&path, &shown_url, &context)?,
        };
        Ok(Mirror {
            repo,
            path,
            remote,
            shown_url,
            transport,
        })
    }

    /// Where the bare repository is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    /// Asks the remote which commit the tracked ref points at (ls-remote; no objects fetched),
    /// so that the caller can skip a reconcile when it is the commit it last synced. A pinned
    /// commit returns itself without network; an annotated tag resolves to its commit.
    pub fn remote_head(&self) -> Result<String, GitError> {
        let Some(ref_name) = self.remote.reference.ref_name() else {
            return Ok(self.pinned_commit().to_owned());
        };
        let session = self.session(Operation::LsRemote)?;
        let started = Instant::now();
        let mut remote = self
            .repo
            .remote_anonymous(&self.remote.url)
            .map_err(|err| session.classify(err))?;
        let connection = remote
            .connect_auth(Direction::Fetch, Some(session.callbacks()), None)
            .map_err(|err| session.classify(err))?;
        let heads = connection.list().map_err(|err| session.classify(err))?;
        // An annotated tag is advertised twice: the tag object, then `^{}` with its commit.
        let peeled = format!("{ref_name}^{{}}");
        let head = heads
            .iter()
            .find(|h| h.name() == peeled)
            .or_else(|| heads.iter().find(|h| h.name() == ref_name))
            .map(|h| h.oid().to_string());
        debug!(
            url = %self.shown_url,
            reference = %self.remote.reference,
            commit = head.as_deref().unwrap_or("-"),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "ls-remote"
        );
        head.ok_or_else(|| GitError::NotFound {
            context: session.context.clone(),
            what: format!("{} not found on the remote", self.remote.reference),
        })
    }

    /// Fetches only the tracked ref (or, pinned, only that commit), depth 1 except over the
    /// local transport, which cannot fetch shallowly, and checks that `commit` arrived.
    /// Nothing is fetched when the mirror already has the commit.
    pub fn fetch(&self, commit: &str) -> Result<(), GitError> {
        let context = self.context(Operation::Fetch, &self.remote.reference.to_string());
        let oid = parse_commit(commit, &context)?;
        if self.repo.find_commit(oid).is_ok() {
            debug!(url = %self.shown_url, commit, "already in the mirror; nothing to fetch");
            return Ok(());
        }
        let started = Instant::now();
        let shallow = self.transport != Transport::Local;
        let result = match &self.remote.reference {
            Reference::Branch(name) => {
                self.fetch_refspecs(&[format!("+refs/heads/{name}:refs/heads/{name}")], shallow)
            }
            Reference::Tag(name) => {
                self.fetch_refspecs(&[format!("+refs/tags/{name}:refs/tags/{name}")], shallow)
            }
            Reference::Commit(id) => {
                match self.fetch_refspecs(&[format!("{id}:refs/meshops/pinned")], shallow) {
                    // Servers that do not allow fetching an object by id (no
                    // allow-reachable-sha1-in-want) still serve it through a ref.
                    Err(GitError::Network { message, .. })
                        if message.contains("cannot fetch a specific object") =>
                    {
                        debug!(url = %self.shown_url, %message, "fetch by id refused; fetching all branches and tags");
                        self.fetch_refspecs(
                            &[
                                "+refs/heads/*:refs/heads/*".to_owned(),
                                "+refs/tags/*:refs/tags/*".to_owned(),
                            ],
                            false,
                        )
                    }
                    other => other,
                }
            }
        };
        result?;
        if self.repo.find_commit(oid).is_err() {
            return Err(GitError::NotFound {
                context,
                what: format!(
                    "commit {commit} is not in what the remote sent (did {} move since ls-remote?)",
                    self.remote.reference
                ),
            });
        }
        debug!(
            url = %self.shown_url,
            reference = %self.remote.reference,
            commit,
            shallow = self.repo.is_shallow(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "fetched"
        );
        Ok(())
    }

    /// Fetches a pull request's head (`refs/pull/N/head`, as GitHub advertises it; shallow
    /// where the transport allows) and returns its commit, for a plan of the pull request.
    /// The tracked ref is not touched.
    pub fn fetch_pull(&self, number: u64) -> Result<String, GitError> {
        let local = format!("refs/meshops/pull/{number}");
        let shallow = self.transport != Transport::Local;
        self.fetch_refspecs(&[format!("+refs/pull/{number}/head:{local}")], shallow)?;
        let context = self.context(Operation::Fetch, &format!("pull request #{number}"));
        let commit = self
            .repo
            .refname_to_id(&local)
            .map_err(|_| GitError::NotFound {
                context,
                what: format!("refs/pull/{number}/head not found on the remote"),
            })?;
        Ok(commit.to_string())
    }

    /// Every regular file (a blob: not a symlink, not a submodule) under `path` (relative to
    /// the repository root; `""` or `"."` is the root) in `commit`'s tree, in tree order.
    /// A blob larger than `max_bytes` is listed with its size and no content, and is not read.
    pub fn files(
        &self,
        commit: &str,
        path: &str,
        max_bytes: u64,
    ) -> Result<Vec<TreeFile>, GitError> {
        let context = self.context(Operation::ReadTree, &format!("commit {}", short(commit)));
        let oid = parse_commit(commit, &context)?;
        let repository_error = |err: git2::Error| GitError::Repository {
            context: context.clone(),
            path: self.path.clone(),
            message: err.message().to_owned(),
        };
        let commit = self.repo.find_commit(oid).map_err(|_| GitError::NotFound {
            context: context.clone(),
            what: format!("commit {oid} is not in the mirror (fetch it first)"),
        })?;
        let root = commit.tree().map_err(repository_error)?;
        let relative = path.trim_matches('/').trim_start_matches("./");
        let relative = if relative == "." { "" } else { relative };
        let mut files = Vec::new();
        let odb = self.repo.odb().map_err(repository_error)?;
        let reader = BlobReader {
            repo: &self.repo,
            odb: &odb,
            max_bytes,
        };
        if relative.is_empty() {
            reader
                .collect(&root, PathBuf::new(), &mut files)
                .map_err(repository_error)?;
            return Ok(files);
        }
        let entry = root
            .get_path(Path::new(relative))
            .map_err(|_| GitError::NotFound {
                context: context.clone(),
                what: format!(
                    "path {relative} not found in commit {}",
                    short(&oid.to_string())
                ),
            })?;
        match entry.kind() {
            Some(ObjectType::Tree) => {
                let tree = self.repo.find_tree(entry.id()).map_err(repository_error)?;
                reader
                    .collect(&tree, PathBuf::from(relative), &mut files)
                    .map_err(repository_error)?;
            }
            Some(ObjectType::Blob) if is_regular_file(entry.filemode()) => {
                files.push(
                    reader
                        .file(PathBuf::from(relative), entry.id())
                        .map_err(repository_error)?,
                );
            }
            _ => {}
        }
        Ok(files)
    }

    fn pinned_commit(&self) -> &str {
        match &self.remote.reference {
            Reference::Commit(id) => id,
            Reference::Branch(_) | Reference::Tag(_) => "",
        }
    }

    fn context(&self, operation: Operation, reference: &str) -> Context {
        Context {
            operation,
            url: self.shown_url.clone(),
            reference: reference.to_owned(),
        }
    }

    fn fetch_refspecs(&self, refspecs: &[String], shallow: bool) -> Result<(), GitError> {
        let session = self.session(Operation::Fetch)?;
        let mut remote = self
            .repo
            .remote_anonymous(&self.remote.url)
            .map_err(|err| session.classify(err))?;
        let mut options = FetchOptions::new();
        options
            .remote_callbacks(session.callbacks())
            .download_tags(AutotagOption::None)
            .update_fetchhead(false);
        if shallow {
            options.depth(1);
        }
        remote
            .fetch(refspecs, Some(&mut options), None)
            .map_err(|err| session.classify(err))
    }

    fn session(&self, operation: Operation) -> Result<Session<'_>, GitError> {
        let context = self.context(operation, &self.remote.reference.to_string());
        let ssh = match &self.remote.credentials {
            Credentials::Ssh {
                key_file,
                known_hosts_file,
            } => {
                let io = |path: &Path| {
                    let context = context.clone();
                    let path = path.to_path_buf();
                    move |source| GitError::Io {
                        context,
                        path,
                        source,
                    }
                };
                std::fs::metadata(key_file).map_err(io(key_file))?;
                let text =
                    std::fs::read_to_string(known_hosts_file).map_err(io(known_hosts_file))?;
                let target =
                    url::ssh_target(&self.remote.url).ok_or_else(|| GitError::InvalidRemote {
                        context: context.clone(),
                        reason: "cannot read host and port from the ssh URL".to_owned(),
                    })?;
                Some(Ssh {
                    user: target.user.unwrap_or_else(|| DEFAULT_SSH_USER.to_owned()),
                    key_file: key_file.clone(),
                    known_hosts: KnownHosts::parse(&text),
                    known_hosts_file: known_hosts_file.clone(),
                    host_name: known_hosts::host_name(&target.host, target.port),
                })
            }
            Credentials::None | Credentials::Token(_) => None,
        };
        Ok(Session {
            context,
            remote: &self.remote,
            deadline: Instant::now() + self.remote.timeout,
            ssh,
            failure: RefCell::new(None),
            offered: Cell::new(false),
        })
    }
}

/// One network operation's state, shared with libgit2's callbacks: its deadline, and the
/// error a callback decided on (which says more than the generic error libgit2 returns after
/// a callback refuses).
struct Session<'m> {
    context: Context,
    remote: &'m Remote,
    deadline: Instant,
    ssh: Option<Ssh>,
    failure: RefCell<Option<GitError>>,
    /// Whether credentials were handed over already: libgit2 asks again when they are refused,
    /// and would keep asking forever.
    offered: Cell<bool>,
}

struct Ssh {
    user: String,
    key_file: PathBuf,
    known_hosts: KnownHosts,
    known_hosts_file: PathBuf,
    /// `host` or `[host]:port`, as known_hosts lists it.
    host_name: String,
}

impl Session<'_> {
    fn callbacks(&self) -> RemoteCallbacks<'_> {
        let mut callbacks = RemoteCallbacks::new();
        callbacks.credentials(|_url, _user_from_url, allowed| self.credentials(allowed));
        callbacks.certificate_check(|cert, _host| {
            if self.deadline_passed() {
                return Err(git2::Error::from_str("deadline passed"));
            }
            match (&self.ssh, cert.as_hostkey()) {
                (Some(ssh), Some(hostkey)) => self.check_host_key(ssh, hostkey.hostkey()),
                // TLS: libgit2 and OpenSSL verify the certificate chain as usual.
                _ => Ok(CertificateCheckStatus::CertificatePassthrough),
            }
        });
        callbacks.transfer_progress(|_| !self.deadline_passed());
        callbacks.sideband_progress(|_| !self.deadline_passed());
        callbacks
    }

    fn credentials(&self, allowed: CredentialType) -> Result<Cred, git2::Error> {
        if self.deadline_passed() {
            return Err(git2::Error::from_str("deadline passed"));
        }
        // For an ssh URL without a user, libgit2 asks for the user name before the key.
        if let Some(ssh) = &self.ssh {
            if allowed.contains(CredentialType::USERNAME) {
                return Cred::username(&ssh.user);
            }
        }
        let refuse = |detail: String| {
            Err(self.fail(GitError::Auth {
                context: self.context.clone(),
                detail,
            }))
        };
        if self.offered.replace(true) {
            return refuse(match &self.ssh {
                Some(ssh) => format!(
                    "the server refused the key {} for user {}",
                    ssh.key_file.display(),
                    ssh.user
                ),
                None => "the server refused the token".to_owned(),
            });
        }
        match (&self.remote.credentials, &self.ssh) {
            (Credentials::Token(token), _)
                if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) =>
            {
                Cred::userpass_plaintext(TOKEN_USER, token)
            }
            (_, Some(ssh)) if allowed.contains(CredentialType::SSH_KEY) => {
                Cred::ssh_key(&ssh.user, None, &ssh.key_file, None)
            }
            (Credentials::None, _) => {
                refuse("the server asks for credentials and none are configured".to_owned())
            }
            _ => refuse(format!(
                "the server asks for credentials of another kind ({allowed:?})"
            )),
        }
    }

    fn check_host_key(
        &self,
        ssh: &Ssh,
        key: Option<&[u8]>,
    ) -> Result<CertificateCheckStatus, git2::Error> {
        let Some(key) = key else {
            return Err(self.fail(GitError::Network {
                context: self.context.clone(),
                message: "the ssh transport did not expose the server's host key".to_owned(),
            }));
        };
        let problem = match ssh.known_hosts.verify(&ssh.host_name, key) {
            Verdict::Trusted => return Ok(CertificateCheckStatus::CertificateOk),
            Verdict::UnknownHost => HostKeyProblem::UnknownHost,
            Verdict::OtherTypesListed(listed) => HostKeyProblem::UnknownKeyType { listed },
            Verdict::Changed => HostKeyProblem::Changed,
            Verdict::Revoked => HostKeyProblem::Revoked,
        };
        Err(self.fail(GitError::HostKey {
            context: self.context.clone(),
            refusal: Box::new(HostKeyRefusal {
                host: ssh.host_name.clone(),
                key_type: known_hosts::key_type(key).unwrap_or("unknown").to_owned(),
                fingerprint: known_hosts::fingerprint(key),
                problem,
                known_hosts: ssh.known_hosts_file.clone(),
            }),
        }))
    }

    /// Whether the operation's time is up; if so, the timeout is what will be reported.
    fn deadline_passed(&self) -> bool {
        let passed = Instant::now() >= self.deadline;
        if passed {
            self.fail(GitError::Timeout {
                context: self.context.clone(),
                timeout: self.remote.timeout,
            });
        }
        passed
    }

    /// Records why a callback refused (the first reason wins) and returns the error to hand
    /// back to libgit2.
    fn fail(&self, error: GitError) -> git2::Error {
        let mut failure = self.failure.borrow_mut();
        let message = failure.get_or_insert(error).to_string();
        git2::Error::from_str(&message)
    }

    /// The error to report for what libgit2 returned.
    fn classify(&self, err: git2::Error) -> GitError {
        if let Some(failure) = self.failure.borrow_mut().take() {
            return failure;
        }
        let context = self.context.clone();
        let message = self.scrub(err.message());
        let lowercase = message.to_ascii_lowercase();
        match err.code() {
            ErrorCode::Timeout => GitError::Timeout {
                context,
                timeout: self.remote.timeout,
            },
            _ if lowercase.contains("timed out") => GitError::Timeout {
                context,
                timeout: self.remote.timeout,
            },
            ErrorCode::Auth => GitError::Auth {
                context,
                detail: message,
            },
            ErrorCode::Certificate => GitError::Certificate { context, message },
            ErrorCode::NotFound => GitError::NotFound {
                context,
                what: format!("no repository at the URL: {message}"),
            },
            _ if err.class() == ErrorClass::Http && lowercase.contains("404") => {
                GitError::NotFound {
                    context,
                    what: format!("no repository at the URL: {message}"),
                }
            }
            _ => GitError::Network { context, message },
        }
    }

    /// libgit2's message without the URL's userinfo or the token.
    fn scrub(&self, message: &str) -> String {
        let mut message = message.replace(&self.remote.url, &url::redact(&self.remote.url));
        if let Some(password) = url::password(&self.remote.url) {
            message = message.replace(password, "<redacted>");
        }
        if let Credentials::Token(token) = &self.remote.credentials {
            if !token.is_empty() {
                message = message.replace(token.as_str(), "<redacted>");
            }
        }
        message
    }
}

/// Reads blobs of one commit, skipping the content of those over the size limit.
struct BlobReader<'r> {
    repo: &'r Repository,
    odb: &'r git2::Odb<'r>,
    max_bytes: u64,
}

impl BlobReader<'_> {
    fn collect(
        &self,
        tree: &git2::Tree<'_>,
        prefix: PathBuf,
        files: &mut Vec<TreeFile>,
    ) -> Result<(), git2::Error> {
        for entry in tree.iter() {
            let path = prefix.join(path_from_bytes(entry.name_bytes()));
            match entry.kind() {
                Some(ObjectType::Tree) => {
                    let subtree = self.repo.find_tree(entry.id())?;
                    self.collect(&subtree, path, files)?;
                }
                Some(ObjectType::Blob) if is_regular_file(entry.filemode()) => {
                    files.push(self.file(path, entry.id())?);
                }
                // Symlinks (blobs of mode 120000) and submodules (commits) are no files here.
                _ => {}
            }
        }
        Ok(())
    }

    fn file(&self, path: PathBuf, id: Oid) -> Result<TreeFile, git2::Error> {
        // The header gives the size without inflating the blob.
        let (size, _) = self.odb.read_header(id)?;
        let size = size as u64;
        let content = if size <= self.max_bytes {
            Some(self.repo.find_blob(id)?.content().to_vec())
        } else {
            None
        };
        Ok(TreeFile {
            path,
            size,
            content,
        })
    }
}

/// Regular and executable files; git's old group-writable mode counts as regular too.
fn is_regular_file(mode: i32) -> bool {
    matches!(mode, 0o100644 | 0o100755 | 0o100664)
}

/// Tree entry names are bytes; on Unix they map to paths exactly.
#[cfg(unix)]
fn path_from_bytes(bytes: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
}

#[cfg(not(unix))]
fn path_from_bytes(bytes: &[u8]) -> PathBuf {
    PathBuf::from(String::from_utf8_lossy(bytes).into_owned())
}

fn short(id: &str) -> &str {
    id.get(..7).unwrap_or(id)
}

fn parse_commit(commit: &str, context: &Context) -> Result<Oid, GitError> {
    let invalid = || GitError::InvalidRemote {
        context: context.clone(),
        reason: format!("{commit:?} is not a full 40-hex commit id"),
    };
    if !is_full_commit_id(commit) {
        return Err(invalid());
    }
    Oid::from_str(commit).map_err(|_| invalid())
}

fn is_full_commit_id(id: &str) -> bool {
    id.len() == 40 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Checks what can be checked without the network; returns the transport.
fn validate(remote: &Remote, name: &str) -> Result<Transport, String> {
    let plain_name =
        !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0']);
    if !plain_name {
        return Err(format!(
            "mirror name {name:?} must be a single path component"
        ));
    }
    if remote.timeout.is_zero() {
        return Err("the timeout must be above zero".to_owned());
    }
    match &remote.reference {
        Reference::Branch(n) | Reference::Tag(n) if n.is_empty() || n.starts_with("refs/") => {
            return Err(format!(
                "{} must be a short name (main, v1.2), not empty or a full ref",
                remote.reference
            ));
        }
        Reference::Commit(id) if !is_full_commit_id(id) => {
            return Err(format!(
                "pinned commit {id:?} must be a full 40-hex commit id"
            ));
        }
        _ => {}
    }
    let shown = url::redact(&remote.url);
    let transport = url::transport(&remote.url).ok_or_else(|| {
        format!("{shown:?} is not a git URL git2 can fetch (file, https, ssh, git)")
    })?;
    match (&remote.credentials, transport) {
        (Credentials::Ssh { .. }, Transport::Ssh) => {
            if url::ssh_target(&remote.url).is_none() {
                return Err(format!("cannot read host and port from {shown:?}"));
            }
        }
        (Credentials::Ssh { .. }, _) => {
            return Err("an SSH key is configured but the URL is not an ssh URL".to_owned())
        }
        (_, Transport::Ssh) => {
            return Err("an ssh URL needs an SSH key and a known_hosts file".to_owned())
        }
        (Credentials::Token(_), Transport::Http) => {}
        (Credentials::Token(_), _) => {
            return Err("a token is only used with an http(s) URL".to_owned())
        }
        (Credentials::None, _) => {}
    }
    Ok(transport)
}

/// Sets libgit2's process-wide connect and read timeouts, once: libgit2 keeps them in plain
/// globals that must not change while another thread uses them. They come from the first
/// remote opened, so every remote of one process should use the same timeout; each
/// operation's own deadline is enforced by its callbacks regardless.
fn configure_libgit2(timeout: Duration) {
    static CONFIGURE: Once = Once::new();
    CONFIGURE.call_once(|| {
        let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `Once` makes this the only write, and it happens before this module makes any
        // other libgit2 call (every entry point goes through `Mirror::open`).
        let set = unsafe {
            git2::opts::set_server_connect_timeout_in_milliseconds(millis)
                .and_then(|()| git2::opts::set_server_timeout_in_milliseconds(millis))
                // The mirror is a private cache; a state volume mounted with another owner
                // (fsGroup) must not make libgit2 refuse to open it.
                .and_then(|()| git2::opts::set_verify_owner_validation(false))
        };
        if let Err(err) = set {
            warn!(error = %err, "cannot set libgit2's network timeouts");
        }
    });
}

fn origin_url(repo: &Repository) -> Option<String> {
    repo.find_remote("origin")
        .ok()?
        .url()
        .ok()
        .map(str::to_owned)
}

fn init(path: &Path, shown_url: &str, context: &Context) -> Result<Repository, GitError> {
    let repository_error = |err: git2::Error| GitError::Repository {
        context: context.clone(),
        path: path.to_path_buf(),
        message: err.message().to_owned(),
    };
    let repo = Repository::init_opts(
        path,
        RepositoryInitOptions::new()
            .bare(true)
            .mkpath(true)
            .no_reinit(true),
    )
    .map_err(repository_error)?;
    // Recorded only to notice a changed URL; fetches use the configured URL directly.
    repo.remote("origin", shown_url).map_err(repository_error)?;
    Ok(repo)
}

fn recreate(path: &Path, shown_url: &str, context: &Context) -> Result<Repository, GitError> {
    let removed = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    removed.map_err(|source| GitError::Io {
        context: context.clone(),
        path: path.to_path_buf(),
        source,
    })?;
    init(path, shown_url, context)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(url: &str, credentials: Credentials) -> Remote {
        Remote {
            url: url.to_owned(),
            reference: Reference::Branch("main".to_owned()),
            credentials,
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn a_mirror_can_move_into_spawn_blocking() {
        fn send<T: Send>() {}
        send::<Mirror>();
        send::<GitError>();
    }

    #[test]
    fn shows_references_briefly() {
        assert_eq!(Reference::Branch("main".into()).to_string(), "branch main");
        assert_eq!(Reference::Tag("v1.2".into()).to_string(), "tag v1.2");
        assert_eq!(
            Reference::Commit("abc1234def5678abc1234def5678abc1234def56".into()).to_string(),
            "commit abc1234"
        );
    }

    #[test]
    fn debug_output_holds_no_secret() {
        let remote = remote(
            "https://user:url-secret@host/x",
            Credentials::Token("token-secret".into()),
        );
        let shown = format!("{remote:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("https://host/x"), "{shown}");
    }

    #[test]
    fn refuses_credentials_that_do_not_fit_the_url() {
        let ssh = Credentials::Ssh {
            key_file: "k".into(),
            known_hosts_file: "kh".into(),
        };
        assert!(validate(&remote("ssh://git@host/x", ssh.clone()), "s").is_ok());
        assert!(validate(&remote("https://host/x", ssh), "s").is_err());
        assert!(validate(&remote("git@host:x", Credentials::None), "s").is_err());
        assert!(validate(&remote("file:///x", Credentials::Token("t".into())), "s").is_err());
        assert!(validate(&remote("file:///x", Credentials::None), "../s").is_err());
        let mut pinned = remote("file:///x", Credentials::None);
        pinned.reference = Reference::Commit("abc1234".into());
        assert!(validate(&pinned, "s").is_err());
    }

    #[test]
    fn error_messages_name_operation_ref_and_url_without_secrets() {
        let remote = remote(
            "https://user:url-secret@host/x",
            Credentials::Token("token-secret".into()),
        );
        let session = Session {
            context: Context {
                operation: Operation::Fetch,
                url: url::redact(&remote.url),
                reference: remote.reference.to_string(),
            },
            remote: &remote,
            deadline: Instant::now(),
            ssh: None,
            failure: RefCell::new(None),
            offered: Cell::new(false),
        };
        let err = session.classify(git2::Error::from_str(
            "failed to reach https://user:url-secret@host/x with token-secret",
        ));
        let message = err.to_string();
        assert_eq!(err.category(), "network");
        assert!(
            message.starts_with("fetch of branch main from https://host/x: "),
            "{message}"
        );
        assert!(!message.contains("secret"), "{message}");
    }
}
