//! The node id: generated on first start and kept in the data dir.

use std::path::Path;

use crate::BrokerError;

const NODE_ID_FILE: &str = "node-id";

/// Reads `<data-dir>/node-id`, creating it with a random id if absent.
pub fn load_or_create(data_dir: &Path) -> Result<String, BrokerError> {
    let path = data_dir.join(NODE_ID_FILE);
    let io = |source| BrokerError::DataDir {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let mut raw = [0u8; 6];
    getrandom::getrandom(&mut raw).map_err(|e| io(std::io::Error::other(e)))?;
    let id: String = std::iter::once("node-".to_string())
        .chain(raw.iter().map(|b| format!("{b:02x}")))
        .collect();
    crate::durable::write(&path, format!("{id}\n").as_bytes(), 0o644).map_err(|f| {
        BrokerError::DataDir {
            path: f.path,
            source: f.source,
        }
    })?;
    Ok(id)
}

/// A random non-zero number naming this run of the node: the `source` of
/// the events it accepts until it stops. A new one at every start, because
/// a node that restarts may have lost some of what it accepted (unsynced
/// under `interval`, or a data dir restored from a copy), and its peers
/// must then send those events back to it rather than skip them as its own.
pub fn incarnation() -> Result<u64, BrokerError> {
    loop {
        let mut raw = [0u8; 8];
        getrandom::getrandom(&mut raw).map_err(|e| BrokerError::Random(e.to_string()))?;
        let n = u64::from_le_bytes(raw);
        if n != 0 {
            return Ok(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_across_calls() {
        let dir = std::env::temp_dir().join(format!("spread-node-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = load_or_create(&dir).unwrap();
        assert!(a.starts_with("node-") && a.len() == 17, "{a}");
        assert_eq!(load_or_create(&dir).unwrap(), a);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
