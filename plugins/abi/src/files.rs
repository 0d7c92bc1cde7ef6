//! Helpers for sinks that write files.

use std::fs::File;

/// Cuts a line a crash left torn at the end of `f`, so that the file holds
/// whole lines only (the torn event is delivered again: it is after the
/// host's checkpoint). For sinks that append one line per event; call it
/// when the sink opens.
///
/// Ending a torn line with a newline instead would leave a line that may look whole
/// with its payload cut short.
pub fn cut_torn_line(f: &mut File) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let len = f.metadata()?.len();
    let mut end = len;
    let mut buf = [0u8; 4096];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            let keep = start + i as u64 + 1;
            if keep < len {
                f.set_len(keep)?;
            }
            return Ok(());
        }
        end = start;
    }
    f.set_len(0)
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;

    use super::*;

    fn cut(content: &[u8]) -> Vec<u8> {
        let path = std::env::temp_dir().join(format!(
            "spread-plugin-cut-{}-{}",
            std::process::id(),
            content.len()
        ));
        std::fs::write(&path, content).unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .read(true)
            .open(&path)
            .unwrap();
        cut_torn_line(&mut f).unwrap();
        let kept = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        kept
    }

    #[test]
    fn a_torn_last_line_is_cut_and_whole_lines_stay() {
        assert_eq!(cut(b""), b"");
        assert_eq!(cut(b"a\tb\n"), b"a\tb\n");
        assert_eq!(cut(b"a\n1796\t17961966"), b"a\n");
        assert_eq!(cut(b"torn only"), b"");
        // Beyond one read chunk.
        let mut long = b"x\n".to_vec();
        long.extend(vec![b'y'; 10_000]);
        assert_eq!(cut(&long), b"x\n");
    }
}
