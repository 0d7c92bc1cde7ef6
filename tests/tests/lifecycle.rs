//! Broker process lifecycle: graceful shutdown, persistent identity and TLS.

mod support;

use spread_protocol::{ErrorCode, Request, Response, Topic};
use support::Broker;

#[tokio::test]
async fn sigterm_closes_connections_with_shutting_down_and_exits_cleanly() {
    let mut broker = Broker::start(&[]);
    let mut raw = broker.raw().await;
    raw.send(&Request::Subscribe {
        req_id: 1,
        prefix: Topic::root(),
        since: 0,
        mode: spread_protocol::SubscribeMode::Latest,
        skip_source: Default::default(),
    })
    .await;
    assert!(matches!(
        raw.recv().await,
        Some(Response::SnapshotComplete { .. })
    ));
    broker.terminate();
    raw.expect_fatal(ErrorCode::ShuttingDown).await;
    let status = broker.child().wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!broker.is_running());
}

#[tokio::test]
async fn node_id_and_certificate_survive_a_restart() {
    let first = Broker::start(&[]);
    let id = first.client().await.node_id();
    let ca = std::fs::read(first.ca()).unwrap();
    let dir = first.kill();
    let second = Broker::start_in(dir, &[]);
    assert_eq!(std::fs::read(second.ca()).unwrap(), ca);
    assert_eq!(second.client().await.node_id(), id);
}

#[tokio::test]
async fn operator_certificates_are_used_when_given() {
    // Generate a CA with one broker, then start another from those files.
    let donor = Broker::start(&[]);
    let tls = donor.dir.path().join("tls");
    let (cert, key) = (tls.join("server.pem"), tls.join("server-key.pem"));
    let broker = Broker::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert!(
        !broker.dir.path().join("tls").exists(),
        "no local CA generated"
    );
    let mut cfg = broker.config();
    cfg = cfg.ca_file(donor.ca());
    let client = spread_client::Client::connect(cfg).await.unwrap();
    client.publish("t", "x").await.unwrap();
}

#[test]
fn logs_into_a_pipe_carry_no_colour_codes() {
    use std::io::{BufRead, Read};
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_e2e-broker"))
        .args(["--listen", "127.0.0.1:0", "--archive", "off", "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("spread-broker listening on"), "{first}");
    child.kill().unwrap();
    child.wait().unwrap();
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    // The start logs at info and warns of anonymous access.
    assert!(logs.contains("no authentication configured"), "{logs}");
    assert!(!logs.contains('\u{1b}'), "colour codes in {logs:?}");
}

/// Waits for the process to exit, failing the test after [`PATIENCE`].
fn exit_status(broker: &mut Broker) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + support::PATIENCE;
    loop {
        if let Some(status) = broker.child().try_wait().unwrap() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the broker did not exit"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_even_with_a_client_that_reads_nothing() {
    use spread_protocol::{SubscribeMode, Topic};
    let flags = ["--archive", "off", "--recent-events", "1"];
    let mut broker = Broker::start(&flags);
    let client = broker.client().await;
    // Far more history than the socket and the queue hold.
    let payload = vec![b'h'; 4096];
    for i in 0..5_000 {
        client
            .publish(&format!("h/{}", i % 10), payload.clone())
            .await
            .unwrap();
    }
    let last = client
        .publish("h/last", "x")
        .await
        .unwrap()
        .summary()
        .iteration();
    let mut stalled = broker.raw().await;
    stalled
        .send(&Request::Subscribe {
            req_id: 1,
            prefix: Topic::root(),
            since: 1,
            mode: SubscribeMode::History,
            skip_source: Default::default(),
        })
        .await;
    // Its catch-up is running once a first event arrives; from then on it
    // reads nothing more, with megabytes of history still to come.
    assert!(matches!(stalled.recv().await, Some(Response::Event { .. })));
    drop(client);
    broker.terminate();
    assert!(exit_status(&mut broker).success());
    // The shutdown checkpoint was written, covering everything.
    let checkpoint = std::fs::read(broker.dir.path().join("log").join("checkpoint")).unwrap();
    let covered = u64::from_le_bytes(checkpoint[16..24].try_into().unwrap());
    assert!(
        covered >= last,
        "checkpoint at {covered}, last event {last}"
    );
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_is_closed_after_the_write_timeout() {
    let broker = Broker::start(&[
        "--archive",
        "off",
        "--write-timeout-secs",
        "1",
        "--max-connections",
        "2",
    ]);
    let mut stalled = broker.raw().await;
    stalled
        .send(&Request::Subscribe {
            req_id: 1,
            prefix: Topic::root(),
            since: 0,
            mode: spread_protocol::SubscribeMode::Latest,
            skip_source: Default::default(),
        })
        .await;
    let client = broker.client().await;
    // More than its socket buffers hold: its writer blocks.
    let payload = vec![b'w'; 16 * 1024];
    for i in 0..2_000 {
        client
            .publish(&format!("w/{}", i % 500), payload.clone())
            .await
            .unwrap();
    }
    // Its connection slot frees up once the writer gave up on it.
    let third = support::eventually("the stalled connection to be closed", || async {
        spread_client::Client::connect(broker.config()).await.ok()
    })
    .await;
    third.ping().await.unwrap();
    client.ping().await.unwrap();
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_during_a_periodic_checkpoint_still_leaves_one_covering_everything() {
    // The last publish starts a periodic checkpoint of a large table (no
    // event follows it); the stop that comes next must finish or redo it,
    // not drop it: else the next start replays the whole log.
    const TOPICS: u64 = 50_000;
    let mut broker = Broker::start(&[
        "--archive",
        "off",
        "--durability",
        "never",
        "--checkpoint-every",
        &TOPICS.to_string(),
    ]);
    let client = broker.client().await;
    let payload = vec![b'v'; 2048];
    for i in 0..TOPICS - 1 {
        client
            .publish_nowait(&format!("c/{}/{}", i / 1000, i % 1000), &payload)
            .await
            .unwrap();
    }
    let last = client
        .publish("c/last", "x")
        .await
        .unwrap()
        .summary()
        .iteration();
    drop(client);
    broker.terminate();
    assert!(exit_status(&mut broker).success());
    let checkpoint = std::fs::read(broker.dir.path().join("log").join("checkpoint"))
        .expect("no checkpoint after a graceful stop");
    let covered = u64::from_le_bytes(checkpoint[16..24].try_into().unwrap());
    assert!(
        covered >= last,
        "checkpoint at {covered}, last event {last}"
    );
}
