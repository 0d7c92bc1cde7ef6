//! `spread token`: mints an HS256 token for development, with a subject,
//! rights and a lifetime (see the security section of docs/operations.md).

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

/// What to put in the token.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The secret the broker verifies with (--jwt-secret).
    #[arg(long, env = "SPREAD_JWT_SECRET", hide_env_values = true)]
    pub secret: String,
    /// The subject: who the client is, the origin of what it publishes.
    #[arg(long)]
    pub subject: String,
    /// Lifetime, such as 1h or 30d.
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    /// A prefix it may publish to (repeatable; `{sub}` is the subject). With
    /// no --pub, --read or --deny the token has no rights claim: all rights.
    #[arg(long = "pub", value_name = "PREFIX")]
    pub publish: Vec<String>,
    /// A prefix it may read: subscribe, get, replay (repeatable).
    #[arg(long = "read", value_name = "PREFIX")]
    pub read: Vec<String>,
    /// A prefix refused whatever the others say (repeatable).
    #[arg(long, value_name = "PREFIX")]
    pub deny: Vec<String>,
    /// The `iss` claim.
    #[arg(long)]
    pub issuer: Option<String>,
    /// The `aud` claim.
    #[arg(long)]
    pub audience: Option<String>,
    /// The `kid` header.
    #[arg(long)]
    pub kid: Option<String>,
}

/// The signed token.
pub fn mint(args: &Args) -> anyhow::Result<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs();
    let ttl =
        humantime::parse_duration(&args.ttl).with_context(|| format!("--ttl {}", args.ttl))?;
    let mut claims = serde_json::json!({
        "sub": args.subject,
        "iat": now,
        "exp": now + ttl.as_secs(),
    });
    if let Some(iss) = &args.issuer {
        claims["iss"] = iss.as_str().into();
    }
    if let Some(aud) = &args.audience {
        claims["aud"] = aud.as_str().into();
    }
    if !(args.publish.is_empty() && args.read.is_empty() && args.deny.is_empty()) {
        claims["rights"] = serde_json::json!({
            "pub": args.publish,
            "sub": args.read,
            "deny": args.deny,
        });
    }
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = args.kid.clone();
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(args.secret.as_bytes()),
    )
    .context("cannot sign the token")
}
