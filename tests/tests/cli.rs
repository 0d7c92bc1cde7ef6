//! The `spread` command line against a real broker.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use support::{cli, Broker};

fn json(out: &[u8]) -> serde_json::Value {
    let text = std::str::from_utf8(out).unwrap();
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text:?}"))
}

#[test]
fn pub_get_del_round_trip() {
    let broker = Broker::start(&[]);
    let out = cli(&broker, &["pub", "--json", "site/a/temp", "21.5"], None);
    assert!(out.status.success(), "{out:?}");
    let report = json(&out.stdout);
    assert_eq!(report["status"], "new");
    assert_eq!(report["topic"], "site/a/temp");
    assert_eq!(report["payload"], "21.5");
    assert!(report["iteration"].as_u64().unwrap() > 0);
    assert_eq!(report["notified"]["site"], 0);
    for field in ["timestamp", "origin", "id"] {
        assert!(!report[field].is_null(), "{field}");
    }

    // Payload bytes alone on stdout, from stdin when no argument.
    let out = cli(&broker, &["pub", "site/a/bin"], Some(&[0, 159, 146, 150]));
    assert!(out.status.success());
    let out = cli(&broker, &["get", "site/a/bin"], None);
    assert_eq!(out.stdout, [0, 159, 146, 150]);
    let out = cli(&broker, &["get", "--json", "site/a/bin"], None);
    assert_eq!(json(&out.stdout)["payload_base64"], "AJ+Slg==");

    let out = cli(&broker, &["pub", "--if-absent", "site/a/temp", "99"], None);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("present"));
    let out = cli(
        &broker,
        &["pub", "--json", "--if-absent", "site/a/temp", "99"],
        None,
    );
    let present = json(&out.stdout);
    assert_eq!(present["status"], "present");
    assert_eq!(present["payload"], "21.5", "the current value, unchanged");
    let out = cli(&broker, &["pub", "--json", "site/a/temp", "22"], None);
    let replaced = json(&out.stdout);
    assert_eq!(replaced["previous"]["iteration"], report["iteration"]);

    let out = cli(&broker, &["del", "site/a/temp"], None);
    assert!(out.status.success());
    let out = cli(&broker, &["get", "site/a/temp"], None);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "not found: site/a/temp"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn sub_prints_snapshot_then_live_and_stops_at_count() {
    let broker = Broker::start(&[]);
    cli(&broker, &["pub", "fleet/eu/t1", "one"], None);
    let mut child = Command::new(env!("CARGO_BIN_EXE_e2e-spread"))
        .args(["--server", &broker.addr.to_string(), "--ca"])
        .arg(broker.ca())
        .args(["sub", "fleet", "--json", "--count", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = json(lines.next().unwrap().unwrap().as_bytes());
    assert_eq!(first["topic"], "fleet/eu/t1");
    // The snapshot line arrived, so the subscription is live: publish.
    cli(&broker, &["pub", "fleet/us/t2", "two"], None);
    let second = json(lines.next().unwrap().unwrap().as_bytes());
    assert_eq!(second["topic"], "fleet/us/t2");
    assert_eq!(second["payload"], "two");
    assert!(second["iteration"].as_u64() > first["iteration"].as_u64());
    assert!(child.wait().unwrap().success());
}

#[test]
fn errors_are_one_line_and_non_zero() {
    let broker = Broker::start(&[]);
    let out = cli(&broker, &["pub", "bad//topic", "x"], None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("invalid topic"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_e2e-spread"))
        .args(["--server", "127.0.0.1:1", "--insecure", "get", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: cannot reach the broker at 127.0.0.1:1"),
        "{err}"
    );
    assert!(!err.contains("panicked"));

    // A certificate the client does not trust is refused.
    let out = Command::new(env!("CARGO_BIN_EXE_e2e-spread"))
        .args([
            "--server",
            &broker.addr.to_string(),
            "--ca",
            "/etc/ssl/certs/ca-certificates.crt",
            "get",
            "x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// The CLI lines of README.md's quick start, as printed, with the comment
/// that follows each (what the reader is told to expect).
fn readme_demo() -> Vec<(String, String)> {
    let readme = include_str!("../../README.md");
    let start = readme
        .lines()
        .position(|l| l.contains("alias spread="))
        .expect("the quick start defines the spread alias");
    readme
        .lines()
        .skip(start + 1)
        .take_while(|l| !l.starts_with("```"))
        .map(|l| match l.split_once(" #") {
            Some((cmd, comment)) => (cmd.trim().to_owned(), comment.trim().to_owned()),
            None => (l.trim().to_owned(), String::new()),
        })
        .collect()
}

/// Runs one README line in bash, with `spread` on the PATH being the CLI
/// against `broker` (a wrapper script in `bin`).
fn readme_line(broker: &Broker, bin: &std::path::Path, line: &str) -> Command {
    use std::os::unix::fs::PermissionsExt;
    let wrapper = bin.join("spread");
    if !wrapper.exists() {
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec '{}' --server {} --ca '{}' \"$@\"\n",
                env!("CARGO_BIN_EXE_e2e-spread"),
                broker.addr,
                broker.ca().display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(line)
        .env("PATH", path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Reads `child`'s stdout until a line contains `wanted`.
fn wait_for_line(child: &mut std::process::Child, wanted: &str, mut stderr: impl BufRead) {
    let out = child.stdout.take().expect("stdout");
    let seen = BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains(wanted));
    if !seen {
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err);
        panic!("no line with {wanted:?}: {err}");
    }
}

#[test]
fn every_command_of_the_readme_works_as_printed() {
    let broker = Broker::start(&[]);
    let bin = tempfile::tempdir().unwrap();
    let demo = readme_demo();
    assert!(demo.len() >= 8, "{demo:?}");
    let mut followers = Vec::new();
    for (line, comment) in &demo {
        let follows = line.ends_with('&') || line.starts_with("spread tail");
        if follows {
            // Follows live changes: runs beside the rest, checked at the end.
            let line = line.trim_end_matches('&');
            let mut child = readme_line(&broker, bin.path(), &format!("exec {line}"))
                .spawn()
                .unwrap();
            let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
            if line.starts_with("spread sub") {
                // What the reader sees before going on: the snapshot is in.
                let mut said = String::new();
                while !said.contains("snapshot complete") {
                    said.clear();
                    assert!(stderr.read_line(&mut said).unwrap() > 0, "{line} ended");
                }
            }
            followers.push((line.to_owned(), child, stderr));
            continue;
        }
        let out = readme_line(&broker, bin.path(), line).output().unwrap();
        // "exit code N" in the comment: what the reader is told to expect.
        let expected = comment
            .split_once("exit code ")
            .and_then(|(_, n)| n.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        assert_eq!(
            out.status.code(),
            Some(expected),
            "{line}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The subscriber and the tail both saw the truck's speed.
    for (line, mut child, stderr) in followers {
        wait_for_line(&mut child, "42 km/h", stderr);
        let _ = child.kill();
        let _ = child.wait();
        eprintln!("{line}: ok");
    }
}
