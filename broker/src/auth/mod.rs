//! Authentication: JWTs presented in the hello frame, verified against the
//! configured keys (HS256 secrets, RS256/ES256 public keys in PEM, a JWKS
//! file; several at once, chosen by the token's `kid`). The subject becomes
//! the origin of what the connection publishes, and the token's `rights`
//! claim limits what it may publish and read ([`rights`]).
//!
//! Without keys the broker accepts anonymous clients (publishing as the
//! node) unless `--require-auth`; with keys, every client needs a token.

pub mod rights;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::JwkSet;
use std::str::FromStr;

use jsonwebtoken::{decode, decode_header, Algorithm, AlgorithmFamily, DecodingKey, Validation};
use rights::{Rights, RightsClaim};

/// Clock skew tolerated on `exp` (and `nbf`).
pub const LEEWAY: Duration = Duration::from_secs(30);

/// Why the authentication settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// A key file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A key is not valid.
    #[error("{what}: {reason}")]
    Key {
        /// Which key.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// Anonymous clients refused but no key configured.
    #[error(
        "--require-auth needs at least one key (--jwt-secret, --jwt-public-key or --jwks-file)"
    )]
    NoKeys,
}

/// Authentication settings.
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    /// HS256 shared secrets.
    pub secrets: Vec<String>,
    /// RS256 or ES256 public keys (PEM files).
    pub public_keys: Vec<PathBuf>,
    /// A JWKS file.
    pub jwks_file: Option<PathBuf>,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Required `aud`.
    pub audience: Option<String>,
    /// Refuse clients without a token even when no key is configured.
    pub require: bool,
    /// The cluster's secret: tokens signed with it and claiming `peer`
    /// are other nodes (they do not make client tokens required).
    pub cluster_secret: Option<String>,
}

/// A verifying key, pinned to one algorithm: a token signed with another
/// (HS512 for an HS256 secret, say) is refused.
struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The algorithm a key of `family` verifies when nothing else says.
fn default_alg(family: AlgorithmFamily) -> Algorithm {
    match family {
        AlgorithmFamily::Hmac => Algorithm::HS256,
        AlgorithmFamily::Rsa => Algorithm::RS256,
        AlgorithmFamily::Ec => Algorithm::ES256,
        AlgorithmFamily::Ed => Algorithm::EdDSA,
    }
}

/// Who a connection is.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The token's subject (the origin of what it publishes).
    pub subject: String,
    /// When its token expires (`None`: a client certificate, checked at the handshake).
    pub expires: Option<SystemTime>,
    /// Its rights; `None` when the token has no `rights` claim (all rights).
    pub rights: Option<Rights>,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token where one is required.
    #[error("a token is required")]
    Missing,
    /// The token is not valid.
    #[error("invalid token: {0}")]
    Invalid(String),
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    rights: Option<RightsClaim>,
}

/// Verifies tokens.
pub struct Authenticator {
    keys: Vec<Key>,
    peer_key: Option<DecodingKey>,
    issuer: Option<String>,
    audience: Option<String>,
    require: bool,
}

impl Authenticator {
    /// Loads the keys of `settings`.
    pub fn new(settings: &AuthSettings) -> Result<Authenticator, AuthConfigError> {
        let mut keys: Vec<Key> = settings
            .secrets
            .iter()
            .map(|s| Key {
                kid: None,
                alg: Algorithm::HS256,
                key: DecodingKey::from_secret(s.as_bytes()),
            })
            .collect();
        for path in &settings.public_keys {
            let pem = std::fs::read(path).map_err(|source| AuthConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let (alg, key) = match DecodingKey::from_rsa_pem(&pem) {
                Ok(k) => (Algorithm::RS256, k),
                Err(_) => (
                    Algorithm::ES256,
                    DecodingKey::from_ec_pem(&pem).map_err(|e| AuthConfigError::Key {
                        what: path.display().to_string(),
                        reason: format!("neither an RSA nor an EC public key: {e}"),
                    })?,
                ),
            };
            keys.push(Key {
                kid: None,
                alg,
                key,
            });
        }
        if let Some(path) = &settings.jwks_file {
            let text = std::fs::read_to_string(path).map_err(|source| AuthConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let set: JwkSet = serde_json::from_str(&text).map_err(|e| AuthConfigError::Key {
                what: path.display().to_string(),
                reason: e.to_string(),
            })?;
            for jwk in &set.keys {
                let key = DecodingKey::from_jwk(jwk).map_err(|e| AuthConfigError::Key {
                    what: format!("{} kid {:?}", path.display(), jwk.common.key_id),
                    reason: e.to_string(),
                })?;
                // The JWK's own `alg` when it has one.
                let alg = match jwk.common.key_algorithm {
                    Some(ka) => Algorithm::from_str(&format!("{ka:?}")).map_err(|e| {
                        AuthConfigError::Key {
                            what: format!("{} kid {:?}", path.display(), jwk.common.key_id),
                            reason: format!("algorithm {ka:?}: {e}"),
                        }
                    })?,
                    None => default_alg(key.family()),
                };
                keys.push(Key {
                    kid: jwk.common.key_id.clone(),
                    alg,
                    key,
                });
            }
        }
        if settings.require && keys.is_empty() {
            return Err(AuthConfigError::NoKeys);
        }
        Ok(Authenticator {
            keys,
            peer_key: settings
                .cluster_secret
                .as_ref()
                .map(|s| DecodingKey::from_secret(s.as_bytes())),
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            require: settings.require,
        })
    }

    /// Whether any key is configured.
    pub fn has_keys(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Another node of the cluster, if `token` is a peer token signed with
    /// the cluster secret.
    fn peer(&self, token: &str) -> Option<Identity> {
        let key = self.peer_key.as_ref()?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY.as_secs();
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let claims = decode::<crate::cluster::PeerClaims>(token, key, &validation)
            .ok()?
            .claims;
        if !claims.peer || spread_protocol::check_origin(&claims.sub).is_err() {
            return None;
        }
        Some(Identity {
            rights: None,
            expires: UNIX_EPOCH.checked_add(Duration::from_secs(claims.exp)),
            subject: claims.sub,
        })
    }

    /// Checks the hello's token: `Ok(None)` for an accepted anonymous client.
    pub fn verify(&self, token: Option<&str>) -> Result<Option<Identity>, AuthError> {
        let Some(token) = token else {
            return if self.require || self.has_keys() {
                Err(AuthError::Missing)
            } else {
                Ok(None)
            };
        };
        if let Some(peer) = self.peer(token) {
            return Ok(Some(peer));
        }
        if !self.has_keys() {
            return Err(AuthError::Invalid(
                "this broker has no keys to verify tokens".into(),
            ));
        }
        let header = decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let by_kid: Vec<&Key> = self
            .keys
            .iter()
            .filter(|k| k.kid.is_some() && k.kid == header.kid && k.alg == header.alg)
            .collect();
        let candidates: Vec<&Key> = if by_kid.is_empty() {
            self.keys
                .iter()
                .filter(|k| k.kid.is_none() && k.alg == header.alg)
                .collect()
        } else {
            by_kid
        };
        if candidates.is_empty() {
            return Err(AuthError::Invalid(format!(
                "no key for algorithm {:?} and kid {:?}",
                header.alg, header.kid
            )));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
        }
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        let mut last = String::new();
        for key in candidates {
            match decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => {
                    let c = data.claims;
                    // The subject becomes the origin of every event.
                    if let Err(e) = spread_protocol::check_origin(&c.sub) {
                        return Err(AuthError::Invalid(format!("subject: {e}")));
                    }
                    let rights = match &c.rights {
                        Some(r) => Some(Rights::new(r, &c.sub).map_err(AuthError::Invalid)?),
                        None => None,
                    };
                    return Ok(Some(Identity {
                        rights,
                        // An expiry past what the clock can hold never comes.
                        expires: UNIX_EPOCH.checked_add(Duration::from_secs(c.exp)),
                        subject: c.sub,
                    }));
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(AuthError::Invalid(last))
    }
}
