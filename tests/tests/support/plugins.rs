//! Plugins the tests load: cargo-built ones and C sources compiled here.

use std::path::PathBuf;
use std::process::Command;

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
