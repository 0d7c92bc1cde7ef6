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
