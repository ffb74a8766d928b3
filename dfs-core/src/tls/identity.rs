//! Who a certificate names: a role, a name and, for clients, caps. Both are
//! written into the certificate by `dfs ca issue` and read back by every
//! server from the peer's certificate after the TLS handshake.
//!
//! A certificate carries two subject alternative names:
//! - DNS `ROLE.dfs` (`meta.dfs`, `server.dfs`, ...): what a client checks
//!   when it connects, through ordinary name verification, so a chunk
//!   server's certificate cannot answer as the metadata server;
//! - URI `dfs://ROLE/NAME[?caps]`: what a server reads to decide what the
//!   peer may do. Caps: `subtree=/PATH` (percent-encoded), `read-only`,
//!   `unprivileged`, `gateway`.

use std::fmt;

/// What a process of the cluster may do, by its certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The metadata server: drives shard deletion, listing, checks and
    /// repairs on chunk servers.
    Meta,
    /// A chunk server: registers, heartbeats, reports damaged shards.
    Server,
    /// A mount (or gateway): namespace and data operations.
    Client,
    /// An operator's `dfs` command: gc, fsck, status, stats.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Meta, Role::Server, Role::Client, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Meta => "meta",
            Role::Server => "server",
            Role::Client => "client",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The DNS name a certificate of this role carries and a peer
    /// connecting to this role checks (whatever address it dialled).
    pub fn dns_name(self) -> &'static str {
        match self {
            Role::Meta => "meta.dfs",
            Role::Server => "server.dfs",
            Role::Client => "client.dfs",
            Role::Admin => "admin.dfs",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Limits on what a client certificate may do (enforced by dfs-meta), as
/// cephx's `path=` caps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caps {
    /// Only this directory and what is under it (an absolute path).
    pub subtree: Option<String>,
    /// No changes at all.
    pub read_only: bool,
    /// No set-user-ID/set-group-ID bits, device nodes or
    /// `security.*`/`trusted.*` xattrs.
    pub unprivileged: bool,
    /// May read the secrets of S3 access keys (`dfs-gateway`, which checks
    /// requests' signatures with them).
    pub gateway: bool,
}

impl Caps {
    /// The subtree, borrowed (`None`: the whole volume).
    pub fn subtree(&self) -> Option<&str> {
        self.subtree.as_deref()
    }
}

/// The peer a certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub role: Role,
    pub name: String,
    pub caps: Caps,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("certificate does not parse: {0}")]
    BadCertificate(String),
    #[error("certificate names no dfs identity (no dfs:// URI): not issued by `dfs ca issue`")]
    Missing,
    #[error("certificate names more than one dfs identity")]
    Ambiguous,
    #[error("bad dfs identity `{uri}`: {reason}")]
    Malformed { uri: String, reason: String },
}

const SCHEME: &str = "dfs://";

impl Identity {
    pub fn new(role: Role, name: &str) -> Self {
        Self {
            role,
            name: name.to_string(),
            caps: Caps::default(),
        }
    }

    /// The URI this identity is written as in a certificate.
    pub fn to_uri(&self) -> String {
        let mut uri = format!("{SCHEME}{}/{}", self.role, percent_encode(&self.name));
        let mut caps = Vec::new();
        if let Some(subtree) = &self.caps.subtree {
            caps.push(format!("subtree={}", percent_encode(subtree)));
        }
        if self.caps.read_only {
            caps.push("read-only".to_string());
        }
        if self.caps.unprivileged {
            caps.push("unprivileged".to_string());
        }
        if self.caps.gateway {
            caps.push("gateway".to_string());
        }
        if !caps.is_empty() {
            uri.push('?');
            uri.push_str(&caps.join("&"));
        }
        uri
    }

    pub fn from_uri(uri: &str) -> Result<Self, IdentityError> {
        let bad = |reason: &str| IdentityError::Malformed {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| bad("not a dfs:// URI"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (role, name) = path.split_once('/').ok_or_else(|| bad("no name"))?;
        let role = Role::parse(role).ok_or_else(|| bad("unknown role"))?;
        let name = percent_decode(name).ok_or_else(|| bad("bad name"))?;
        if name.is_empty() {
            return Err(bad("empty name"));
        }
        let mut caps = Caps::default();
        for cap in query.split('&').filter(|c| !c.is_empty()) {
            match cap.split_once('=') {
                Some(("subtree", p)) => {
                    let p = percent_decode(p).ok_or_else(|| bad("bad subtree"))?;
                    caps.subtree = Some(
                        normalize_subtree(&p)
                            .ok_or_else(|| bad("subtree must be an absolute path"))?,
                    );
                }
                None if cap == "read-only" => caps.read_only = true,
                None if cap == "unprivileged" => caps.unprivileged = true,
                None if cap == "gateway" => caps.gateway = true,
                _ => return Err(bad(&format!("unknown cap `{cap}`"))),
            }
        }
        if role != Role::Client && caps != Caps::default() {
            return Err(bad("only client certificates carry caps"));
        }
        Ok(Self { role, name, caps })
    }

    /// The identity in a DER certificate (the leaf of a verified chain).
    pub fn from_certificate(der: &[u8]) -> Result<Self, IdentityError> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        let mut found = None;
        for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
            if let GeneralName::URI(uri) = name {
                if uri.starts_with(SCHEME) {
                    if found.is_some() {
                        return Err(IdentityError::Ambiguous);
                    }
                    found = Some(Identity::from_uri(uri)?);
                }
            }
        }
        found.ok_or(IdentityError::Missing)
    }
}

/// SHA-256 of a certificate's public key (its SubjectPublicKeyInfo): what
/// stays the same when a certificate is reissued for the same key (`dfs ca
/// issue --key`), and what a chunk server's registration is bound to.
pub fn public_key_id(der: &[u8]) -> Result<[u8; 32], IdentityError> {
    use sha2::Digest;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    Ok(sha2::Sha256::digest(cert.tbs_certificate.subject_pki.raw).into())
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_uri())
    }
}

/// `/a//b/` → `/a/b`; `None` for a relative path or one with `..`.
pub fn normalize_subtree(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return None;
    }
    Some(format!("/{}", parts.join("/")))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn uri_round_trips() {
        let mut id = Identity::new(Role::Client, "web 1");
        assert_eq!(id.to_uri(), "dfs://client/web%201");
        id.caps = Caps {
            subtree: Some("/home/a b".into()),
            read_only: true,
            unprivileged: true,
            gateway: true,
        };
        let uri = id.to_uri();
        assert_eq!(
            uri,
            "dfs://client/web%201?subtree=/home/a%20b&read-only&unprivileged&gateway"
        );
        assert_eq!(Identity::from_uri(&uri).unwrap(), id);
        for role in Role::ALL {
            let id = Identity::new(role, "n");
            assert_eq!(Identity::from_uri(&id.to_uri()).unwrap(), id);
        }
    }

    #[test]
    fn malformed_uris_are_refused() {
        for bad in [
            "http://client/x",
            "dfs://root/x",
            "dfs://client/",
            "dfs://client",
            "dfs://client/x?subtree=relative",
            "dfs://client/x?subtree=/a/../b",
            "dfs://client/x?write-all",
            "dfs://server/x?read-only",
            "dfs://client/x%zz",
        ] {
            assert!(Identity::from_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn subtrees_normalize() {
        assert_eq!(normalize_subtree("/a//b/./"), Some("/a/b".into()));
        assert_eq!(normalize_subtree("/"), Some("/".into()));
        assert_eq!(normalize_subtree("a"), None);
        assert_eq!(normalize_subtree("/a/.."), None);
    }
}
