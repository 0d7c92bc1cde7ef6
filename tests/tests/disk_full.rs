//! A full disk: publishes get a clear error instead of hanging, reads keep
//! working, and the broker recovers when space returns — without losing an
//! acknowledged event. Needs root to mount a small tmpfs (CI runs as root).

mod support;

use std::process::Command;
use std::time::Duration;

use spread_client::{Error, ErrorCode};
use support::{Broker, PATIENCE};

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then_some(SmallDisk { dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_publishes_keeps_reads_and_recovers() {
    let Some(disk) = SmallDisk::mount("4m") else {
        // Not root: this test cannot create a small filesystem here.
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let data = tempfile::Builder::new()
        .tempdir_in(disk.dir.path())
        .unwrap();
    // Ballast that leaves little room; removing it is "space returns".
    let ballast = disk.dir.path().join("ballast");
    std::fs::write(&ballast, vec![0u8; 3 * 1024 * 1024]).unwrap();
    // The archive would share the small disk: this test is about the log.
    let broker = Broker::start_in(data, &["--segment-bytes", "262144", "--archive", "off"]);
    let client = broker.client().await;
    client.publish("disk/first", "kept").await.unwrap();

    // Fill the disk. The publish whose write fails is held until the disk
    // has room again (it must not be acknowledged before it is logged).
    let payload = bytes::Bytes::from(vec![b'x'; 8192]);
    let mut held = None;
    for i in 0..10_000 {
        let c = client.clone();
        let p = payload.clone();
        let mut publish = tokio::spawn(async move { c.publish(&format!("disk/{i}"), p).await });
        tokio::select! {
            r = &mut publish => { r.unwrap().unwrap(); }
            _ = tokio::time::sleep(Duration::from_secs(3)) => { held = Some(publish); break; }
        }
    }
    let held = held.expect("the disk filled up");

    // Publishes are refused at once with a clear, non-fatal error.
    let other = broker.client().await;
    let refused = tokio::time::timeout(PATIENCE, other.publish("disk/new", "x"))
        .await
        .expect("refused, not hung");
    match refused {
        Err(Error::Server { code, message }) => {
            assert_eq!(code, ErrorCode::StorageUnavailable);
            assert!(message.contains("event log"), "{message}");
        }
        other => panic!("expected storage_unavailable, got {other:?}"),
    }
    // Reads still work, on the same connection.
    let kept = other.get("disk/first").await.unwrap().unwrap();
    assert_eq!(kept.payload_bytes(), b"kept");

    // Space returns: publishes succeed again (the first one after may still
    // be refused: it arrives before the retry), and the held one completes.
    std::fs::remove_file(&ballast).unwrap();
    let mut ok = false;
    for _ in 0..100 {
        match other.publish("disk/after", "back").await {
            Ok(_) => {
                ok = true;
                break;
            }
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::StorageUnavailable), "{e}"),
        }
    }
    assert!(ok, "publishes recover when space returns");
    let report = tokio::time::timeout(PATIENCE, held)
        .await
        .expect("the held publish completes")
        .unwrap()
        .unwrap();
    assert!(report.summary().iteration() > 0);

    // Nothing acknowledged was lost: restart and read back.
    drop(client);
    drop(other);
    let dir = broker.stop();
    let broker = Broker::start_in(dir, &[]);
    let client = broker.client().await;
    assert_eq!(
        client
            .get("disk/after")
            .await
            .unwrap()
            .unwrap()
            .payload_bytes(),
        b"back"
    );
    assert_eq!(
        client
            .get("disk/first")
            .await
            .unwrap()
            .unwrap()
            .payload_bytes(),
        b"kept"
    );
    drop(client);
    drop(broker);
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_full_at_a_segment_roll_recovers_and_restarts() {
    let Some(disk) = SmallDisk::mount("1m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let data = tempfile::Builder::new()
        .tempdir_in(disk.dir.path())
        .unwrap();
    let flags = ["--segment-bytes", "4096", "--archive", "off"];
    let broker = Broker::start_in(data, &flags);
    let client = broker.client().await;
    // Most of a segment.
    for i in 0..10 {
        client
            .publish(&format!("roll/{i}"), vec![b'a'; 200])
            .await
            .unwrap();
    }
    // No byte left on the disk.
    let ballast = disk.dir.path().join("ballast");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&ballast).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).and_then(|()| f.sync_all()).is_ok() {}
    }
    // A publish that needs a new segment cannot be logged: held, and other
    // publishes are refused.
    let c = client.clone();
    let held = tokio::spawn(async move { c.publish("roll/big", vec![b'b'; 3000]).await });
    let other = broker.client().await;
    // A probe that shares a round with the failing write is held like it
    // (answered once space returns); the ones after it are refused. Each
    // probe runs on its own, so a held one does not block the next.
    let mut probes = tokio::task::JoinSet::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let o = other.clone();
        probes.spawn(async move { o.publish("roll/probe", "p").await });
        let answered = tokio::time::timeout(Duration::from_millis(100), probes.join_next());
        if let Ok(Some(answer)) = answered.await {
            match answer.unwrap() {
                Err(e) if e.code() == Some(ErrorCode::StorageUnavailable) => break,
                Err(e) => panic!("{e}"),
                // Raced ahead of the held write.
                Ok(_) => {}
            }
        }
        assert!(
            !held.is_finished(),
            "acknowledged although it could not be logged"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "no publish was refused on the full disk"
        );
    }
    // Space returns: the roll is retried and succeeds.
    std::fs::remove_file(&ballast).unwrap();
    let mut accepted = false;
    for _ in 0..1_000 {
        let after = tokio::time::timeout(PATIENCE, other.publish("roll/after", "back"));
        match after
            .await
            .expect("a publish after space returned is answered")
        {
            Ok(_) => {
                accepted = true;
                break;
            }
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::StorageUnavailable), "{e}"),
        }
    }
    assert!(accepted, "publishes stay refused after space returned");
    tokio::time::timeout(PATIENCE, held)
        .await
        .expect("the held publish completes")
        .unwrap()
        .unwrap();
    // Held probes are answered too: applied, or refused while the disk was full.
    while let Some(answer) = tokio::time::timeout(PATIENCE, probes.join_next())
        .await
        .expect("every probe is answered")
    {
        if let Err(e) = answer.unwrap() {
            assert_eq!(e.code(), Some(ErrorCode::StorageUnavailable), "{e}");
        }
    }
    // And the broker starts again on that log, with everything in it.
    drop((client, other));
    let dir = broker.kill();
    let broker = Broker::start_in(dir, &flags);
    let client = broker.client().await;
    assert_eq!(
        client
            .get("roll/big")
            .await
            .unwrap()
            .unwrap()
            .payload_bytes()
            .len(),
        3000
    );
    assert_eq!(
        client
            .get("roll/after")
            .await
            .unwrap()
            .unwrap()
            .payload_bytes(),
        b"back"
    );
    drop(client);
    drop(broker);
    drop(disk);
}
