//! OpenSSH `known_hosts` matching, done here instead of by libssh2 so that the file checked is
//! the one the source config names (libgit2 would read `~/.ssh/known_hosts`), nothing is ever
//! added to it, and a refusal can say exactly why.
//!
//! Supported: plain host patterns with `*`/`?` wildcards and `!` negation, `[host]:port` for
//! non-default ports, hashed `|1|salt|hash` entries (HMAC-SHA1 of the host name) and
//! `@revoked` lines. `@cert-authority` lines are skipped: libssh2 does not present host
//! certificates.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Digest as _;

/// The parsed lines of one known_hosts file; lines that do not parse are ignored, as ssh does.
#[derive(Clone, Debug, Default)]
pub(crate) struct KnownHosts {
    entries: Vec<Entry>,
}

#[derive(Clone, Debug)]
struct Entry {
    marker: Marker,
    hosts: Hosts,
    key_type: String,
    key: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Marker {
    None,
    Revoked,
    CertAuthority,
}

#[derive(Clone, Debug)]
enum Hosts {
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
    Patterns(Vec<String>),
}

/// What the file says about the key a host presented.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Trusted,
    /// No line names the host at all.
    UnknownHost,
    /// The host is listed, but only with keys of other types.
    OtherTypesListed(Vec<String>),
    /// The host is listed with a different key of the same type.
    Changed,
    /// The key is marked `@revoked`.
    Revoked,
}

/// The name a host is listed under: `host` on port 22, `[host]:port` elsewhere.
pub(crate) fn host_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    }
}

/// The fingerprint as `ssh-keygen -l` prints it: `SHA256:` and unpadded base64.
pub(crate) fn fingerprint(key: &[u8]) -> String {
    format!(
        "SHA256:{}",
        STANDARD_NO_PAD.encode(sha2::Sha256::digest(key))
    )
}

/// The algorithm name a public key blob starts with (SSH wire format: u32 length, name).
pub(crate) fn key_type(key: &[u8]) -> Option<&str> {
    let len = u32::from_be_bytes(key.get(..4)?.try_into().ok()?) as usize;
    std::str::from_utf8(key.get(4..4 + len)?).ok()
}

impl KnownHosts {
    pub(crate) fn parse(text: &str) -> KnownHosts {
        KnownHosts {
            entries: text.lines().filter_map(parse_line).collect(),
        }
    }

    /// Judges `key` (a wire-format blob) presented by the host listed as `name`
    /// (see [`host_name`]).
    pub(crate) fn verify(&self, name: &str, key: &[u8]) -> Verdict {
        let name = name.to_ascii_lowercase();
        let key_type = key_type(key).unwrap_or_default();
        let listed: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| e.marker != Marker::CertAuthority && e.hosts.matches(&name))
            .collect();
        if listed
            .iter()
            .any(|e| e.marker == Marker::Revoked && e.key == key)
        {
            return Verdict::Revoked;
        }
        let trusted: Vec<&&Entry> = listed.iter().filter(|e| e.marker == Marker::None).collect();
        if trusted
            .iter()
            .any(|e| e.key_type == key_type && e.key == key)
        {
            return Verdict::Trusted;
        }
        if trusted.iter().any(|e| e.key_type == key_type) {
            return Verdict::Changed;
        }
        if trusted.is_empty() {
            return Verdict::UnknownHost;
        }
        let mut types: Vec<String> = trusted.iter().map(|e| e.key_type.clone()).collect();
        types.sort();
        types.dedup();
        Verdict::OtherTypesListed(types)
    }
}

fn parse_line(line: &str) -> Option<Entry> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let mut fields = line.split_whitespace();
    let mut first = fields.next()?;
    let marker = match first {
        "@revoked" => Marker::Revoked,
        "@cert-authority" => Marker::CertAuthority,
        _ => Marker::None,
    };
    if marker != Marker::None {
        first = fields.next()?;
    }
    let hosts = parse_hosts(first)?;
    let key_type = fields.next()?.to_owned();
    let key = STANDARD.decode(fields.next()?).ok()?;
    Some(Entry {
        marker,
        hosts,
        key_type,
        key,
    })
}

fn parse_hosts(field: &str) -> Option<Hosts> {
    if let Some(hashed) = field.strip_prefix("|1|") {
        let (salt, hash) = hashed.split_once('|')?;
        return Some(Hosts::Hashed {
            salt: STANDARD.decode(salt).ok()?,
            hash: STANDARD.decode(hash).ok()?,
        });
    }
    Some(Hosts::Patterns(
        field.split(',').map(str::to_ascii_lowercase).collect(),
    ))
}

impl Hosts {
    fn matches(&self, name: &str) -> bool {
        match self {
            Hosts::Hashed { salt, hash } => {
                let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(salt) else {
                    return false;
                };
                mac.update(name.as_bytes());
                mac.verify_slice(hash).is_ok()
            }
            Hosts::Patterns(patterns) => {
                let mut matched = false;
                for pattern in patterns {
                    match pattern.strip_prefix('!') {
                        // A negated match excludes the host whatever else the line says.
                        Some(negated) if wildcard_match(negated, name) => return false,
                        Some(_) => {}
                        None => matched |= wildcard_match(pattern, name),
                    }
                }
                matched
            }
        }
    }
}

/// Glob match with `*` (any run) and `?` (one character), as ssh's host patterns.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let (pattern, text): (Vec<char>, Vec<char>) =
        (pattern.chars().collect(), text.chars().collect());
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                backtrack = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match backtrack {
                Some((star, matched)) => {
                    p = star + 1;
                    t = matched + 1;
                    backtrack = Some((star, matched + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wire-format blob: type name then some key bytes.
    fn blob(key_type: &str, bytes: &[u8]) -> Vec<u8> {
        let mut blob = (key_type.len() as u32).to_be_bytes().to_vec();
        blob.extend_from_slice(key_type.as_bytes());
        blob.extend_from_slice(bytes);
        blob
    }

    fn line(hosts: &str, key: &[u8]) -> String {
        let key_type = key_type(key).unwrap();
        format!("{hosts} {key_type} {} comment\n", STANDARD.encode(key))
    }

    fn hashed(name: &str, salt: &[u8]) -> String {
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(salt).unwrap();
        mac.update(name.as_bytes());
        let hash = mac.finalize().into_bytes();
        format!("|1|{}|{}", STANDARD.encode(salt), STANDARD.encode(hash))
    }

    #[test]
    fn names_hosts_on_other_ports_in_brackets() {
        assert_eq!(host_name("github.com", 22), "github.com");
        assert_eq!(host_name("127.0.0.1", 2222), "[127.0.0.1]:2222");
    }

    #[test]
    fn matches_plain_and_bracketed_names() {
        let ed = blob("ssh-ed25519", b"key-a");
        let hosts = KnownHosts::parse(&format!(
            "# comment\n\n{}{}",
            line("github.com,140.82.121.4", &ed),
            line("[127.0.0.1]:2222", &ed)
        ));
        assert_eq!(hosts.verify("github.com", &ed), Verdict::Trusted);
        assert_eq!(hosts.verify("GitHub.com", &ed), Verdict::Trusted);
        assert_eq!(hosts.verify("[127.0.0.1]:2222", &ed), Verdict::Trusted);
        // The same address on another port is another host.
        assert_eq!(hosts.verify("[127.0.0.1]:2223", &ed), Verdict::UnknownHost);
        assert_eq!(hosts.verify("127.0.0.1", &ed), Verdict::UnknownHost);
    }

    #[test]
    fn matches_hashed_entries() {
        let ed = blob("ssh-ed25519", b"key-a");
        let hosts = KnownHosts::parse(&line(
            &hashed("[127.0.0.1]:2222", b"0123456789abcdefghij"),
            &ed,
        ));
        assert_eq!(hosts.verify("[127.0.0.1]:2222", &ed), Verdict::Trusted);
        assert_eq!(hosts.verify("[127.0.0.1]:2221", &ed), Verdict::UnknownHost);
    }

    #[test]
    fn tells_a_changed_key_from_an_unlisted_type() {
        let listed = blob("ssh-ed25519", b"key-a");
        let hosts = KnownHosts::parse(&line("host", &listed));
        assert_eq!(
            hosts.verify("host", &blob("ssh-ed25519", b"key-b")),
            Verdict::Changed
        );
        assert_eq!(
            hosts.verify("host", &blob("ecdsa-sha2-nistp256", b"key-c")),
            Verdict::OtherTypesListed(vec!["ssh-ed25519".to_owned()])
        );
    }

    #[test]
    fn honours_wildcards_negation_and_revocation() {
        let ed = blob("ssh-ed25519", b"key-a");
        let hosts = KnownHosts::parse(&format!(
            "{}@revoked * {} {}\n@cert-authority *.corp ssh-ed25519 {}\n",
            line("*.example.com,!bad.example.com,git?.corp", &ed),
            "ssh-ed25519",
            STANDARD.encode(blob("ssh-ed25519", b"stolen")),
            STANDARD.encode(&ed),
        ));
        assert_eq!(hosts.verify("git.example.com", &ed), Verdict::Trusted);
        assert_eq!(hosts.verify("git1.corp", &ed), Verdict::Trusted);
        assert_eq!(hosts.verify("bad.example.com", &ed), Verdict::UnknownHost);
        assert_eq!(hosts.verify("other.corp", &ed), Verdict::UnknownHost);
        assert_eq!(
            hosts.verify("git.example.com", &blob("ssh-ed25519", b"stolen")),
            Verdict::Revoked
        );
    }

    #[test]
    fn ignores_lines_that_do_not_parse() {
        let ed = blob("ssh-ed25519", b"key-a");
        let hosts = KnownHosts::parse(&format!(
            "host ssh-ed25519 !!notbase64!!\nonly-a-host\n|1|bad|\n{}",
            line("host", &ed)
        ));
        assert_eq!(hosts.verify("host", &ed), Verdict::Trusted);
    }

    #[test]
    fn fingerprints_like_ssh_keygen() {
        // `ssh-keygen -lf` prints SHA256:Qi7j4ODNPiWGwI4VIgGN7AILFEi+XY5u88Pb8bD98zc for it.
        let key = STANDARD
            .decode("AAAAC3NzaC1lZDI1NTE5AAAAIOlJf+w/ZEZueS2CexlRLGUf3vH/U62CgEX9SQHgAhZb")
            .unwrap();
        assert_eq!(key_type(&key), Some("ssh-ed25519"));
        assert_eq!(
            fingerprint(&key),
            "SHA256:Qi7j4ODNPiWGwI4VIgGN7AILFEi+XY5u88Pb8bD98zc"
        );
    }
}
