//! The git adapter against real repositories: `file://` remotes made with the git CLI, smart
//! HTTP through git-http-backend behind basic auth, a server that never answers, and sshd.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use meshops::git::{Credentials, GitError, Mirror, Reference, Remote, TreeFile};
use support::git_servers::{
    generate_key, git, hash_known_hosts, HttpGitServer, SilentServer, SshServer,
};

/// One timeout for every test: libgit2's stall limits are process-wide and set from the first
/// mirror opened, so a test with a longer timeout would slow the silent-server test down.
const TIMEOUT: Duration = Duration::from_secs(2);
const MAX_BYTES: u64 = 1024 * 1024;
const TOKEN: &str = "s3cr3t-token-for-tests";

/// A work repository with history, branches, an annotated tag, a nested path, a symlink, an
/// executable, a submodule entry and a file over [`MAX_BYTES`].
struct Fixture {
    dir: tempfile::TempDir,
    /// The commit `v1` (annotated) and `v0` (lightweight) point at.
    first: String,
    /// `main`'s head.
    head: String,
    /// `release`'s head.
    release: String,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        git(&work, &["init", "-q"]);
        write(&work, "README.md", b"# repo\n");
        write(&work, "deploy/prod/a.yaml", b"kind: Function\n");
        git(&work, &["add", "."]);
        git(&work, &["commit", "-q", "-m", "first"]);
        let first = git(&work, &["rev-parse", "HEAD"]);
        git(&work, &["tag", "-a", "v1", "-m", "release v1"]);
        git(&work, &["tag", "v0"]);

        write(&work, "deploy/prod/nested/b.yml", b"kind: Sink\n");
        write(&work, "deploy/staging/c.yaml", b"kind: Source\n");
        write(&work, "deploy/prod/run.sh", b"#!/bin/sh\n");
        write(
            &work,
            "deploy/prod/big.bin",
            &vec![b'x'; MAX_BYTES as usize + 1],
        );
        std::os::unix::fs::symlink("a.yaml", work.join("deploy/prod/link.yaml")).unwrap();
        git(
            &work,
            &["update-index", "--chmod=+x", "--add", "deploy/prod/run.sh"],
        );
        git(&work, &["add", "."]);
        // A submodule is a commit entry in the tree; it needs no repository behind it.
        let gitlink = format!("160000,{first},deploy/prod/submodule");
        git(&work, &["update-index", "--add", "--cacheinfo", &gitlink]);
        git(&work, &["commit", "-q", "-m", "second"]);
        let head = git(&work, &["rev-parse", "HEAD"]);

        git(&work, &["checkout", "-q", "-b", "release", &first]);
        write(&work, "release.yaml", b"kind: Function\n");
        git(&work, &["add", "."]);
        git(&work, &["commit", "-q", "-m", "release"]);
        let release = git(&work, &["rev-parse", "HEAD"]);
        git(&work, &["checkout", "-q", "main"]);
        Fixture {
            dir,
            first,
            head,
            release,
        }
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn url(&self) -> String {
        format!("file://{}", self.work().display())
    }

    /// A bare copy at `<root>/repo.git`, as the servers serve it.
    fn bare(&self) -> PathBuf {
        let bare = self.dir.path().join("served/repo.git");
        if !bare.exists() {
            std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
            let work = self.work();
            git(
                self.dir.path(),
                &[
                    "clone",
                    "-q",
                    "--bare",
                    work.to_str().unwrap(),
                    bare.to_str().unwrap(),
                ],
            );
        }
        bare
    }

    fn commit(&self, path: &str, content: &[u8]) -> String {
        let work = self.work();
        write(&work, path, content);
        git(&work, &["add", "."]);
        git(&work, &["commit", "-q", "-m", path]);
        git(&work, &["rev-parse", "HEAD"])
    }
}

fn write(root: &Path, path: &str, content: &[u8]) {
    let path = root.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

fn remote(url: &str, reference: Reference, credentials: Credentials) -> Remote {
    Remote {
        url: url.to_owned(),
        reference,
        credentials,
        timeout: TIMEOUT,
    }
}

fn branch(name: &str) -> Reference {
    Reference::Branch(name.to_owned())
}

fn open(state: &Path, remote: Remote) -> Mirror {
    Mirror::open(state, "source", remote).unwrap()
}

fn paths(files: &[TreeFile]) -> Vec<String> {
    files.iter().map(|f| f.path.display().to_string()).collect()
}

fn is_shallow(mirror: &Mirror) -> bool {
    git2::Repository::open_bare(mirror.path())
        .unwrap()
        .is_shallow()
}

/// Prints the one line that says SSH tests did not run, and tells the caller to return.
fn sshd_missing() -> bool {
    let missing = !SshServer::available();
    if missing {
        eprintln!("skipped: sshd not installed (apt-get install openssh-server)");
    }
    missing
}

#[test]
fn remote_head_resolves_branches_tags_and_pinned_commits() {
    let fixture = Fixture::new();
    let state = tempfile::tempdir().unwrap();
    let head_of = |reference| {
        open(
            state.path(),
            remote(&fixture.url(), reference, Credentials::None),
        )
        .remote_head()
        .unwrap()
    };
    assert_eq!(head_of(branch("main")), fixture.head);
    assert_eq!(head_of(branch("release")), fixture.release);
    // The annotated tag resolves to its commit, not to the tag object.
    assert_eq!(head_of(Reference::Tag("v1".into())), fixture.first);
    assert_eq!(head_of(Reference::Tag("v0".into())), fixture.first);

    // A pinned commit needs no network: the remote does not even exist.
    let pinned = remote(
        "file:///nonexistent/repo",
        Reference::Commit(fixture.first.clone()),
        Credentials::None,
    );
    assert_eq!(
        open(state.path(), pinned).remote_head().unwrap(),
        fixture.first
    );
}

#[test]
fn remote_head_is_stable_until_the_branch_moves() {
    let fixture = Fixture::new();
    let state = tempfile::tempdir().unwrap();
    let mirror = open(
        state.path(),
        remote(&fixture.url(), branch("main"), Credentials::None),
    );
    let synced = mirror.remote_head().unwrap();
    // Unchanged: the caller compares with the last synced commit and skips the reconcile.
    assert_eq!(mirror.remote_head().unwrap(), synced);
    let next = fixture.commit("deploy/prod/d.yaml", b"kind: Function\n");
    assert_ne!(next, synced);
    assert_eq!(mirror.remote_head().unwrap(), next);
}

#[test]
fn fetch_then_files_lists_the_regular_files_under_the_path() {
    let fixture = Fixture::new();
    let state = tempfile::tempdir().unwrap();
    let mirror = open(
        state.path(),
        remote(&fixture.url(), branch("main"), Credentials::None),
    );
    let head = mirror.remote_head().unwrap();
    mirror.fetch(&head).unwrap();

    let files = mirror.files(&head, "deploy/prod", MAX_BYTES).unwrap();
    // Sorted as the tree is; no symlink, no submodule.
    assert_eq!(
        paths(&files),
        [
            "deploy/prod/a.yaml",
            "deploy/prod/big.bin",
            "deploy/prod/nested/b.yml",
            "deploy/prod/run.sh",
        ]
    );
    assert_eq!(files[0].content.as_deref(), Some(&b"kind: Function\n"[..]));
    assert_eq!(files[0].size, 15);
    // Over the limit: listed with its size, never read.
    assert_eq!(files[1].size, MAX_BYTES + 1);
    assert_eq!(files[1].content, None);
    assert_eq!(files[3].content.as_deref(), Some(&b"#!/bin/sh\n"[..]));

    let root = paths(&mirror.files(&head, "", MAX_BYTES).unwrap());
    assert_eq!(root.first().map(String::as_str), Some("README.md"));
    assert!(root.contains(&"deploy/staging/c.yaml".to_owned()));
    assert_eq!(paths(&mirror.files(&head, ".", MAX_BYTES).unwrap()), root);
    assert_eq!(
        paths(
            &mirror
                .files(&head, "./deploy/prod/nested/", MAX_BYTES)
                .unwrap()
        ),
        ["deploy/prod/nested/b.yml"]
    );
    // A path naming a file gives that file.
    assert_eq!(
        paths(&mirror.files(&head, "README.md", MAX_BYTES).unwrap()),
        ["README.md"]
    );
    let missing = mirror
        .files(&head, "deploy/nowhere", MAX_BYTES)
        .unwrap_err();
    assert_eq!(missing.category(), "not-found", "{missing}");
    assert!(missing.to_string().contains("deploy/nowhere"), "{missing}");

    // Bare, and complete: the local transport cannot fetch shallowly.
    assert_eq!(
        git(mirror.path(), &["rev-parse", "--is-bare-repository"]),
        "true"
    );
    assert!(!is_shallow(&mirror));

    // The commit is cached: fetching it again needs no remote at all.
    std::fs::rename(fixture.work(), fixture.dir.path().join("gone")).unwrap();
    mirror.fetch(&head).unwrap();
    assert_eq!(
        mirror
            .files(&head, "deploy/staging", MAX_BYTES)
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn fetch_of_a_tag_and_of_a_pinned_commit() {
    let fixture = Fixture::new();
    let state = tempfile::tempdir().unwrap();
    let tag = Mirror::open(
        state.path(),
        "tag",
        remote(
            &fixture.url(),
            Reference::Tag("v1".into()),
            Credentials::None,
        ),
    )
    .unwrap();
    let commit = tag.remote_head().unwrap();
    tag.fetch(&commit).unwrap();
    assert_eq!(
        paths(&tag.files(&commit, "", MAX_BYTES).unwrap()),
        ["README.md", "deploy/prod/a.yaml"]
    );

    let pinned = Mirror::open(
        state.path(),
        "pinned",
        remote(
            &fixture.url(),
            Reference::Commit(fixture.release.clone()),
            Credentials::None,
        ),
    )
    .unwrap();
    pinned.fetch(&fixture.release).unwrap();
    assert!(
        paths(&pinned.files(&fixture.release, "", MAX_BYTES).unwrap())
            .contains(&"release.yaml".to_owned())
    );
}

#[test]
fn unknown_branch_or_tag_is_not_found() {
    let fixture = Fixture::new();
    let state = tempfile::tempdir().unwrap();
    for reference in [branch("nope"), Reference::Tag("v9".into())] {
        let shown = reference.to_string();
        let mirror = open(
            state.path(),
            remote(&fixture.url(), reference, Credentials::None),
        );
        let err = mirror.remote_head().unwrap_err();
        assert_eq!(err.category(), "not-found", "{err}");
        let message = err.to_string();
        assert!(message.contains(&format!("{shown} not found")), "{message}");
        assert!(message.contains(&fixture.url()), "{message}");
    }
    let mirror = open(
        state.path(),
        remote(&fixture.url(), branch("main"), Credentials::None),
    );
    let err = mirror.files(&"0".repeat(40), "", MAX_BYTES).unwrap_err();
    assert_eq!(err.category(), "not-found", "{err}");
}

#[test]
fn a_mirror_of_another_url_is_reinitialised() {
    let (one, two) = (Fixture::new(), Fixture::new());
    let state = tempfile::tempdir().unwrap();
    let first = open(
        state.path(),
        remote(&one.url(), branch("main"), Credentials::None),
    );
    first.fetch(&one.head).unwrap();
    drop(first);
    let second = open(
        state.path(),
        remote(&two.url(), branch("main"), Credentials::None),
    );
    let err = second.files(&one.head, "", MAX_BYTES).unwrap_err();
    assert_eq!(err.category(), "not-found", "{err}");
    second.fetch(&two.head).unwrap();
    assert!(!second.files(&two.head, "", MAX_BYTES).unwrap().is_empty());
}

#[test]
fn http_with_the_right_token_fetches_shallowly() {
    let fixture = Fixture::new();
    let bare = fixture.bare();
    let server = HttpGitServer::start(bare.parent().unwrap(), TOKEN);
    let state = tempfile::tempdir().unwrap();
    let url = format!("{}/repo.git", server.base);
    let mirror = open(
        state.path(),
        remote(&url, branch("main"), Credentials::Token(TOKEN.into())),
    );
    let head = mirror.remote_head().unwrap();
    assert_eq!(head, fixture.head);
    mirror.fetch(&head).unwrap();
    assert!(is_shallow(&mirror), "smart HTTP fetches depth 1");
    let files = mirror
        .files(&head, "deploy/prod/nested", MAX_BYTES)
        .unwrap();
    assert_eq!(paths(&files), ["deploy/prod/nested/b.yml"]);
    // A commit the remote does not send for the branch (here: another branch's) is
    // not-found, not a silent success. (libgit2's local transport would send it: it packs
    // everything reachable from any ref.)
    let err = mirror.fetch(&fixture.release).unwrap_err();
    assert_eq!(err.category(), "not-found", "{err}");
    assert!(err.to_string().contains("did branch main move"), "{err}");

    // git-http-backend does not allow fetching an object by id: a pinned commit falls back
    // to fetching the branches.
    let pinned = Mirror::open(
        state.path(),
        "pinned",
        remote(
            &url,
            Reference::Commit(fixture.release.clone()),
            Credentials::Token(TOKEN.into()),
        ),
    )
    .unwrap();
    pinned.fetch(&fixture.release).unwrap();
    assert!(
        paths(&pinned.files(&fixture.release, "", MAX_BYTES).unwrap())
            .contains(&"release.yaml".to_owned())
    );
}

#[test]
fn http_with_a_wrong_or_no_token_is_an_auth_error_that_hides_the_token() {
    let fixture = Fixture::new();
    let bare = fixture.bare();
    let server = HttpGitServer::start(bare.parent().unwrap(), TOKEN);
    let state = tempfile::tempdir().unwrap();
    let shown = format!("{}/repo.git", server.base);
    // Credentials in the URL as well: they must not show either.
    let url = shown.replace("http://", "http://someone:url-password@");
    let wrong = "wrong-token-0123456789";
    let mirror = open(
        state.path(),
        remote(&url, branch("main"), Credentials::Token(wrong.into())),
    );
    let errors: Vec<GitError> = vec![
        mirror.remote_head().unwrap_err(),
        mirror.fetch(&fixture.head).unwrap_err(),
    ];
    for err in &errors {
        assert_eq!(err.category(), "auth", "{err}");
        let (message, debug) = (err.to_string(), format!("{err:?}"));
        assert!(message.contains(&shown), "{message}");
        assert!(message.contains("branch main"), "{message}");
        for secret in [wrong, "url-password", "someone"] {
            assert!(!message.contains(secret), "{message}");
            assert!(!debug.contains(secret), "{debug}");
        }
    }
    assert!(!format!("{mirror:?}").contains(wrong));

    let anonymous = Mirror::open(
        state.path(),
        "anonymous",
        remote(&shown, branch("main"), Credentials::None),
    )
    .unwrap();
    let err = anonymous.remote_head().unwrap_err();
    assert_eq!(err.category(), "auth", "{err}");
    assert!(err.to_string().contains("none are configured"), "{err}");
}

#[test]
fn a_server_that_never_answers_is_a_timeout() {
    let server = SilentServer::start();
    let state = tempfile::tempdir().unwrap();
    let url = format!("{}/repo.git", server.base);
    let mirror = open(
        state.path(),
        remote(&url, branch("main"), Credentials::None),
    );
    for err in [
        mirror.remote_head().unwrap_err(),
        mirror.fetch(&"1".repeat(40)).unwrap_err(),
    ] {
        assert_eq!(err.category(), "timeout", "{err}");
        let message = err.to_string();
        assert!(message.contains(&url), "{message}");
        assert!(message.contains("timed out after 2s"), "{message}");
    }
}

#[test]
fn a_fetch_still_receiving_data_stops_at_its_deadline() {
    let fixture = Fixture::new();
    let bare = fixture.bare();
    let server = HttpGitServer::start_trickling(bare.parent().unwrap(), TOKEN);
    let state = tempfile::tempdir().unwrap();
    let url = format!("{}/repo.git", server.base);
    let mirror = open(
        state.path(),
        remote(&url, branch("main"), Credentials::Token(TOKEN.into())),
    );
    let head = mirror.remote_head().unwrap();
    // Progress arrives every 200 ms, so no read timeout fires: the deadline must.
    let err = mirror.fetch(&head).unwrap_err();
    assert_eq!(err.category(), "timeout", "{err}");
    assert!(err.to_string().contains("fetch of branch main"), "{err}");
}

/// sshd with `fixture`'s bare repository, and a known_hosts file holding `lines`.
fn ssh_mirror(server: &SshServer, fixture: &Fixture, state: &Path, known_hosts: &str) -> Mirror {
    let known_hosts_file = state.join("known_hosts");
    std::fs::write(&known_hosts_file, known_hosts).unwrap();
    let credentials = Credentials::Ssh {
        key_file: server.client_key.clone(),
        known_hosts_file,
    };
    open(
        state,
        remote(&server.url(&fixture.bare()), branch("main"), credentials),
    )
}

#[test]
fn ssh_with_the_host_in_known_hosts_fetches_shallowly() {
    if sshd_missing() {
        return;
    }
    let server = SshServer::start().unwrap();
    let fixture = Fixture::new();
    let state = tempfile::tempdir().unwrap();
    let known = format!("{} {}\n", server.host_name(), server.host_key);
    let mirror = ssh_mirror(&server, &fixture, state.path(), &known);
    let head = mirror
        .remote_head()
        .unwrap_or_else(|e| panic!("{e}\nsshd log:\n{}", server.log_text()));
    assert_eq!(head, fixture.head);
    mirror.fetch(&head).unwrap();
    assert!(is_shallow(&mirror), "ssh fetches depth 1");
    assert_eq!(
        mirror
            .files(&head, "deploy/staging", MAX_BYTES)
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn ssh_accepts_a_hashed_known_hosts_entry() {
    if sshd_missing() {
        return;
    }
    let server = SshServer::start().unwrap();
    let fixture = Fixture::new();
    let state = tempfile::tempdir().unwrap();
    let hashed = server.dir().join("known_hosts");
    std::fs::write(
        &hashed,
        format!("{} {}\n", server.host_name(), server.host_key),
    )
    .unwrap();
    hash_known_hosts(&hashed).unwrap();
    let text = std::fs::read_to_string(&hashed).unwrap();
    assert!(
        text.starts_with("|1|") && !text.contains("127.0.0.1"),
        "{text}"
    );
    let mirror = ssh_mirror(&server, &fixture, state.path(), &text);
    assert_eq!(mirror.remote_head().unwrap(), fixture.head);
}

#[test]
fn ssh_refuses_an_unknown_host_and_leaves_known_hosts_alone() {
    if sshd_missing() {
        return;
    }
    let server = SshServer::start().unwrap();
    let fixture = Fixture::new();
    let state = tempfile::tempdir().unwrap();
    // Known on another port only: that is another host.
    let other = format!("[127.0.0.1]:{} {}\n", server.port + 1, server.host_key);
    let mirror = ssh_mirror(&server, &fixture, state.path(), &other);
    for err in [
        mirror.remote_head().unwrap_err(),
        mirror.fetch(&fixture.head).unwrap_err(),
    ] {
        assert_eq!(err.category(), "host-key", "{err}");
        let message = err.to_string();
        assert!(message.contains("unknown host"), "{message}");
        assert!(message.contains(&server.host_name()), "{message}");
        assert!(message.contains(&server.host_key_fingerprint), "{message}");
    }
    let after = std::fs::read_to_string(state.path().join("known_hosts")).unwrap();
    assert_eq!(after, other, "known_hosts is never written");
}

#[test]
fn ssh_refuses_a_changed_host_key() {
    if sshd_missing() {
        return;
    }
    let server = SshServer::start().unwrap();
    let fixture = Fixture::new();
    let state = tempfile::tempdir().unwrap();
    let impostor = generate_key(&server.dir().join("impostor")).unwrap();
    let known = format!("{} {impostor}\n", server.host_name());
    let mirror = ssh_mirror(&server, &fixture, state.path(), &known);
    let err = mirror.remote_head().unwrap_err();
    assert_eq!(err.category(), "host-key", "{err}");
    let message = err.to_string();
    assert!(message.contains("changed"), "{message}");
    assert!(message.contains(&server.host_key_fingerprint), "{message}");
}

#[test]
fn ssh_with_a_key_the_server_does_not_know_is_an_auth_error() {
    if sshd_missing() {
        return;
    }
    let server = SshServer::start().unwrap();
    let fixture = Fixture::new();
    let state = tempfile::tempdir().unwrap();
    let stranger = server.dir().join("stranger");
    generate_key(&stranger).unwrap();
    let known_hosts_file = state.path().join("known_hosts");
    std::fs::write(
        &known_hosts_file,
        format!("{} {}\n", server.host_name(), server.host_key),
    )
    .unwrap();
    let mirror = open(
        state.path(),
        remote(
            &server.url(&fixture.bare()),
            branch("main"),
            Credentials::Ssh {
                key_file: stranger,
                known_hosts_file,
            },
        ),
    );
    let err = mirror.remote_head().unwrap_err();
    assert_eq!(err.category(), "auth", "{err}");
    assert!(err.to_string().contains("for user root"), "{err}");
}
