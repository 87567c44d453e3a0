//! Who is calling, and whether they may: authentication of every request on a listener
//! (client certificates, static bearer tokens, JWTs checked against a JWKS file) and the
//! authorization check every RPC makes against the cluster's ACLs.
//!
//! A listener with authentication on puts the caller's [`Principal`] into each request's
//! extensions before any handler runs, or answers UNAUTHENTICATED. Handlers then call
//! [`Security::authorize`] with the operation and resource the request touches; without a
//! grant it answers PERMISSION_DENIED.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tonic::{Request, Status};
use weir_types::acl::{self, Acl, Decision, Operation, ResourceType};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    /// A broker or controller of this cluster (its certificate says so): allowed everything.
    pub internal: bool,
    /// Where the identity came from, for messages.
    pub source: &'static str,
}

/// Security settings of one process: how callers authenticate, and whether ACLs apply.
#[derive(Debug, Clone, Default)]
pub struct SecurityConfig {
    /// `principal token` lines (`#` comments); read again when the file changes.
    pub token_file: Option<PathBuf>,
    /// A JSON Web Key Set (`{"keys": [...]}`, ES256 and RS256 keys) that signs accepted JWTs.
    pub jwks_file: Option<PathBuf>,
    /// JWTs must carry this `iss` (when set).
    pub jwt_issuer: Option<String>,
    /// JWTs must carry this `aud` (when set).
    pub jwt_audience: Option<String>,
    /// Client certificates are accepted as credentials (the TLS listener checks them
    /// against its CA).
    pub client_certs: bool,
    /// Check ACLs on every RPC (needs some way to authenticate).
    pub authorization: bool,
    /// Principals allowed everything.
    pub super_users: Vec<String>,
}

impl SecurityConfig {
    /// Whether callers must prove who they are.
    pub fn authentication(&self) -> bool {
        self.token_file.is_some() || self.jwks_file.is_some() || self.client_certs
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.authorization && !self.authentication() {
            return Err(
                "authorization needs a way to authenticate callers: a token file, a JWKS file or client certificates (a TLS CA)"
                    .into(),
            );
        }
        if (self.jwt_issuer.is_some() || self.jwt_audience.is_some()) && self.jwks_file.is_none() {
            return Err("a JWT issuer or audience needs a JWKS file".into());
        }
        Ok(())
    }
}

/// The process's security: shared by its listeners and handlers.
#[derive(Debug, Default)]
pub struct Security {
    config: SecurityConfig,
    tokens: Option<Reloading<Tokens>>,
    jwks: Option<Reloading<Jwks>>,
    super_users: BTreeSet<String>,
}

impl Security {
    /// Everything open (no authentication, no ACLs).
    pub fn open() -> Arc<Security> {
        Arc::new(Security::default())
    }

    /// Loads the files once, so a bad one is an error at start.
    pub fn new(config: SecurityConfig) -> Result<Arc<Security>, String> {
        config.validate()?;
        let tokens = config
            .token_file
            .clone()
            .map(|p| Reloading::new(p, "token file", Tokens::parse))
            .transpose()?;
        let jwks = config
            .jwks_file
            .clone()
            .map(|p| Reloading::new(p, "JWKS file", Jwks::parse))
            .transpose()?;
        Ok(Arc::new(Security {
            super_users: config.super_users.iter().cloned().collect(),
            config,
            tokens,
            jwks,
        }))
    }

    pub fn config(&self) -> &SecurityConfig {
        &self.config
    }

    pub fn authentication(&self) -> bool {
        self.config.authentication()
    }

    pub fn authorization(&self) -> bool {
        self.config.authorization
    }

    /// Who sent `request`: `Ok(None)` when authentication is off.
    pub fn authenticate<T>(&self, request: &Request<T>) -> Result<Option<Principal>, Status> {
        if !self.authentication() {
            return Ok(None);
        }
        if let Some(value) = request.metadata().get("authorization") {
            let value = value
                .to_str()
                .map_err(|_| Status::unauthenticated("authorization: not ASCII"))?;
            let token = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
                .ok_or_else(|| {
                    Status::unauthenticated("authorization: expected \"Bearer <token>\"")
                })?
                .trim();
            return self.token_principal(token).map(Some);
        }
        if self.config.client_certs
            && let Some(identity) = crate::tls::peer_identity(request)?
        {
            return Ok(Some(Principal {
                internal: identity.is_member(),
                name: identity.principal,
                source: "client certificate",
            }));
        }
        Err(Status::unauthenticated(
            "credentials required: a bearer token or a client certificate",
        ))
    }

    fn token_principal(&self, token: &str) -> Result<Principal, Status> {
        let looks_like_jwt = token.split('.').count() == 3;
        if looks_like_jwt && let Some(jwks) = &self.jwks {
            let keys = jwks.get();
            let sub = verify_jwt(
                token,
                &keys,
                self.config.jwt_issuer.as_deref(),
                self.config.jwt_audience.as_deref(),
                now_s(),
            )
            .map_err(|e| Status::unauthenticated(format!("token refused: {e}")))?;
            return Ok(Principal {
                name: sub,
                internal: false,
                source: "JWT",
            });
        }
        if let Some(tokens) = &self.tokens
            && let Some(name) = tokens.get().lookup(token)
        {
            return Ok(Principal {
                name,
                internal: false,
                source: "token",
            });
        }
        Err(Status::unauthenticated("token refused: not a known token"))
    }

    /// The principal a request was authenticated as (after the listener's interceptor).
    pub fn principal<T>(request: &Request<T>) -> Option<&Principal> {
        request.extensions().get::<Principal>()
    }

    /// Whether the caller may do `operation` on `kind`/`name`, by `acls`: PERMISSION_DENIED
    /// naming what was refused, or UNAUTHENTICATED when no principal came with the request.
    pub fn authorize<'a, T>(
        &self,
        request: &Request<T>,
        acls: impl IntoIterator<Item = &'a Acl>,
        operation: Operation,
        kind: ResourceType,
        name: &str,
    ) -> Result<(), Status> {
        self.authorize_principal(Security::principal(request), acls, operation, kind, name)
    }

    /// [`Security::authorize`] for a principal taken from a request earlier.
    pub fn authorize_principal<'a>(
        &self,
        principal: Option<&Principal>,
        acls: impl IntoIterator<Item = &'a Acl>,
        operation: Operation,
        kind: ResourceType,
        name: &str,
    ) -> Result<(), Status> {
        if !self.authorization() {
            return Ok(());
        }
        let Some(principal) = principal else {
            return Err(Status::unauthenticated("credentials required"));
        };
        if principal.internal || self.super_users.contains(&principal.name) {
            return Ok(());
        }
        match acl::authorize(acls, &principal.name, operation, kind, name) {
            Decision::Allowed => Ok(()),
            Decision::Denied(by) => Err(Status::permission_denied(format!(
                "{} may not {} {} {name:?}{}",
                principal.name,
                operation.name(),
                kind.name(),
                by.map(|a| format!(" (denied by: {a})")).unwrap_or_default()
            ))),
        }
    }

    /// Whether some ACL allows the caller `operation` on some resource of `kind` (for
    /// requests that name none, as a producer asking for an id before it writes anywhere).
    pub fn authorize_any<'a, T>(
        &self,
        request: &Request<T>,
        acls: impl IntoIterator<Item = &'a Acl>,
        operation: Operation,
        kind: ResourceType,
    ) -> Result<(), Status> {
        if !self.authorization() {
            return Ok(());
        }
        let Some(principal) = Security::principal(request) else {
            return Err(Status::unauthenticated("credentials required"));
        };
        if principal.internal || self.super_users.contains(&principal.name) {
            return Ok(());
        }
        let granted = acls.into_iter().any(|a| {
            a.permission == acl::Permission::Allow
                && a.resource_type == kind
                && (a.principal == "*" || a.principal == principal.name)
                && (a.operation == operation || a.operation == Operation::All)
        });
        if granted {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "{} may not {} any {}",
                principal.name,
                operation.name(),
                kind.name()
            )))
        }
    }

    /// Whether the caller is this cluster's broker `id` (any broker or controller when
    /// `None`) by its client certificate, for the internal RPCs; any caller passes on a
    /// listener without TLS.
    pub fn require_broker<T>(request: &Request<T>, id: Option<u32>) -> Result<(), Status> {
        if !crate::tls::is_tls(request) {
            return Ok(());
        }
        let Some(identity) = crate::tls::peer_identity(request)? else {
            return Err(Status::unauthenticated(
                "a broker's client certificate is required",
            ));
        };
        let allowed = match id {
            Some(id) => identity.brokers.contains(&id),
            None => identity.is_member(),
        };
        if allowed {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "broker_id: the client certificate of {} does not name {}",
                identity.principal,
                id.map_or("a broker".to_string(), crate::tls::broker_name)
            )))
        }
    }

    /// Whether the caller is a controller of this cluster by its client certificate (Raft);
    /// any caller passes on a listener without TLS.
    pub fn require_controller<T>(request: &Request<T>) -> Result<(), Status> {
        if !crate::tls::is_tls(request) {
            return Ok(());
        }
        match crate::tls::peer_identity(request)? {
            Some(identity) if !identity.controllers.is_empty() => Ok(()),
            Some(identity) => Err(Status::permission_denied(format!(
                "only controllers take part in Raft, not {}",
                identity.principal
            ))),
            None => Err(Status::unauthenticated(
                "a controller's client certificate is required",
            )),
        }
    }
}

/// What a node's listeners need: TLS (when on) and the process's [`Security`].
#[derive(Debug, Clone, Default)]
pub struct ListenerSecurity {
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    pub security: Arc<Security>,
}

impl ListenerSecurity {
    /// The interceptor every service on these listeners is wrapped in.
    pub fn interceptor(&self) -> Authenticate {
        Authenticate(Arc::clone(&self.security))
    }
}

impl PartialEq for ListenerSecurity {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.security, &other.security)
            && match (&self.tls, &other.tls) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

impl Eq for ListenerSecurity {}

/// A tonic interceptor that authenticates every request before its handler sees it.
#[derive(Debug, Clone)]
pub struct Authenticate(pub Arc<Security>);

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(principal) = self.0.authenticate(&request)? {
            request.extensions_mut().insert(principal);
        }
        Ok(request)
    }
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A file parsed again when it changes (checked at most once a second); a change that does
/// not parse keeps the previous contents.
#[derive(Debug)]
struct Reloading<T> {
    path: PathBuf,
    what: &'static str,
    parse: fn(&[u8]) -> Result<T, String>,
    state: Mutex<Loaded<T>>,
}

#[derive(Debug)]
struct Loaded<T> {
    stamp: crate::tls::Stamp,
    checked: Instant,
    value: Arc<T>,
}

impl<T> Reloading<T> {
    fn new(
        path: PathBuf,
        what: &'static str,
        parse: fn(&[u8]) -> Result<T, String>,
    ) -> Result<Reloading<T>, String> {
        let stamp = crate::tls::stamp(&path);
        let bytes = std::fs::read(&path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
        let value = parse(&bytes).map_err(|e| format!("{what} {}: {e}", path.display()))?;
        Ok(Reloading {
            path,
            what,
            parse,
            state: Mutex::new(Loaded {
                stamp,
                checked: Instant::now(),
                value: Arc::new(value),
            }),
        })
    }

    fn get(&self) -> Arc<T> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.checked.elapsed() >= crate::tls::RELOAD_CHECK {
            state.checked = Instant::now();
            let now = crate::tls::stamp(&self.path);
            if now != state.stamp {
                match std::fs::read(&self.path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| (self.parse)(&b))
                {
                    Ok(value) => {
                        tracing::info!(file = %self.path.display(), "{} changed: reloaded", self.what);
                        state.stamp = now;
                        state.value = Arc::new(value);
                    }
                    Err(e) => tracing::warn!(
                        file = %self.path.display(), error = %e,
                        "{} changed but does not load; keeping the previous one", self.what
                    ),
                }
            }
        }
        Arc::clone(&state.value)
    }
}

/// Static bearer tokens: token → principal.
#[derive(Debug, Default)]
struct Tokens(HashMap<Vec<u8>, String>);

impl Tokens {
    fn parse(bytes: &[u8]) -> Result<Tokens, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
        let mut tokens = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(principal), Some(token), None) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(format!("line {}: expected \"<principal> <token>\"", i + 1));
            };
            if token.len() < 16 {
                return Err(format!(
                    "line {}: a token must be at least 16 characters",
                    i + 1
                ));
            }
            tokens.insert(token.as_bytes().to_vec(), principal.to_string());
        }
        Ok(Tokens(tokens))
    }

    /// Compares against every token in constant time per token, so timing says nothing of
    /// how much of a guess was right.
    fn lookup(&self, token: &str) -> Option<String> {
        let mut found = None;
        for (known, principal) in &self.0 {
            if constant_time_eq(known, token.as_bytes()) {
                found = Some(principal.clone());
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Verification keys by key id.
#[derive(Debug, Default)]
pub struct Jwks(Vec<Jwk>);

#[derive(Debug)]
struct Jwk {
    kid: Option<String>,
    key: VerifyKey,
}

#[derive(Debug)]
enum VerifyKey {
    /// Uncompressed P-256 point.
    Es256(Vec<u8>),
    Rs256 {
        n: Vec<u8>,
        e: Vec<u8>,
    },
}

#[derive(serde::Deserialize)]
struct JwksJson {
    keys: Vec<JwkJson>,
}

#[derive(serde::Deserialize)]
struct JwkJson {
    kty: String,
    kid: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

fn b64(field: &str, value: Option<&String>) -> Result<Vec<u8>, String> {
    let value = value.ok_or_else(|| format!("{field} is missing"))?;
    URL_SAFE_NO_PAD
        .decode(value.trim_end_matches('='))
        .map_err(|e| format!("{field}: not base64url ({e})"))
}

impl Jwks {
    pub fn parse(bytes: &[u8]) -> Result<Jwks, String> {
        let set: JwksJson =
            serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS ({e})"))?;
        let mut keys = Vec::new();
        for (i, k) in set.keys.into_iter().enumerate() {
            let key = match (k.kty.as_str(), k.crv.as_deref()) {
                ("EC", Some("P-256")) => {
                    let mut point = vec![4u8];
                    let x = b64(&format!("keys[{i}].x"), k.x.as_ref())?;
                    let y = b64(&format!("keys[{i}].y"), k.y.as_ref())?;
                    if x.len() != 32 || y.len() != 32 {
                        return Err(format!("keys[{i}]: P-256 coordinates are 32 bytes"));
                    }
                    point.extend(x);
                    point.extend(y);
                    VerifyKey::Es256(point)
                }
                ("RSA", _) => VerifyKey::Rs256 {
                    n: b64(&format!("keys[{i}].n"), k.n.as_ref())?,
                    e: b64(&format!("keys[{i}].e"), k.e.as_ref())?,
                },
                (kty, crv) => {
                    tracing::warn!(
                        kty,
                        ?crv,
                        "JWKS: key {i} is of a kind not supported; skipped"
                    );
                    continue;
                }
            };
            keys.push(Jwk { kid: k.kid, key });
        }
        if keys.is_empty() {
            return Err("no usable key (EC P-256 or RSA)".into());
        }
        Ok(Jwks(keys))
    }
}

#[derive(serde::Deserialize)]
struct JwtHeader {
    alg: String,
    kid: Option<String>,
}

#[derive(serde::Deserialize)]
struct JwtClaims {
    sub: Option<String>,
    iss: Option<String>,
    #[serde(default)]
    aud: Option<serde_json::Value>,
    exp: Option<i64>,
    nbf: Option<i64>,
}

/// Clock skew a JWT's times are allowed.
const LEEWAY_S: i64 = 60;

/// Checks a JWT's signature against `keys` and its claims; returns its subject.
pub fn verify_jwt(
    token: &str,
    keys: &Jwks,
    issuer: Option<&str>,
    audience: Option<&str>,
    now: i64,
) -> Result<String, String> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a JWT".into());
    };
    let header: JwtHeader = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(h)
            .map_err(|_| "header is not base64url")?,
    )
    .map_err(|_| "header is not JSON")?;
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| "signature is not base64url")?;
    let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
    let candidates = keys.0.iter().filter(|k| match (&header.kid, &k.kid) {
        (Some(want), Some(have)) => want == have,
        _ => true,
    });
    let mut verified = false;
    for k in candidates {
        let ok = match (&k.key, header.alg.as_str()) {
            (VerifyKey::Es256(point), "ES256") => ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_FIXED,
                point,
            )
            .verify(signed, &signature)
            .is_ok(),
            (VerifyKey::Rs256 { n, e }, "RS256") => {
                ring::signature::RsaPublicKeyComponents { n, e }
                    .verify(
                        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                        signed,
                        &signature,
                    )
                    .is_ok()
            }
            _ => false,
        };
        if ok {
            verified = true;
            break;
        }
    }
    if !verified {
        return Err(format!(
            "the signature does not verify with any {} key of the JWKS",
            header.alg
        ));
    }
    let claims: JwtClaims = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(p)
            .map_err(|_| "claims are not base64url")?,
    )
    .map_err(|_| "claims are not JSON")?;
    let exp = claims.exp.ok_or("exp is missing")?;
    if now > exp + LEEWAY_S {
        return Err(format!("expired {} s ago", now - exp));
    }
    if let Some(nbf) = claims.nbf
        && now + LEEWAY_S < nbf
    {
        return Err("not valid yet (nbf)".into());
    }
    if let Some(want) = issuer
        && claims.iss.as_deref() != Some(want)
    {
        return Err(format!("iss is {:?}, not {want:?}", claims.iss));
    }
    if let Some(want) = audience {
        let matches = match &claims.aud {
            Some(serde_json::Value::String(a)) => a == want,
            Some(serde_json::Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(want)),
            _ => false,
        };
        if !matches {
            return Err(format!("aud does not include {want:?}"));
        }
    }
    match claims.sub {
        Some(sub) if !sub.is_empty() => Ok(sub),
        _ => Err("sub is missing".into()),
    }
}

/// Credentials a client sends: a bearer token on every request, when it has one.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Credentials {
    pub fn bearer(token: &str) -> Result<Credentials, String> {
        let value = format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| "the token is not a valid header value".to_string())?;
        Ok(Credentials {
            authorization: Some(value),
        })
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_parse_and_refuse_short_tokens() {
        let t = Tokens::parse(b"# users\nalice 0123456789abcdef0123\n\nbob fedcba9876543210fedc\n")
            .expect("parses");
        assert_eq!(t.lookup("0123456789abcdef0123").as_deref(), Some("alice"));
        assert_eq!(t.lookup("0123456789abcdef0124"), None);
        assert!(
            Tokens::parse(b"alice short\n")
                .expect_err("refused")
                .contains("line 1")
        );
        assert!(
            Tokens::parse(b"alice\n")
                .expect_err("refused")
                .contains("expected")
        );
    }

    fn es256_jwt(claims: serde_json::Value, kid: &str) -> (String, Jwks) {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("pair");
        let point = pair.public_key().as_ref();
        let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])}]});
        let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"ES256","kid":"{kid}"}}"#));
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signed = format!("{header}.{body}");
        let sig = pair.sign(&rng, signed.as_bytes()).expect("sign");
        (
            format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())),
            Jwks::parse(jwks.to_string().as_bytes()).expect("jwks"),
        )
    }

    #[test]
    fn rs256_jwts_verify_with_the_modulus_and_exponent_of_a_jwk() {
        use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
        // a 2048-bit key made for this test only
        let pair = RsaKeyPair::from_pkcs8(include_bytes!("testdata/rsa2048-test-only.pk8"))
            .expect("test key");
        let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
        let jwks = serde_json::json!({"keys": [{"kty": "RSA", "kid": "r1",
            "n": URL_SAFE_NO_PAD.encode(&public.n), "e": URL_SAFE_NO_PAD.encode(&public.e)}]});
        let jwks = Jwks::parse(jwks.to_string().as_bytes()).expect("jwks");
        let now = 1_800_000_000;
        let sign = |claims: serde_json::Value| {
            let signed = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":"r1"}"#),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            );
            let mut sig = vec![0; pair.public().modulus_len()];
            pair.sign(
                &RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                signed.as_bytes(),
                &mut sig,
            )
            .expect("sign");
            format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
        };
        let token = sign(serde_json::json!({"sub": "svc", "exp": now + 60}));
        assert_eq!(verify_jwt(&token, &jwks, None, None, now), Ok("svc".into()));
        // the same signature presented as ES256 does not verify with an RSA key
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        parts[0] = URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","kid":"r1"}"#);
        assert!(verify_jwt(&parts.join("."), &jwks, None, None, now).is_err());
        let expired = sign(serde_json::json!({"sub": "svc", "exp": now - 600}));
        assert!(
            verify_jwt(&expired, &jwks, None, None, now)
                .expect_err("refused")
                .contains("expired")
        );
    }

    #[test]
    fn jwts_are_checked_for_signature_expiry_issuer_and_audience() {
        let now = 1_800_000_000;
        let claims = serde_json::json!({"sub": "alice", "iss": "https://idp", "aud": ["weir"], "exp": now + 300});
        let (token, jwks) = es256_jwt(claims.clone(), "k1");
        assert_eq!(
            verify_jwt(&token, &jwks, Some("https://idp"), Some("weir"), now),
            Ok("alice".into())
        );
        assert!(
            verify_jwt(&token, &jwks, Some("https://other"), None, now)
                .expect_err("refused")
                .contains("iss")
        );
        assert!(
            verify_jwt(&token, &jwks, None, Some("x"), now)
                .expect_err("refused")
                .contains("aud")
        );
        assert!(
            verify_jwt(&token, &jwks, None, None, now + 400)
                .expect_err("refused")
                .contains("expired")
        );
        // signed by another key
        let (_, other_keys) = es256_jwt(claims, "k1");
        assert!(
            verify_jwt(&token, &other_keys, None, None, now)
                .expect_err("refused")
                .contains("signature")
        );
        // a changed claim breaks the signature
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(r#"{"sub":"root","exp":9999999999}"#);
        parts[1] = &forged;
        assert!(
            verify_jwt(&parts.join("."), &jwks, None, None, now)
                .expect_err("refused")
                .contains("signature")
        );
        // alg none is not a thing
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            parts[1]
        );
        assert!(verify_jwt(&none, &jwks, None, None, now).is_err());
    }
}
