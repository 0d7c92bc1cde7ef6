//! Keeps `include/spread_plugin.h` in sync with `src/ffi.rs`: compiles a C
//! probe against the header with the system C compiler and compares every
//! constant, size and field offset with the Rust definitions.

use std::mem::{offset_of, size_of};
use std::process::Command;

use spread_plugin::ffi::*;

macro_rules! layout {
    ($out:ident, $ty:ident { $($field:ident),* $(,)? }) => {
        $out.push((format!("sizeof {}", stringify!($ty)), size_of::<$ty>() as u64));
        $(
            $out.push((
                format!("offsetof {}.{}", stringify!($ty), stringify!($field)),
                offset_of!($ty, $field) as u64,
            ));
        )*
    };
}

fn rust_side() -> Vec<(String, u64)> {
    let mut out = vec![
        ("SPREAD_ABI_VERSION".to_string(), u64::from(ABI_VERSION)),
        ("SPREAD_OK".to_string(), STATUS_OK as u64),
        ("SPREAD_RETRY".to_string(), STATUS_RETRY as u64),
        ("SPREAD_FATAL".to_string(), STATUS_FATAL as u64),
        ("SPREAD_REJECTED".to_string(), STATUS_REJECTED as u64),
        ("SPREAD_CAP_SINK".to_string(), u64::from(CAP_SINK)),
        ("SPREAD_CAP_ARCHIVE".to_string(), u64::from(CAP_ARCHIVE)),
        ("SPREAD_KIND_VALUE".to_string(), u64::from(KIND_VALUE)),
        (
            "SPREAD_KIND_TOMBSTONE".to_string(),
            u64::from(KIND_TOMBSTONE),
        ),
    ];
    layout!(out, SpreadBytes { ptr, len });
    layout!(
        out,
        SpreadEvent {
            iteration,
            timestamp,
            topic,
            payload,
            origin,
            node,
            id,
            kind,
            reserved
        }
    );
    layout!(
        out,
        SpreadOpenArgs {
            name,
            config_json,
            node,
            data_dir
        }
    );
    layout!(
        out,
        SpreadQuery {
            prefixes,
            prefix_count,
            node,
            from_time,
            to_time,
            from_iteration,
            to_iteration,
            limit
        }
    );
    layout!(
        out,
        SpreadInfo {
            name,
            version,
            capabilities
        }
    );
    layout!(
        out,
        SpreadPlugin {
            abi_version,
            size,
            describe,
            free_error,
            sink_open,
            sink_write,
            sink_flush,
            sink_missed,
            sink_close,
            archive_open,
            archive_query,
            cursor_next,
            cursor_close,
            archive_close,
        }
    );
    out
}

/// The C probe: one `printf` per entry of [`rust_side`], named the same way.
fn probe_source(entries: &[(String, u64)]) -> String {
    let mut src = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include \"spread_plugin.h\"\nint main(void) {\n",
    );
    for (name, _) in entries {
        let expr = if let Some(ty) = name.strip_prefix("sizeof ") {
            format!("sizeof({ty})")
        } else if let Some(f) = name.strip_prefix("offsetof ") {
            let Some((ty, field)) = f.split_once('.') else {
                panic!("{f}: expected Type.field")
            };
            format!("offsetof({ty}, {field})")
        } else {
            name.clone()
        };
        src.push_str(&format!(
            "  printf(\"%s=%llu\\n\", \"{name}\", (unsigned long long)({expr}));\n"
        ));
    }
    src.push_str("  return 0;\n}\n");
    src
}

#[test]
fn c_header_matches_rust_definitions() {
    let entries = rust_side();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("probe.c");
    let exe = dir.path().join("probe");
    std::fs::write(&src, probe_source(&entries)).unwrap();
    let include = concat!(env!("CARGO_MANIFEST_DIR"), "/include");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let built = Command::new(&cc)
        .args(["-std=c99", "-Wall", "-Werror", "-I", include])
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {cc}: {e}"));
    assert!(
        built.status.success(),
        "the header does not compile:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    assert!(run.status.success());
    let c_side: Vec<(String, u64)> = String::from_utf8(run.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.rsplit_once('=').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect();
    assert_eq!(c_side.len(), entries.len());
    for ((name, rust), (c_name, c)) in entries.iter().zip(&c_side) {
        assert_eq!(name, c_name);
        assert_eq!(rust, c, "{name}: Rust says {rust}, C says {c}");
    }
}
