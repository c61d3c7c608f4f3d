//! Authentication and authorization of the public API: API keys with roles
//! and JWTs (HS256, RS256) that limit a caller to collections.
//!
//! A request carries `authorization: Bearer <token>` or `api-key: <key>`.
//! A token with two dots is a JWT; anything else is an API key. Either is
//! resolved into an [`Access`] (who, role, collections), and every method
//! needs one of the [`Need`]s in [`METHODS`], the one table of what each
//! RPC requires (docs/security.md prints it). [`AuthLayer`] refuses
//! requests that lack credentials (`UNAUTHENTICATED`) or the role
//! (`PERMISSION_DENIED`) before they are decoded; handlers then call
//! [`authorize`] with the collection the request names, which a JWT may
//! not cover.
//!
//! Keys live in a file ([`AuthConfig::api_keys_file`]), one per line:
//! `<role> <key> [name]`, `#` comments. Several keys may hold one role:
//! that is how keys rotate (add the new one, move clients, remove the
//! old). The file and the JWT key files are reloaded when they change.
//! Keys are compared by SHA-256 digest in constant time, never logged.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use serde::Deserialize;
use tonic::Status;

use crate::audit::{AuditEvent, AuditLog};

/// Longest credential header value read (a JWT with a long collection
/// list fits; anything longer is refused unread).
pub const MAX_CREDENTIAL_BYTES: usize = 16 * 1024;
/// Most keys a keys file may hold.
pub const MAX_KEYS: usize = 1024;
/// Clock skew allowed on a JWT's `exp` and `nbf`.
pub const JWT_LEEWAY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    ReadOnly,
    ReadWrite,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "read-only" => Some(Role::ReadOnly),
            "read-write" => Some(Role::ReadWrite),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::ReadOnly => "read-only",
            Role::ReadWrite => "read-write",
            Role::Admin => "admin",
        }
    }
}

/// What a resolved credential may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// Who, for logs and the audit log: `api-key:<name>`, `jwt:<sub>`, or
    /// `anonymous` when authentication is off.
    pub who: String,
    pub role: Role,
    /// The collections it may touch; `None`: all.
    pub collections: Option<BTreeSet<String>>,
}

impl Access {
    /// Everything (authentication off).
    pub fn anonymous() -> Access {
        Access { who: "anonymous".into(), role: Role::Admin, collections: None }
    }

    pub fn may_see(&self, collection: &str) -> bool {
        self.collections.as_ref().is_none_or(|c| c.contains(collection))
    }

    /// Checks `need` for `collection` (ignored by needs without one).
    pub fn check(&self, need: Need, collection: Option<&str>) -> Result<(), AuthError> {
        let role = need.role();
        if self.role < role {
            return Err(AuthError::Denied(format!("{} needs the {} role; this {} credential ({}) has {}", need.what(), role.name(), self.role.name(), self.who, self.role.name())));
        }
        match need {
            Need::Read | Need::Write => {
                if let Some(c) = collection {
                    if !self.may_see(c) {
                        // The name is the caller's, unvalidated: bounded.
                        let c: String = c.chars().take(256).collect();
                        return Err(AuthError::Denied(format!("{} ({}) may not {} collection {c:?}", self.who, self.role.name(), need.what())));
                    }
                }
            }
            Need::Manage | Need::Cluster => {
                if self.collections.is_some() {
                    return Err(AuthError::Denied(format!("{} is limited to some collections and may not {}", self.who, need.what())));
                }
            }
            Need::List | Need::None => {}
        }
        Ok(())
    }
}

/// What a method requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// No credential (the health service).
    None,
    /// Any valid credential; answers are filtered to its collections.
    List,
    /// Read a collection: read-only or more.
    Read,
    /// Write a collection's points: read-write or more.
    Write,
    /// Create or drop collections: admin, for all collections.
    Manage,
    /// Cluster status: admin, for all collections.
    Cluster,
}

impl Need {
    pub fn role(self) -> Role {
        match self {
            Need::None | Need::List | Need::Read => Role::ReadOnly,
            Need::Write => Role::ReadWrite,
            Need::Manage | Need::Cluster => Role::Admin,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Need::None | Need::List => "list collections",
            Need::Read => "read",
            Need::Write => "write",
            Need::Manage => "create or delete collections",
            Need::Cluster => "read the cluster status",
        }
    }
}

/// Every public method and what it needs: the one table (docs/security.md).
/// A path not listed is refused.
pub const METHODS: &[(&str, Need)] = &[
    ("/shoal.v1.Collections/Create", Need::Manage),
    ("/shoal.v1.Collections/Delete", Need::Manage),
    ("/shoal.v1.Collections/Get", Need::Read),
    ("/shoal.v1.Collections/List", Need::List),
    ("/shoal.v1.Collections/UpdateAliases", Need::Manage),
    ("/shoal.v1.Collections/UpdatePayloadIndexes", Need::Manage),
    ("/shoal.v1.Collections/UpdateVectors", Need::Manage),
    ("/shoal.v1.Collections/UpdateStorage", Need::Manage),
    ("/shoal.v1.Collections/ListAliases", Need::List),
    ("/shoal.v1.Points/Upsert", Need::Write),
    ("/shoal.v1.Points/Delete", Need::Write),
    ("/shoal.v1.Points/UpdatePayload", Need::Write),
    ("/shoal.v1.Points/Get", Need::Read),
    ("/shoal.v1.Points/Count", Need::Read),
    ("/shoal.v1.Points/Scroll", Need::Read),
    ("/shoal.v1.Points/Search", Need::Read),
    ("/shoal.v1.Points/SearchBatch", Need::Read),
    ("/shoal.v1.Points/SearchStream", Need::Read),
    ("/shoal.v1.Points/Query", Need::Read),
    ("/shoal.v1.Cluster/Status", Need::Cluster),
    ("/grpc.health.v1.Health/Check", Need::None),
    ("/grpc.health.v1.Health/Watch", Need::None),
    ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", Need::List),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", Need::List),
];

pub fn need_of(path: &str) -> Option<Need> {
    METHODS.iter().find(|(p, _)| *p == path).map(|(_, n)| *n)
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Config(String),
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Status {
        match e {
            AuthError::Unauthenticated(m) => Status::unauthenticated(m),
            AuthError::Denied(m) => Status::permission_denied(m),
            AuthError::Config(m) => Status::internal(m),
        }
    }
}

/// Where credentials come from. Authentication is on when any is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthConfig {
    /// `<role> <key> [name]` per line.
    pub api_keys_file: Option<PathBuf>,
    /// HS256 shared secret (the file's bytes, trailing newline trimmed).
    pub jwt_secret_file: Option<PathBuf>,
    /// RS256 public key (PEM).
    pub jwt_public_key_file: Option<PathBuf>,
    /// When set, a JWT's `iss` must be this (tokens from an identity
    /// provider shared with other services are told apart).
    pub jwt_issuer: Option<String>,
    /// When set, a JWT's `aud` must include this.
    pub jwt_audience: Option<String>,
}

impl AuthConfig {
    pub fn enabled(&self) -> bool {
        self.api_keys_file.is_some() || self.jwt_secret_file.is_some() || self.jwt_public_key_file.is_some()
    }

    fn paths(&self) -> [Option<&PathBuf>; 3] {
        [self.api_keys_file.as_ref(), self.jwt_secret_file.as_ref(), self.jwt_public_key_file.as_ref()]
    }
}

struct Key {
    digest: [u8; 32],
    role: Role,
    name: String,
}

struct Keys {
    stamp: crate::reload::Stamp,
    keys: Vec<Key>,
    hs256: Option<jsonwebtoken::DecodingKey>,
    rs256: Option<jsonwebtoken::DecodingKey>,
}

fn digest(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn read_small(path: &Path) -> Result<Vec<u8>, AuthError> {
    use std::io::Read;
    let mut buf = Vec::new();
    let err = |e: std::io::Error| AuthError::Config(format!("reading {}: {e}", path.display()));
    std::fs::File::open(path).map_err(err)?.take(1 << 20).read_to_end(&mut buf).map_err(err)?;
    Ok(buf)
}

/// Parses a keys file.
fn parse_keys(path: &Path, text: &str) -> Result<Vec<Key>, AuthError> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| AuthError::Config(format!("{}:{}: {why} (expected `<role> <key> [name]`, roles read-only, read-write, admin)", path.display(), n + 1));
        let mut parts = line.split_whitespace();
        let role = parts.next().and_then(Role::parse).ok_or_else(|| bad("unknown role"))?;
        let key = parts.next().ok_or_else(|| bad("no key"))?;
        if key.len() < 16 {
            return Err(bad("keys must be at least 16 characters"));
        }
        let name = parts.next().map(str::to_string).unwrap_or_else(|| format!("{}#{}", role.name(), n + 1));
        if parts.next().is_some() {
            return Err(bad("too many fields"));
        }
        keys.push(Key { digest: digest(key.as_bytes()), role, name });
        if keys.len() > MAX_KEYS {
            return Err(bad(&format!("more than {MAX_KEYS} keys")));
        }
    }
    Ok(keys)
}

fn stamp(cfg: &AuthConfig) -> crate::reload::Stamp {
    crate::reload::stamp(&cfg.paths().map(|p| p.map(PathBuf::as_path)))
}

fn load(cfg: &AuthConfig) -> Result<Keys, AuthError> {
    let stamp = stamp(cfg);
    let keys = match &cfg.api_keys_file {
        Some(p) => parse_keys(p, &String::from_utf8_lossy(&read_small(p)?))?,
        None => vec![],
    };
    let hs256 = match &cfg.jwt_secret_file {
        Some(p) => {
            let mut s = read_small(p)?;
            while s.last().is_some_and(|b| b.is_ascii_whitespace()) {
                s.pop();
            }
            if s.len() < 32 {
                return Err(AuthError::Config(format!("{}: an HS256 secret must be at least 32 bytes", p.display())));
            }
            Some(jsonwebtoken::DecodingKey::from_secret(&s))
        }
        None => None,
    };
    let rs256 = match &cfg.jwt_public_key_file {
        Some(p) => Some(jsonwebtoken::DecodingKey::from_rsa_pem(&read_small(p)?).map_err(|e| AuthError::Config(format!("{}: not an RSA public key in PEM: {e}", p.display())))?),
        None => None,
    };
    Ok(Keys { stamp, keys, hs256, rs256 })
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    role: Role,
    #[serde(default)]
    collections: Option<Vec<String>>,
}

/// Resolves credentials into [`Access`]; reloads its files when they
/// change.
pub struct Authenticator {
    cfg: AuthConfig,
    keys: RwLock<Keys>,
}

impl crate::reload::Reloadable for Authenticator {
    const WHAT: &'static str = "keys";

    fn reload_if_changed(&self) -> Result<bool, String> {
        if stamp(&self.cfg) == self.keys.read().stamp {
            return Ok(false);
        }
        let k = load(&self.cfg).map_err(|e| e.to_string())?;
        *self.keys.write() = k;
        Ok(true)
    }
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("Authenticator").field("cfg", &self.cfg).field("keys", &self.keys.read().keys.len()).finish()
    }
}

impl Authenticator {
    pub fn load(cfg: AuthConfig) -> Result<Arc<Self>, AuthError> {
        let keys = load(&cfg)?;
        Ok(Arc::new(Authenticator { cfg, keys: RwLock::new(keys) }))
    }

    /// Checks the files every `every`.
    pub fn watch(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        crate::reload::watch(self, every)
    }

    /// The access `headers` carry.
    pub fn authenticate(&self, headers: &http::HeaderMap) -> Result<Access, AuthError> {
        let missing = || AuthError::Unauthenticated("no credentials: send `authorization: Bearer <API key or JWT>` or `api-key: <key>`".into());
        let value = headers.get(http::header::AUTHORIZATION).or_else(|| headers.get("api-key")).ok_or_else(missing)?;
        if value.len() > MAX_CREDENTIAL_BYTES {
            return Err(AuthError::Unauthenticated(format!("credential longer than {MAX_CREDENTIAL_BYTES} bytes")));
        }
        let value = value.to_str().map_err(|_| AuthError::Unauthenticated("credential is not ASCII".into()))?.trim();
        let token = match value.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
            Some(_) => return Err(AuthError::Unauthenticated("unsupported authorization scheme (use Bearer)".into())),
            None => value,
        };
        if token.bytes().filter(|b| *b == b'.').count() == 2 {
            self.jwt(token)
        } else {
            self.api_key(token)
        }
    }

    fn api_key(&self, key: &str) -> Result<Access, AuthError> {
        let d = digest(key.as_bytes());
        let keys = self.keys.read();
        // Every key is compared, whatever matched: no timing tells which.
        let mut found: Option<&Key> = None;
        for k in &keys.keys {
            let diff = k.digest.iter().zip(d.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(k);
            }
        }
        found.map(|k| Access { who: format!("api-key:{}", k.name), role: k.role, collections: None }).ok_or_else(|| AuthError::Unauthenticated("unknown API key".into()))
    }

    fn jwt(&self, token: &str) -> Result<Access, AuthError> {
        use jsonwebtoken::{Algorithm, Validation};
        let bad = |why: String| AuthError::Unauthenticated(format!("invalid token: {why}"));
        let header = jsonwebtoken::decode_header(token).map_err(|e| bad(e.to_string()))?;
        let keys = self.keys.read();
        let key = match header.alg {
            Algorithm::HS256 => keys.hs256.as_ref().ok_or_else(|| bad("HS256 tokens are not accepted here (no secret configured)".into()))?,
            Algorithm::RS256 => keys.rs256.as_ref().ok_or_else(|| bad("RS256 tokens are not accepted here (no public key configured)".into()))?,
            other => return Err(bad(format!("algorithm {other:?} is not accepted (HS256 or RS256)"))),
        };
        let mut v = Validation::new(header.alg);
        v.leeway = JWT_LEEWAY.as_secs();
        v.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(iss) = &self.cfg.jwt_issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        match &self.cfg.jwt_audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.push("aud");
            }
            None => v.validate_aud = false,
        }
        v.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Claims>(token, key, &v).map_err(|e| bad(e.to_string()))?;
        let c = data.claims;
        Ok(Access { who: format!("jwt:{}", c.sub.unwrap_or_else(|| "-".into())), role: c.role, collections: c.collections.map(|v| v.into_iter().collect()) })
    }
}

/// The access of a request, from its extensions ([`AuthLayer`] puts it
/// there; without the layer, everything is allowed).
pub fn access(ext: &http::Extensions) -> Access {
    ext.get::<Access>().cloned().unwrap_or_else(Access::anonymous)
}

/// Checks that a request may touch `collection`: handlers call this with
/// the collection the request names.
pub fn authorize(ext: &http::Extensions, collection: &str) -> Result<(), Status> {
    let Some(a) = ext.get::<Access>() else { return Ok(()) };
    let need = ext.get::<Need>().copied().unwrap_or(Need::Read);
    a.check(need, Some(collection)).map_err(|e| {
        if let Some(log) = ext.get::<Arc<AuditLog>>() {
            let from = crate::tls::peer(ext).and_then(|p| p.remote_addr);
            log.record(&AuditEvent::new(&a.who, from, ext.get::<MethodPath>().map_or("", |m| m.0.as_str()), Some(collection), "PERMISSION_DENIED", &e.to_string()));
        }
        e.into()
    })
}

/// The method a request called (in its extensions).
#[derive(Debug, Clone)]
pub struct MethodPath(pub String);

/// Authenticates every request of a public server: refuses missing or bad
/// credentials and methods whose role the caller lacks, and records the
/// caller's [`Access`] for the handlers. Use as `Guard(AuthPolicy::new(..))`.
#[derive(Clone)]
pub struct AuthPolicy {
    auth: Option<Arc<Authenticator>>,
    audit: Option<Arc<AuditLog>>,
}

/// The public API's authentication layer.
pub type AuthLayer = crate::layer::Guard<AuthPolicy>;

impl AuthPolicy {
    /// `auth: None`: everything is allowed (authentication off).
    pub fn layer(auth: Option<Arc<Authenticator>>, audit: Option<Arc<AuditLog>>) -> AuthLayer {
        crate::layer::Guard(AuthPolicy { auth, audit })
    }
}

impl crate::layer::Policy for AuthPolicy {
    fn admit<B>(&self, req: &mut http::Request<B>) -> Result<(), Status> {
        let path = req.uri().path().to_string();
        let decided = match &self.auth {
            None => Ok((Access::anonymous(), need_of(&path).unwrap_or(Need::Read))),
            Some(auth) => match need_of(&path) {
                None => Err((AuthError::Denied(format!("unknown method {path}")), "-".to_string())),
                Some(Need::None) => Ok((Access::anonymous(), Need::None)),
                Some(need) => match auth.authenticate(req.headers()) {
                    Err(e) => Err((e, "-".to_string())),
                    Ok(a) => match a.check(need, None) {
                        Ok(()) => Ok((a, need)),
                        Err(e) => Err((e, a.who)),
                    },
                },
            },
        };
        match decided {
            Ok((access, need)) => {
                req.extensions_mut().insert(access);
                req.extensions_mut().insert(need);
                req.extensions_mut().insert(MethodPath(path));
                if let Some(a) = &self.audit {
                    req.extensions_mut().insert(a.clone());
                }
                Ok(())
            }
            Err((e, who)) => {
                let status = Status::from(e.clone());
                if let Some(a) = &self.audit {
                    let from = crate::tls::peer(req.extensions()).and_then(|p| p.remote_addr);
                    a.record(&AuditEvent::new(&who, from, &path, None, crate::audit::code_name(status.code()), &e.to_string()));
                }
                Err(status)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn headers(v: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    fn jwt(secret: &[u8], claims: serde_json::Value) -> String {
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &jsonwebtoken::EncodingKey::from_secret(secret)).unwrap()
    }

    fn now() -> u64 {
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
    }

    /// Keys resolve to their role, tokens to their claims; what each may do
    /// follows the table; expired, badly signed and unknown credentials
    /// are refused.
    #[test]
    fn credentials_resolve_to_roles_and_scopes() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        std::fs::write(&keys, "# keys\nread-only ro-key-0123456789abcdef reader\nread-write rw-key-0123456789abcdef\nadmin admin-key-0123456789abcdef ops\n").unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s".repeat(40) + "\n").unwrap();
        let a = Authenticator::load(AuthConfig { api_keys_file: Some(keys.clone()), jwt_secret_file: Some(secret), ..Default::default() }).unwrap();

        let ro = a.authenticate(&headers("Bearer ro-key-0123456789abcdef")).unwrap();
        assert_eq!((ro.role, ro.who.as_str()), (Role::ReadOnly, "api-key:reader"));
        assert!(ro.check(Need::Read, Some("a")).is_ok());
        assert!(matches!(ro.check(Need::Write, Some("a")), Err(AuthError::Denied(_))));
        let rw = a.authenticate(&headers("rw-key-0123456789abcdef")).unwrap();
        assert!(rw.check(Need::Write, Some("a")).is_ok());
        assert!(rw.check(Need::Manage, None).is_err());
        let admin = a.authenticate(&headers("Bearer admin-key-0123456789abcdef")).unwrap();
        assert!(admin.check(Need::Manage, None).is_ok() && admin.check(Need::Cluster, None).is_ok());
        assert!(matches!(a.authenticate(&headers("Bearer nope-0123456789abcdef")), Err(AuthError::Unauthenticated(_))));
        assert!(matches!(a.authenticate(&http::HeaderMap::new()), Err(AuthError::Unauthenticated(_))));

        let s = "s".repeat(40);
        let t = jwt(s.as_bytes(), serde_json::json!({"sub": "app", "exp": now() + 60, "role": "read-write", "collections": ["a"]}));
        let acc = a.authenticate(&headers(&format!("Bearer {t}"))).unwrap();
        assert_eq!(acc.who, "jwt:app");
        assert!(acc.check(Need::Write, Some("a")).is_ok());
        assert!(matches!(acc.check(Need::Read, Some("b")), Err(AuthError::Denied(_))));
        assert!(acc.check(Need::Manage, None).is_err(), "a scoped token manages nothing");
        let expired = jwt(s.as_bytes(), serde_json::json!({"exp": now() - 60, "role": "admin"}));
        assert!(matches!(a.authenticate(&headers(&format!("Bearer {expired}"))), Err(AuthError::Unauthenticated(m)) if m.contains("Expired")));
        let forged = jwt(&[b'x'; 40], serde_json::json!({"exp": now() + 60, "role": "admin"}));
        assert!(matches!(a.authenticate(&headers(&format!("Bearer {forged}"))), Err(AuthError::Unauthenticated(m)) if m.contains("InvalidSignature")));
        let no_exp = jwt(s.as_bytes(), serde_json::json!({"role": "admin"}));
        assert!(a.authenticate(&headers(&format!("Bearer {no_exp}"))).is_err());

        // Rotation: a new key works once the file changes, the old one not.
        std::fs::write(&keys, "admin admin-key-NEW-0123456789abcdef\n").unwrap();
        // The stamp includes the length, so the change is seen at once.
        assert!(crate::reload::Reloadable::reload_if_changed(&*a).unwrap());
        assert!(a.authenticate(&headers("Bearer admin-key-NEW-0123456789abcdef")).is_ok());
        assert!(a.authenticate(&headers("Bearer admin-key-0123456789abcdef")).is_err());
    }

    /// RS256: a token signed with the private key passes with the public
    /// key configured; HS256 tokens are then refused (no secret), and an
    /// RS256 token signed by another key is refused.
    #[test]
    fn rs256_tokens_verify_against_the_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let pub_key = dir.path().join("jwt.pub");
        // A throwaway key pair for this test only (common/testdata).
        std::fs::write(&pub_key, include_str!("../testdata/jwt-rs256-test.pub")).unwrap();
        let a = Authenticator::load(AuthConfig { jwt_public_key_file: Some(pub_key.clone()), ..Default::default() }).unwrap();
        let sign = |claims: serde_json::Value| jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), &claims, &jsonwebtoken::EncodingKey::from_rsa_pem(include_bytes!("../testdata/jwt-rs256-test.key")).unwrap()).unwrap();
        let t = sign(serde_json::json!({"sub": "svc", "exp": now() + 60, "role": "read-only", "collections": ["docs"]}));
        let acc = a.authenticate(&headers(&format!("Bearer {t}"))).unwrap();
        assert_eq!((acc.who.as_str(), acc.role), ("jwt:svc", Role::ReadOnly));
        assert!(acc.check(Need::Read, Some("docs")).is_ok() && acc.check(Need::Read, Some("other")).is_err());
        let hs = jwt(&[b's'; 40], serde_json::json!({"exp": now() + 60, "role": "admin"}));
        assert!(matches!(a.authenticate(&headers(&format!("Bearer {hs}"))), Err(AuthError::Unauthenticated(m)) if m.contains("HS256")));
        // One character in the middle of the signature changed.
        let mut tampered: Vec<char> = t.chars().collect();
        let i = t.len() - 100;
        tampered[i] = if tampered[i] == 'A' { 'B' } else { 'A' };
        let tampered: String = tampered.into_iter().collect();
        assert!(a.authenticate(&headers(&format!("Bearer {tampered}"))).is_err());

        // With an issuer and audience configured, tokens must name both.
        let strict = Authenticator::load(AuthConfig { jwt_public_key_file: Some(pub_key), jwt_issuer: Some("https://idp.example".into()), jwt_audience: Some("shoal".into()), ..Default::default() }).unwrap();
        assert!(strict.authenticate(&headers(&format!("Bearer {t}"))).is_err(), "no iss/aud");
        let good = sign(serde_json::json!({"exp": now() + 60, "role": "read-only", "iss": "https://idp.example", "aud": "shoal"}));
        assert!(strict.authenticate(&headers(&format!("Bearer {good}"))).is_ok());
        let other = sign(serde_json::json!({"exp": now() + 60, "role": "admin", "iss": "https://idp.example", "aud": "billing"}));
        assert!(strict.authenticate(&headers(&format!("Bearer {other}"))).is_err(), "another service's audience");
    }

    #[test]
    fn bad_key_files_are_refused_with_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        for (text, needle) in [("owner abcdefghijklmnopqrstuvwxyz\n", ":1: unknown role"), ("admin short\n", "at least 16"), ("\n\nadmin\n", ":3: no key")] {
            std::fs::write(&keys, text).unwrap();
            let e = Authenticator::load(AuthConfig { api_keys_file: Some(keys.clone()), ..Default::default() }).expect_err(text);
            assert!(e.to_string().contains(needle), "{e}");
        }
    }

    #[test]
    fn every_public_method_is_in_the_table() {
        for path in shoal_proto::method_paths() {
            if path.starts_with("/shoal.v1.") {
                assert!(need_of(path).is_some(), "{path} has no entry in METHODS");
            }
        }
    }
}
