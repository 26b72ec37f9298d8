//! Bearer tokens with roles, loaded from a TOML file:
//!
//! ```toml
//! [[tokens]]
//! name = "billing-service"   # shown in logs, never the token
//! role = "writer"            # reader | writer | replicator | admin
//! token = "at least 16 characters of secret"
//! tenants = ["acme"]         # optional: only these tenants' records and keys (absent: every tenant)
//! ```
//!
//! Tokens are kept only as SHA-256 digests and compared in constant time, against every configured token.

use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, Code, Error};

/// What a request wants to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Reads: records, keys, proofs, checkpoints, status.
    Read,
    /// Appends.
    Write,
    /// Scrape metrics.
    Metrics,
    /// Admin operations (on-demand checkpoints).
    Admin,
    /// The replication stream.
    Replicate,
}

/// A token's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads and metrics.
    Reader,
    /// Reads, metrics and appends.
    Writer,
    /// Reads and the replication stream.
    Replicator,
    /// Everything.
    Admin,
}

impl Role {
    /// Whether the role may do `a`.
    #[must_use]
    pub fn allows(self, a: Action) -> bool {
        match self {
            Role::Admin => true,
            Role::Writer => matches!(a, Action::Read | Action::Write | Action::Metrics),
            Role::Reader => matches!(a, Action::Read | Action::Metrics),
            Role::Replicator => matches!(a, Action::Read | Action::Replicate),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    role: Role,
    token: String,
    #[serde(default)]
    tenants: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    tokens: Vec<TokenEntry>,
}

/// The configured tokens (or none: authentication disabled).
#[derive(Clone, Debug)]
pub struct Auth {
    tokens: Option<Vec<Token>>,
}

/// A configured token: its digest, name, role and the tenants it is limited to.
#[derive(Clone, Debug)]
struct Token {
    digest: [u8; 32],
    name: String,
    role: Role,
    tenants: Option<Vec<String>>,
}

/// The caller, once authenticated.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The token's name (`anonymous` without authentication).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The tenants it may write and read (`None`: every tenant).
    pub tenants: Option<Vec<String>>,
}

impl Caller {
    /// An admin limited to no tenant (an in-process caller: tools, tests).
    #[must_use]
    pub fn admin(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            role: Role::Admin,
            tenants: None,
        }
    }

    /// Whether this caller may write or read `tenant`'s records and keys: `PERMISSION_DENIED` if its token is
    /// limited to other tenants.
    pub fn may_use_tenant(&self, tenant: &str) -> Result<(), ApiError> {
        match &self.tenants {
            Some(list) if !list.iter().any(|t| t == tenant) => Err(ApiError::new(
                Code::PermissionDenied,
                format!(
                    "token {:?} is limited to the tenants {list:?}, not {tenant:?}",
                    self.name
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Whether this caller may read across every tenant (a scan of the whole log, a key of a log whose keys are
    /// global): only a token limited to no tenant.
    pub fn may_use_every_tenant(&self, what: &str) -> Result<(), ApiError> {
        match &self.tenants {
            Some(list) => Err(ApiError::new(
                Code::PermissionDenied,
                format!(
                    "token {:?} is limited to the tenants {list:?}; {what} needs a token for every tenant",
                    self.name
                ),
            )),
            None => Ok(()),
        }
    }
}

impl Auth {
    /// No authentication: every caller is an admin (loopback-only, see the config checks).
    #[must_use]
    pub fn disabled() -> Self {
        Self { tokens: None }
    }

    /// Loads a tokens file. Refuses empty or short tokens and duplicate tokens.
    pub fn load(path: &Path) -> Result<Self, Error> {
        refuse_shared_file(path)?;
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
        let file: TokensFile = toml::from_str(&text).map_err(|e| Error::file(path, e))?;
        if file.tokens.is_empty() {
            return Err(Error::file(path, "lists no tokens"));
        }
        let mut tokens = Vec::new();
        for t in file.tokens {
            if t.token.len() < 16 {
                return Err(Error::file(
                    path,
                    format!("token {:?} is shorter than 16 characters", t.name),
                ));
            }
            let digest: [u8; 32] = Sha256::digest(t.token.as_bytes()).into();
            if tokens.iter().any(|k: &Token| k.digest == digest) {
                return Err(Error::file(
                    path,
                    format!("token {:?} duplicates another token", t.name),
                ));
            }
            if let Some(list) = &t.tenants {
                if list.is_empty() {
                    return Err(Error::file(
                        path,
                        format!(
                            "token {:?} lists no tenants (leave `tenants` out for every tenant)",
                            t.name
                        ),
                    ));
                }
                for tenant in list {
                    aerodb_engine::record::check_tenant(tenant).map_err(|e| {
                        Error::file(path, format!("token {:?}: tenant {tenant:?}: {e}", t.name))
                    })?;
                }
            }
            tokens.push(Token {
                digest,
                name: t.name,
                role: t.role,
                tenants: t.tenants,
            });
        }
        Ok(Self { tokens: Some(tokens) })
    }

    /// Whether authentication is on.
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.tokens.is_some()
    }

    /// Checks an `Authorization` header value for `action`.
    pub fn check(&self, header: Option<&[u8]>, action: Action) -> Result<Caller, ApiError> {
        let Some(tokens) = &self.tokens else {
            return Ok(Caller {
                name: "anonymous".into(),
                role: Role::Admin,
                tenants: None,
            });
        };
        let header = header
            .ok_or_else(|| ApiError::new(Code::Unauthenticated, "missing Authorization: Bearer <token>"))?;
        let token = header.strip_prefix(b"Bearer ").ok_or_else(|| {
            ApiError::new(
                Code::Unauthenticated,
                "the Authorization header must be `Bearer <token>`",
            )
        })?;
        let digest: [u8; 32] = Sha256::digest(token).into();
        // Compare with every token, without stopping early or branching on the bytes.
        let mut found = None;
        for t in tokens {
            let diff = t
                .digest
                .iter()
                .zip(digest.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(t);
            }
        }
        let t = found.ok_or_else(|| ApiError::new(Code::Unauthenticated, "unknown bearer token"))?;
        let (name, role) = (&t.name, t.role);
        if !role.allows(action) {
            return Err(ApiError::new(
                Code::PermissionDenied,
                format!("token {name:?} has role {role:?}, which may not {action:?}"),
            ));
        }
        Ok(Caller {
            name: name.clone(),
            role,
            tenants: t.tenants.clone(),
        })
    }
}

/// Refuses a secret file (tokens, a private key) that its group or others may read or write: secrets are kept
/// mode 0600 (or stricter) by the operator; the node does not start with one that is not.
pub fn refuse_shared_file(path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| Error::file(path, e))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::file(
            path,
            format!(
                "holds secrets but has mode {mode:04o}: its group or others may read it; run `chmod 600 {}`",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Writes a secret file (tokens, a private key) readable by its owner only (mode 0600), replacing any content.
pub fn write_secret_file(path: &Path, contents: impl AsRef<[u8]>) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt, os::unix::fs::PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(contents.as_ref())
}
