//! Plugins the tests load (cargo-built ones and C sources compiled here),
//! and the typed configuration files that load them.

use std::path::{Path, PathBuf};
use std::process::Command;

use spread_broker::{Args, SinkConfig};

/// Writes `args` as `spread.toml` in `dir` (serialized from the broker's
/// own types, so a misspelt option does not compile) and returns its path,
/// for `--config`.
pub fn config_file(dir: &Path, args: &Args) -> PathBuf {
    let path = dir.join("spread.toml");
    let text = toml::to_string(args).expect("a configuration serializes");
    std::fs::write(&path, text).expect("write the configuration");
    path
}

/// A configuration whose only sinks are `sinks` (the built-in archive off).
pub fn only_sinks(sinks: Vec<SinkConfig>) -> Args {
    Args {
        archive: Some("off".into()),
        sinks,
        ..Args::default()
    }
}

/// A plugin's `[sinks.settings]` from key–value pairs.
pub fn settings<const N: usize>(pairs: [(&str, toml::Value); N]) -> toml::Table {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// A path as a settings value.
pub fn path_value(p: &Path) -> toml::Value {
    p.display().to_string().into()
}

/// A shared library built by cargo as a dependency of these tests (a
/// plugin crate), next to the test binary.
pub fn built_plugin(crate_name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("deps dir");
    let lib = deps.join(format!("lib{}.so", crate_name.replace('-', "_")));
    assert!(lib.exists(), "{} was not built", lib.display());
    lib
}

/// Compiles C `source` into a shared library at `out` with the plugin header.
pub fn build_c_plugin(source: &std::path::Path, out: &std::path::Path) {
    let include = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/abi/include");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let built = Command::new(&cc)
        .args([
            "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-std=c99", "-I", include,
        ])
        .arg(source)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cc}: {e}"));
    assert!(
        built.status.success(),
        "{} does not compile:\n{}",
        source.display(),
        String::from_utf8_lossy(&built.stderr)
    );
}
