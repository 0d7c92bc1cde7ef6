//! JWT authentication and per-prefix rights against a real broker: tokens
//! minted by `spread token` (HS256) and an ES256 key, every refusal with
//! its code, origins taken from the subject, and subscriptions that never
//! deliver outside the rights.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use spread_client::{Client, ErrorCode, Item, Outcome};
use spread_protocol::{Hello, Request, PROTOCOL_VERSION};
use support::{Broker, PATIENCE};

const SECRET: &str = "test-secret-of-enough-length";

/// A token minted by `spread token` with `extra` flags.
fn mint(broker: &Broker, subject: &str, extra: &[&str]) -> String {
    let mut args = vec!["token", "--secret", SECRET, "--subject", subject];
    args.extend_from_slice(extra);
    let out = support::cli(broker, &args, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Seconds since the epoch.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `claims` signed with the brokers' HS256 secret.
fn hs256(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn client(broker: &Broker, token: &str) -> Result<Client, spread_client::Error> {
    Client::connect(broker.config().token(token)).await
}

fn refused_with(result: Result<Client, spread_client::Error>, code: ErrorCode) {
    match result {
        Err(e) => assert_eq!(e.code(), Some(code), "{e}"),
        Ok(_) => panic!("connected"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rights_limit_publishes_reads_and_deliveries() {
    let broker = Broker::start(&["--archive", "off", "--jwt-secret", SECRET]);
    let admin = client(&broker, &mint(&broker, "admin", &[])).await.unwrap();
    let token = mint(
        &broker,
        "alice",
        &[
            "--pub",
            "sensors/site-7",
            "--pub",
            "users/{sub}",
            "--read",
            "sensors",
            "--read",
            "config",
            "--deny",
            "config/secrets",
        ],
    );
    let alice = client(&broker, &token).await.unwrap();
    // The subject is the origin of what it publishes.
    let Outcome::New { event, .. } = alice.publish("sensors/site-7/t1", "21").await.unwrap() else {
        panic!("not applied")
    };
    assert_eq!(event.origin(), "alice");
    alice.publish("users/alice/prefs", "dark").await.unwrap();
    // Outside the rights: forbidden, and whole segments only.
    for topic in ["sensors/site-70/t1", "users/bob/prefs", "config/app"] {
        let e = alice.publish(topic, "x").await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{topic}: {e}");
    }
    let e = alice.get("config/secrets/db").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Forbidden));
    let e = alice.get("billing/x").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Forbidden));
    // A subscription outside the rights is refused; a broader one is
    // filtered event by event.
    let mut refused = alice.subscribe("billing").await.unwrap();
    match tokio::time::timeout(PATIENCE, refused.next())
        .await
        .unwrap()
    {
        Some(Err(e)) => assert_eq!(e.code(), Some(ErrorCode::Forbidden)),
        other => panic!("expected forbidden, got {other:?}"),
    }
    admin.publish("config/secrets/db", "hunter2").await.unwrap();
    admin.publish("config/app", "v1").await.unwrap();
    let mut all = alice.subscribe("").await.unwrap();
    let mut seen = Vec::new();
    loop {
        match support::next_item(&mut all).await {
            Item::Event(e) => seen.push(e.topic().to_string()),
            Item::Synced { .. } => break,
            _ => {}
        }
    }
    seen.sort();
    assert_eq!(seen, ["config/app", "sensors/site-7/t1"]);
    // Live: only what it may read arrives.
    admin.publish("config/secrets/api", "k").await.unwrap();
    admin.publish("billing/inv-1", "9").await.unwrap();
    admin.publish("sensors/site-9/t2", "17").await.unwrap();
    match support::next_item(&mut all).await {
        Item::Event(e) => assert_eq!(e.topic(), "sensors/site-9/t2"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_with_a_clear_code() {
    let broker = Broker::start(&[
        "--archive",
        "off",
        "--jwt-secret",
        SECRET,
        "--jwt-issuer",
        "https://auth.test",
        "--jwt-audience",
        "spread",
    ]);
    let good = ["--issuer", "https://auth.test", "--audience", "spread"];
    client(&broker, &mint(&broker, "ok", &good)).await.unwrap();
    // No token at all.
    refused_with(
        Client::connect(broker.config()).await,
        ErrorCode::Unauthorized,
    );
    // Another secret.
    let out = support::cli(
        &broker,
        &[
            "token",
            "--secret",
            "not-the-secret",
            "--subject",
            "eve",
            "--issuer",
            "https://auth.test",
            "--audience",
            "spread",
        ],
        None,
    );
    let forged = String::from_utf8(out.stdout).unwrap().trim().to_string();
    refused_with(client(&broker, &forged).await, ErrorCode::Unauthorized);
    // Wrong issuer, wrong audience, expired beyond the leeway.
    let wrong_iss = mint(
        &broker,
        "x",
        &["--issuer", "https://evil.test", "--audience", "spread"],
    );
    refused_with(client(&broker, &wrong_iss).await, ErrorCode::Unauthorized);
    let wrong_aud = mint(
        &broker,
        "x",
        &["--issuer", "https://auth.test", "--audience", "other"],
    );
    refused_with(client(&broker, &wrong_aud).await, ErrorCode::Unauthorized);
    let expired = hs256(
        serde_json::json!({"sub": "late", "exp": now() - 120, "iss": "https://auth.test", "aud": "spread"}),
    );
    refused_with(client(&broker, &expired).await, ErrorCode::Unauthorized);
    // The broker keeps serving good clients.
    let c = client(&broker, &mint(&broker, "ok2", &good)).await.unwrap();
    c.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_closed_when_its_token_expires() {
    let broker = Broker::start(&["--archive", "off", "--jwt-secret", SECRET]);
    // exp 1 s from now: accepted (within the leeway anyway), closed at exp.
    let token = hs256(serde_json::json!({"sub": "brief", "exp": now() + 1}));
    let mut raw = broker.raw_unhandshaken().await;
    raw.send(&Request::Hello(Hello {
        version: PROTOCOL_VERSION,
        client_name: "brief".into(),
        token: Some(token),
    }))
    .await;
    assert!(matches!(
        raw.recv().await,
        Some(spread_protocol::Response::Welcome { .. })
    ));
    let closed = tokio::time::timeout(
        Duration::from_secs(30),
        raw.expect_fatal(ErrorCode::TokenExpired),
    );
    closed.await.expect("closed at expiry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_public_keys_verify_tokens() {
    let key = rcgen::KeyPair::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let public = dir.path().join("es256.pem");
    std::fs::write(&public, key.public_key_pem()).unwrap();
    let broker = Broker::start(&[
        "--archive",
        "off",
        "--jwt-public-key",
        public.to_str().unwrap(),
    ]);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &serde_json::json!({"sub": "device-42", "exp": now + 600}),
        &jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let c = client(&broker, &token).await.unwrap();
    let Outcome::New { event, .. } = c.publish("devices/42", "on").await.unwrap() else {
        panic!("not applied")
    };
    assert_eq!(event.origin(), "device-42");
    // An HS256 token is not accepted by an ES256-only broker.
    let hs = mint(&broker, "x", &[]);
    refused_with(client(&broker, &hs).await, ErrorCode::Unauthorized);
}

#[test]
fn requiring_auth_without_keys_stops_the_start() {
    let stderr = support::fail_to_start(&["--require-auth"]);
    assert!(
        stderr.contains("--require-auth needs at least one key"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_refresher_reconnects_past_expiry_without_losing_events() {
    let broker = Broker::start(&["--archive", "off", "--jwt-secret", SECRET]);
    let admin = client(&broker, &mint(&broker, "admin", &[])).await.unwrap();
    let minted = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let count = minted.clone();
    // Tokens that live two seconds: the connection is closed at expiry and
    // the SDK reconnects with a fresh one.
    let cfg = broker.config().token_refresher(move || {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Some(hs256(
            serde_json::json!({"sub": "short-lived", "exp": now() + 2}),
        ))
    });
    let reader = Client::connect(cfg).await.unwrap();
    let mut sub = reader.subscribe("r").await.unwrap();
    support::snapshot(&mut sub).await;
    let mut want = Vec::new();
    let mut got = Vec::new();
    // Publish until the reader has reconnected at least twice.
    let mut round = 0;
    while minted.load(std::sync::atomic::Ordering::SeqCst) < 3 {
        admin
            .publish(&format!("r/{round}"), format!("{round}"))
            .await
            .unwrap();
        want.push(format!("r/{round}"));
        round += 1;
        while got.len() < want.len() {
            match support::next_item(&mut sub).await {
                Item::Event(e) => got.push(e.topic().to_string()),
                Item::Synced { .. } | Item::Conflated { .. } | Item::Truncated { .. } => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_respect_rights() {
    let broker = Broker::start(&["--jwt-secret", SECRET]);
    let admin = client(&broker, &mint(&broker, "admin", &[])).await.unwrap();
    for topic in ["sensors/a", "config/app", "config/secrets/db", "billing/1"] {
        admin.publish(topic, "v").await.unwrap();
    }
    support::eventually("the archive to catch up", || async {
        let r = admin.status().await.ok()?;
        (r.sinks.iter().find(|s| s.name == "archive")?.lag_events == 0).then_some(())
    })
    .await;
    let token = mint(
        &broker,
        "bob",
        &[
            "--read",
            "sensors",
            "--read",
            "config",
            "--deny",
            "config/secrets",
        ],
    );
    let bob = client(&broker, &token).await.unwrap();
    // Everything: only what bob may read comes back.
    let mut all = bob.replay(&spread_client::Replay::default()).await.unwrap();
    let mut topics = Vec::new();
    while let Some(e) = all.next().await {
        topics.push(e.unwrap().topic().to_string());
    }
    topics.sort();
    assert_eq!(topics, ["config/app", "sensors/a"]);
    // A prefix outside the rights is refused.
    let mut billing = bob
        .replay(&spread_client::Replay::prefix("billing"))
        .await
        .unwrap();
    match billing.next().await {
        Some(Err(e)) => assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{e}"),
        other => panic!("expected forbidden, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_file_rotates_keys_by_kid() {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let (old, new) = ("old-secret-0123456789abcdef", "new-secret-0123456789abcdef");
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        serde_json::json!({"keys": [
            {"kty": "oct", "kid": "2026-10", "alg": "HS256", "k": b64(old)},
            {"kty": "oct", "kid": "2026-11", "alg": "HS256", "k": b64(new)},
        ]})
        .to_string(),
    )
    .unwrap();
    let broker = Broker::start(&["--archive", "off", "--jwks-file", jwks.to_str().unwrap()]);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = |kid: &str, secret: &str| {
        let header = jsonwebtoken::Header {
            kid: Some(kid.to_string()),
            ..jsonwebtoken::Header::default()
        };
        jsonwebtoken::encode(
            &header,
            &serde_json::json!({"sub": format!("holder-of-{kid}"), "exp": now + 600}),
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    // Both keys verify their own tokens during the rotation.
    for (kid, secret) in [("2026-10", old), ("2026-11", new)] {
        let c = client(&broker, &token(kid, secret)).await.unwrap();
        let Outcome::New { event, .. } = c.publish("k/x", "1").await.unwrap() else {
            panic!("not applied")
        };
        assert_eq!(event.origin(), format!("holder-of-{kid}"));
    }
    // A token naming one key but signed with the other is refused.
    refused_with(
        client(&broker, &token("2026-11", old)).await,
        ErrorCode::Unauthorized,
    );
    refused_with(
        client(&broker, &token("unknown", new)).await,
        ErrorCode::Unauthorized,
    );
}

#[tokio::test]
async fn origins_are_bounded_wherever_they_come_from() {
    let broker = Broker::start(&["--archive", "off", "--jwt-secret", SECRET]);
    let long = hs256(serde_json::json!({"sub": "s".repeat(256), "exp": now() + 60}));
    refused_with(client(&broker, &long).await, ErrorCode::Unauthorized);
    let control = hs256(serde_json::json!({"sub": "bob\u{0}", "exp": now() + 60}));
    refused_with(client(&broker, &control).await, ErrorCode::Unauthorized);
    let longest = hs256(serde_json::json!({"sub": "s".repeat(255), "exp": now() + 60}));
    let c = client(&broker, &longest).await.unwrap();
    assert!(matches!(
        c.publish("t", "v").await.unwrap(),
        Outcome::New { .. }
    ));
    // Anonymous clients write as the node: its id is bounded the same way.
    let err = support::fail_to_start(&["--archive", "off", "--node-id", &"n".repeat(256)]);
    assert!(err.contains("node_id"), "{err}");
}

#[tokio::test]
async fn a_publish_only_token_reads_nothing_through_its_reports() {
    use spread_client::PublishOptions;
    let broker = Broker::start(&["--archive", "off", "--jwt-secret", SECRET]);
    let admin = client(&broker, &mint(&broker, "admin", &[])).await.unwrap();
    let mut watcher = admin.subscribe("inbox").await.unwrap();
    support::snapshot(&mut watcher).await;
    admin.publish("inbox/bob", "secret").await.unwrap();
    let writer = client(&broker, &mint(&broker, "mallory", &["--pub", "inbox"]))
        .await
        .unwrap();
    // An old timestamp always loses: too_late, without the current event.
    let old = PublishOptions {
        timestamp: Some(1),
        ..PublishOptions::default()
    };
    match writer.publish_with("inbox/bob", "x", old).await.unwrap() {
        Outcome::TooLate { rejected, current } => {
            assert!(current.is_none(), "leaked {current:?}");
            assert_eq!(rejected.timestamp(), 1);
        }
        other => panic!("expected too_late, got {other:?}"),
    }
    // Publish-if-absent: present, naming its own rejected publish.
    match writer.publish_if_absent("inbox/bob", "x").await.unwrap() {
        Outcome::Present { event, current } => {
            assert!(current.is_none(), "leaked {current:?}");
            assert_eq!(event.origin(), "mallory");
            assert_eq!(event.iteration(), 0);
        }
        other => panic!("expected present, got {other:?}"),
    }
    // A new write does not reveal the event it replaced, nor who listens.
    match writer.publish("inbox/bob", "spam").await.unwrap() {
        Outcome::New {
            previous, notified, ..
        } => {
            assert!(previous.is_none(), "leaked {previous:?}");
            assert!(notified.is_empty(), "leaked {notified:?}");
        }
        other => panic!("expected new, got {other:?}"),
    }
    // A reader still gets the whole report.
    let reader = client(
        &broker,
        &mint(&broker, "bob", &["--pub", "inbox", "--read", "inbox"]),
    )
    .await
    .unwrap();
    let old = PublishOptions {
        timestamp: Some(1),
        ..PublishOptions::default()
    };
    let report = reader.publish_with("inbox/bob", "x", old).await.unwrap();
    assert_eq!(report.current().unwrap().payload_bytes(), b"spam");
    match reader.publish("inbox/bob", "hi").await.unwrap() {
        Outcome::New {
            previous, notified, ..
        } => {
            assert_eq!(previous.unwrap().origin(), "mallory");
            assert_eq!(notified[..], [0, 1, 0]);
        }
        other => panic!("expected new, got {other:?}"),
    }
}

#[tokio::test]
async fn tokens_cannot_stretch_their_rights_algorithms_or_validity() {
    let broker = Broker::start(&["--archive", "off", "--jwt-secret", SECRET]);
    let exp = now() + 60;
    // A subject of "/" must not turn users/{sub} into every user's prefix.
    let slash =
        hs256(serde_json::json!({"sub": "/", "exp": exp, "rights": {"pub": ["users/{sub}"]}}));
    refused_with(client(&broker, &slash).await, ErrorCode::Unauthorized);
    // A deny entry that could never match is an error, not a silent allow.
    let typo = hs256(
        serde_json::json!({"sub": "eve", "exp": exp, "rights": {"sub": [""], "deny": ["config//secrets"]}}),
    );
    refused_with(client(&broker, &typo).await, ErrorCode::Unauthorized);
    // Not valid before a time still to come.
    let early = hs256(serde_json::json!({"sub": "eve", "exp": exp, "nbf": now() + 3_600}));
    refused_with(client(&broker, &early).await, ErrorCode::Unauthorized);
    // The secret verifies HS256 only.
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &serde_json::json!({"sub": "eve", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    refused_with(client(&broker, &hs512).await, ErrorCode::Unauthorized);
    // An expiry too far to represent does not take the connection down.
    let forever = hs256(serde_json::json!({"sub": "eve", "exp": u64::MAX}));
    let c = client(&broker, &forever).await.unwrap();
    c.ping().await.unwrap();
    // A restricted token sees sinks by name only: no plugin paths, no
    // database errors.
    let archived = Broker::start(&["--jwt-secret", SECRET]);
    let status = |token: String| {
        let archived = &archived;
        async move {
            client(archived, &token)
                .await
                .unwrap()
                .status()
                .await
                .unwrap()
                .sinks
        }
    };
    let full = status(mint(&archived, "admin", &[])).await;
    assert!(
        full[0].plugin.starts_with("sql-archive ("),
        "{}",
        full[0].plugin
    );
    let restricted = status(mint(&archived, "eve", &["--read", "x"])).await;
    assert_eq!(restricted[0].plugin, "sql-archive");
    assert!(restricted[0].last_error.is_none());
    // The data dir is the broker user's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(broker.dir.path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_a_subscriber_may_not_read_never_counts_against_it() {
    use spread_protocol::{Response, SubscribeMode, Topic};
    let broker = Broker::start(&[
        "--archive",
        "off",
        "--jwt-secret",
        SECRET,
        "--subscriber-buffer",
        "1048576",
    ]);
    let admin = client(&broker, &mint(&broker, "admin", &[])).await.unwrap();
    // May subscribe to `a` (it reaches a/x) but read only a/x; it does
    // not read its socket yet.
    let mut raw = broker.raw_unhandshaken().await;
    raw.send(&Request::Hello(Hello {
        version: PROTOCOL_VERSION,
        client_name: "narrow".into(),
        token: Some(mint(&broker, "narrow", &["--read", "a/x"])),
    }))
    .await;
    assert!(matches!(raw.recv().await, Some(Response::Welcome { .. })));
    raw.send(&Request::Subscribe {
        req_id: 1,
        prefix: Topic::new("a", &Default::default()).unwrap(),
        since: 0,
        mode: SubscribeMode::Latest,
        skip_source: Default::default(),
    })
    .await;
    let publish_all = |topics: Vec<String>| {
        let admin = admin.clone();
        async move {
            for chunk in topics.chunks(512) {
                let writes = chunk.iter().map(|t| admin.publish(t, vec![b'p'; 1024]));
                for r in futures_util::future::join_all(writes).await {
                    r.unwrap();
                }
            }
        }
    };
    // 8 MiB it may read, on distinct topics (nothing to conflate away),
    // more than the socket holds: its queue is now backed up...
    publish_all((0..8192).map(|i| format!("a/x/{i}")).collect()).await;
    // ...when 16 MiB it may not read arrive, 100 topics rewritten.
    publish_all((0..16_000).map(|i| format!("a/y/{}", i % 100)).collect()).await;
    admin.publish("a/x/end", "end").await.unwrap();
    let mut seen = 0;
    let mut skipped = 0;
    loop {
        match raw.recv().await.expect("open") {
            Response::Event { event, .. } => {
                assert!(event.topic().starts_with("a/x/"), "{}", event.topic());
                seen += 1;
                if event.topic() == "a/x/end" {
                    break;
                }
            }
            Response::Conflated { skipped: n, .. } => skipped += n,
            Response::SnapshotComplete { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // A conflated notice follows the latest values it stands for.
    raw.send(&Request::Ping { req_id: 9 }).await;
    loop {
        match raw.recv().await.expect("open") {
            Response::Conflated { skipped: n, .. } => skipped += n,
            Response::Pong { .. } => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, 8193);
    assert_eq!(skipped, 0, "events it may not read were counted as skipped");
}
