//! Authentication of push requests, as Google's push does it: a subscription whose push
//! config names a service account (`oidc_token`) gets `Authorization: Bearer <JWT>` on every
//! push, an OpenID Connect style ID token signed by the gateway (ES256), with `aud` (the
//! configured audience, or the endpoint URL), `email`, `email_verified`, `sub`, `iss`, `iat`
//! and `exp` (one hour). The endpoint verifies it against the gateway's keys, published as a
//! JWKS at `/.well-known/jwks.json` (and `/oauth2/v3/certs`, Google's path), with
//! `/.well-known/openid-configuration` naming issuer and keys.
//!
//! Every gateway must sign with the same key for any of them to verify everywhere: give all
//! of them the same `--push-signing-key` file (PKCS#8, PEM or DER; written on first use if
//! missing). Without one a gateway signs with a key of its own, made at start.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

/// How long a token is valid.
pub const TOKEN_LIFETIME_SECONDS: u64 = 3600;
/// A cached token is replaced this long before it expires.
const TOKEN_REFRESH_MARGIN_SECONDS: u64 = 600;

pub struct PushSigner {
    key: EcdsaKeyPair,
    kid: String,
    issuer: String,
    rng: SystemRandom,
    /// (service account, audience) → (expiry, token)
    cache: Mutex<HashMap<(String, String), (u64, String)>>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("signing key: {0}")]
    Key(String),
}

fn pem_to_der(text: &str) -> Option<Vec<u8>> {
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN PRIVATE KEY-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    STANDARD.decode(body.trim()).ok()
}

fn pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

impl PushSigner {
    /// A signer with the key in `path` (made and written there if the file does not exist),
    /// or with a fresh key of its own.
    pub fn new(path: Option<&Path>, issuer: String) -> Result<PushSigner, KeyError> {
        let rng = SystemRandom::new();
        let file_error = |p: &Path, message: String| KeyError::File {
            path: p.display().to_string(),
            message,
        };
        let der = match path {
            Some(p) if p.exists() => {
                let bytes = std::fs::read(p).map_err(|e| file_error(p, e.to_string()))?;
                match std::str::from_utf8(&bytes) {
                    Ok(text) if text.contains("-----BEGIN") => {
                        pem_to_der(text).ok_or_else(|| {
                            file_error(p, "no PKCS#8 \"PRIVATE KEY\" block in the PEM".into())
                        })?
                    }
                    _ => bytes,
                }
            }
            other => {
                let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|e| KeyError::Key(e.to_string()))?;
                if let Some(p) = other {
                    write_private(p, pem(doc.as_ref()).as_bytes())
                        .map_err(|e| file_error(p, e.to_string()))?;
                    tracing::info!(path = %p.display(), "push signing key written");
                }
                doc.as_ref().to_vec()
            }
        };
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
            .map_err(|e| KeyError::Key(format!("not a P-256 PKCS#8 key: {e}")))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref());
        let kid = URL_SAFE_NO_PAD.encode(&digest.as_ref()[..12]);
        Ok(PushSigner {
            key,
            kid,
            issuer,
            rng,
            cache: Mutex::new(HashMap::new()),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// A token for `email` and `audience`, valid for an hour from `now` (seconds since the
    /// epoch); reused until ten minutes before it expires.
    pub fn token(&self, email: &str, audience: &str, now: u64) -> Result<String, KeyError> {
        let key = (email.to_string(), audience.to_string());
        if let Some((exp, token)) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            && now + TOKEN_REFRESH_MARGIN_SECONDS < *exp
        {
            return Ok(token.clone());
        }
        let exp = now + TOKEN_LIFETIME_SECONDS;
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let claims = serde_json::json!({
            "iss": self.issuer,
            "aud": audience,
            "azp": email,
            "sub": email,
            "email": email,
            "email_verified": true,
            "iat": now,
            "exp": exp,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|e| KeyError::Key(e.to_string()))?;
        let token = format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        );
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(key, (exp, token.clone()));
        Ok(token)
    }

    /// The public key as a JSON Web Key Set.
    pub fn jwks(&self) -> serde_json::Value {
        // an uncompressed point: 0x04 ‖ x ‖ y
        let point = self.key.public_key().as_ref();
        let (x, y) = point[1..].split_at(32);
        serde_json::json!({"keys": [{
            "kty": "EC",
            "crv": "P-256",
            "alg": "ES256",
            "use": "sig",
            "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(x),
            "y": URL_SAFE_NO_PAD.encode(y),
        }]})
    }

    /// `/.well-known/openid-configuration`.
    pub fn openid_configuration(&self) -> serde_json::Value {
        let base = self.issuer.trim_end_matches('/');
        serde_json::json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{base}/.well-known/jwks.json"),
            "id_token_signing_alg_values_supported": ["ES256"],
            "subject_types_supported": ["public"],
            "response_types_supported": ["id_token"],
            "claims_supported": ["aud", "email", "email_verified", "exp", "iat", "iss", "sub"],
        })
    }
}

/// Writes a file only its owner may read.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn json(v: serde_json::Value) -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
}

/// The gateway's key routes.
pub fn router(signer: std::sync::Arc<PushSigner>) -> axum::Router {
    use axum::routing::get;
    let jwks = {
        let s = std::sync::Arc::clone(&signer);
        move || {
            let body = s.jwks();
            async move { json(body) }
        }
    };
    let config = {
        let s = std::sync::Arc::clone(&signer);
        move || {
            let body = s.openid_configuration();
            async move { json(body) }
        }
    };
    axum::Router::new()
        .route("/.well-known/jwks.json", get(jwks.clone()))
        .route("/oauth2/v3/certs", get(jwks))
        .route("/.well-known/openid-configuration", get(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};

    fn claims(token: &str) -> serde_json::Value {
        let payload = token.split('.').nth(1).expect("three parts");
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("json")
    }

    #[test]
    fn tokens_verify_against_the_published_key_and_the_key_file_is_shared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("push.key");
        let a = PushSigner::new(Some(&path), "http://gw".into()).expect("made");
        let b = PushSigner::new(Some(&path), "http://gw".into()).expect("read back");
        assert_eq!(
            a.jwks(),
            b.jwks(),
            "one key for every gateway given the file"
        );
        let token = b.token("sa@p.iam", "https://svc", 1_000).expect("token");
        let c = claims(&token);
        assert_eq!(c["aud"], "https://svc");
        assert_eq!(c["email"], "sa@p.iam");
        assert_eq!(c["exp"], 1_000 + TOKEN_LIFETIME_SECONDS);
        // the signature checks out with the JWKS's x and y
        let jwk = &a.jwks()["keys"][0];
        let mut point = vec![4u8];
        for c in ["x", "y"] {
            point.extend(
                URL_SAFE_NO_PAD
                    .decode(jwk[c].as_str().expect("coordinate"))
                    .expect("b64"),
            );
        }
        let (input, sig) = token.rsplit_once('.').expect("signature");
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
            .verify(input.as_bytes(), &URL_SAFE_NO_PAD.decode(sig).expect("b64"))
            .expect("valid signature");
        // cached while fresh, renewed near expiry
        assert_eq!(b.token("sa@p.iam", "https://svc", 1_100).expect("t"), token);
        assert_ne!(
            b.token(
                "sa@p.iam",
                "https://svc",
                1_000 + TOKEN_LIFETIME_SECONDS - 60
            )
            .expect("t"),
            token
        );
        // a file that is not a key is refused, naming it
        let bad = dir.path().join("bad.key");
        std::fs::write(
            &bad,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .expect("write");
        let e = PushSigner::new(Some(&bad), "x".into())
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("P-256"), "{e}");
    }
}
