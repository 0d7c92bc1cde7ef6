//! The `spread` command line against a test broker.

use std::process::{Command, Output, Stdio};

use super::Broker;

/// Runs the `spread` CLI against `broker` with `args`.
pub fn cli(broker: &Broker, args: &[&str], stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_e2e-spread"))
        .arg("--server")
        .arg(broker.addr.to_string())
        .arg("--ca")
        .arg(broker.ca())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cli");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(bytes) = stdin {
        input.write_all(bytes).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("cli output")
}
