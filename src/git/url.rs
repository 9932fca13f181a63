//! Just enough of git's URL forms to keep credentials out of messages and to know which host
//! key to check: `scheme://[userinfo@]host[:port]/path`, scp-like `[user@]host:path`, and
//! local paths. git accepts more spellings than a URL parser does (scp-like has no scheme), so
//! this is done by hand rather than with a URL crate.

/// How a remote is reached; it decides which credentials make sense and whether libgit2 can
/// fetch shallowly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    /// `file://` or a plain path: libgit2's local transport, which cannot fetch shallowly.
    Local,
    /// `http://` or `https://`: smart HTTP.
    Http,
    /// `ssh://`, `git+ssh://`, `ssh+git://` or scp-like `host:path`.
    Ssh,
    /// `git://`: unauthenticated daemon protocol.
    Daemon,
}

/// Where an SSH remote is and who logs in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SshTarget {
    pub user: Option<String>,
    /// Lowercased, without IPv6 brackets.
    pub host: String,
    pub port: u16,
}

const DEFAULT_SSH_PORT: u16 = 22;

pub(crate) fn transport(url: &str) -> Option<Transport> {
    match url.split_once("://") {
        Some((scheme, _)) => match scheme.to_ascii_lowercase().as_str() {
            "file" => Some(Transport::Local),
            "http" | "https" => Some(Transport::Http),
            "ssh" | "git+ssh" | "ssh+git" => Some(Transport::Ssh),
            "git" => Some(Transport::Daemon),
            _ => None,
        },
        None if scp_like(url).is_some() => Some(Transport::Ssh),
        None if !url.is_empty() => Some(Transport::Local),
        None => None,
    }
}

/// `(userinfo, host_and_path)` of an scp-like URL: a colon before any slash, as git decides.
fn scp_like(url: &str) -> Option<(Option<&str>, &str)> {
    let colon = url.find(':')?;
    if url[..colon].contains('/') || colon == 0 {
        return None;
    }
    match url[..colon].rfind('@') {
        Some(at) => Some((Some(&url[..at]), &url[at + 1..])),
        None => Some((None, url)),
    }
}

/// Where the userinfo of a `scheme://` URL is, as a byte range including the `@`.
fn userinfo_range(url: &str) -> Option<std::ops::Range<usize>> {
    let start = url.find("://")? + 3;
    let rest = &url[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    Some(start..start + at + 1)
}

/// The URL as it may be shown: without user name, password or token
/// (`https://user:tok@host/x` → `https://host/x`, `git@host:x` → `host:x`).
pub fn redact(url: &str) -> String {
    if let Some(range) = userinfo_range(url) {
        let mut shown = url.to_owned();
        shown.replace_range(range, "");
        return shown;
    }
    if !url.contains("://") {
        if let Some((Some(_), host_and_path)) = scp_like(url) {
            return host_and_path.to_owned();
        }
    }
    url.to_owned()
}

/// The password part of a URL's userinfo, so it can be scrubbed from libgit2's messages.
pub(crate) fn password(url: &str) -> Option<&str> {
    let range = userinfo_range(url)?;
    let userinfo = &url[range.start..range.end - 1];
    userinfo
        .split_once(':')
        .map(|(_, password)| password)
        .filter(|p| !p.is_empty())
}

/// Host, port and user of an SSH remote; `None` for other transports or a malformed URL.
pub(crate) fn ssh_target(url: &str) -> Option<SshTarget> {
    if transport(url)? != Transport::Ssh {
        return None;
    }
    let (user, host, port) = match url.split_once("://") {
        Some((_, rest)) => {
            let authority = &rest[..rest.find('/')?];
            let (user, host_port) = match authority.rfind('@') {
                Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
                None => (None, authority),
            };
            let (host, port) = split_host_port(host_port)?;
            (user, host, port)
        }
        None => {
            let (user, host_and_path) = scp_like(url)?;
            let host = &host_and_path[..host_and_path.find(':')?];
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            (user, host, DEFAULT_SSH_PORT)
        }
    };
    if host.is_empty() {
        return None;
    }
    Some(SshTarget {
        user: user.filter(|u| !u.is_empty()).map(str::to_owned),
        host: host.to_ascii_lowercase(),
        port,
    })
}

fn split_host_port(host_port: &str) -> Option<(&str, u16)> {
    if let Some(bracketed) = host_port.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(port) => port.parse().ok()?,
            None if after.is_empty() => DEFAULT_SSH_PORT,
            None => return None,
        };
        return Some((host, port));
    }
    match host_port.rsplit_once(':') {
        Some((host, "")) => Some((host, DEFAULT_SSH_PORT)),
        Some((host, port)) => Some((host, port.parse().ok()?)),
        None => Some((host_port, DEFAULT_SSH_PORT)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_userinfo_of_every_form() {
        assert_eq!(redact("https://user:tok@host/x"), "https://host/x");
        assert_eq!(
            redact("https://tok@host:8443/x.git"),
            "https://host:8443/x.git"
        );
        assert_eq!(redact("https://host/x@y"), "https://host/x@y");
        assert_eq!(redact("ssh://git@host:2222/x"), "ssh://host:2222/x");
        assert_eq!(
            redact("git@github.com:org/repo.git"),
            "github.com:org/repo.git"
        );
        assert_eq!(redact("file:///tmp/repo"), "file:///tmp/repo");
        assert_eq!(redact("/tmp/a@b/repo"), "/tmp/a@b/repo");
    }

    #[test]
    fn finds_the_password_to_scrub() {
        assert_eq!(password("https://user:tok@host/x"), Some("tok"));
        assert_eq!(password("https://user@host/x"), None);
        assert_eq!(password("https://host/x"), None);
    }

    #[test]
    fn tells_transports_apart() {
        assert_eq!(transport("file:///tmp/r"), Some(Transport::Local));
        assert_eq!(transport("/tmp/r"), Some(Transport::Local));
        assert_eq!(transport("./r"), Some(Transport::Local));
        assert_eq!(transport("HTTPS://h/r"), Some(Transport::Http));
        assert_eq!(transport("ssh://h/r"), Some(Transport::Ssh));
        assert_eq!(transport("git@h:r"), Some(Transport::Ssh));
        assert_eq!(transport("git://h/r"), Some(Transport::Daemon));
        assert_eq!(transport("ftp://h/r"), None);
        assert_eq!(transport(""), None);
    }

    #[test]
    fn reads_ssh_targets() {
        let target = |user: Option<&str>, host: &str, port| SshTarget {
            user: user.map(str::to_owned),
            host: host.to_owned(),
            port,
        };
        assert_eq!(
            ssh_target("ssh://git@Example.COM:2222/org/r.git"),
            Some(target(Some("git"), "example.com", 2222))
        );
        assert_eq!(ssh_target("ssh://host/r"), Some(target(None, "host", 22)));
        assert_eq!(
            ssh_target("ssh://root@[::1]:2200/r"),
            Some(target(Some("root"), "::1", 2200))
        );
        assert_eq!(
            ssh_target("git@github.com:org/r.git"),
            Some(target(Some("git"), "github.com", 22))
        );
        assert_eq!(ssh_target("https://host/r"), None);
        assert_eq!(ssh_target("ssh://host:notaport/r"), None);
    }
}
