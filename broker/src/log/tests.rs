use std::path::Path;

use proptest::prelude::*;
use spread_protocol::{Event, EventId, EventKind, EventParts};

use super::*;

fn event(iteration: u64, topic: &str, payload: &[u8]) -> Event {
    EventParts {
        topic,
        payload,
        timestamp: iteration,
        origin: "n1",
        id: EventId([iteration as u8; 16]),
        iteration,
        kind: EventKind::Value,
        source: 0,
    }
    .encode()
}

fn opts(dir: &Path, segment_bytes: u64) -> LogOptions {
    LogOptions {
        dir: dir.join("log"),
        segment_bytes,
        durability: Durability::Never,
        retention: retention::Retention::default(),
        repair: false,
    }
}

fn open(dir: &Path, segment_bytes: u64) -> (Log, Recovery, Vec<Event>) {
    let mut restored = Vec::new();
    let (log, rec) = Log::open(opts(dir, segment_bytes), |e| restored.push(e)).unwrap();
    (log, rec, restored)
}

fn write_events(log: &mut Log, range: std::ops::RangeInclusive<u64>, per_round: u64) {
    for it in range {
        log.append(&event(it, &format!("t/{}", it % 5), &it.to_le_bytes()));
        if it % per_round == 0 {
            log.write().unwrap();
        }
    }
    log.write().unwrap();
}

#[test]
fn reopen_restores_every_event_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, rec, restored) = open(dir.path(), 1 << 20);
    assert_eq!(rec.records, 0);
    assert!(restored.is_empty());
    write_events(&mut log, 1..=100, 7);
    drop(log);
    let (_, rec, restored) = open(dir.path(), 1 << 20);
    assert_eq!(rec.records, 100);
    assert_eq!(rec.last_iteration, Some(100));
    assert!(rec.truncated.is_none());
    let iters: Vec<u64> = restored.iter().map(Event::iteration).collect();
    assert_eq!(iters, (1..=100).collect::<Vec<_>>());
    assert_eq!(restored[41], event(42, "t/2", &42u64.to_le_bytes()));
}

#[test]
fn segments_roll_and_reads_start_mid_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _, _) = open(dir.path(), 4096);
    write_events(&mut log, 1..=500, 3);
    assert!(log.segments.len() > 5, "{} segments", log.segments.len());
    // The cursor starts from the sparse index, mid-segment.
    assert_eq!(
        cursor_read_all(&mut log.cursor(321), 480, 1000),
        (322..=480).collect::<Vec<_>>()
    );
    // Limits are honoured.
    let mut some = Vec::new();
    let missed = log.cursor(0).read(u64::MAX, 10, usize::MAX, &mut some);
    assert_eq!(missed.unwrap(), cursor::Missed::None);
    assert_eq!(some.len(), 10);
    // Appending continues in the last segment after a reopen.
    drop(log);
    let (mut log, rec, _) = open(dir.path(), 4096);
    assert_eq!(rec.records, 500);
    write_events(&mut log, 501..=510, 100);
    drop(log);
    let (_, rec, _) = open(dir.path(), 4096);
    assert_eq!(rec.records, 510);
}

#[test]
fn torn_tail_is_truncated_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _, _) = open(dir.path(), 1 << 20);
    write_events(&mut log, 1..=10, 10);
    let path = log.segments[0].path.clone();
    drop(log);
    let full = std::fs::metadata(&path).unwrap().len();
    // Cut 5 bytes off the last record.
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(full - 5).unwrap();
    drop(f);
    let (mut log, rec, restored) = open(dir.path(), 1 << 20);
    assert_eq!(rec.records, 9);
    let (_, dropped, _) = rec.truncated.clone().unwrap();
    assert_eq!(full - 5 - std::fs::metadata(&path).unwrap().len(), dropped);
    assert_eq!(restored.last().unwrap().iteration(), 9);
    // The log goes on from there.
    write_events(&mut log, 10..=12, 100);
    drop(log);
    let (_, rec, _) = open(dir.path(), 1 << 20);
    assert_eq!((rec.records, rec.last_iteration), (12, Some(12)));
}

#[test]
fn flipped_bytes_in_the_tail_drop_only_damaged_records() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _, _) = open(dir.path(), 1 << 20);
    write_events(&mut log, 1..=10, 10);
    let path = log.segments[0].path.clone();
    drop(log);
    let mut data = std::fs::read(&path).unwrap();
    let n = data.len();
    data[n - 3] ^= 0xff; // inside the last record's event
    std::fs::write(&path, &data).unwrap();
    let (_, rec, restored) = open(dir.path(), 1 << 20);
    assert_eq!(rec.records, 9);
    assert_eq!(rec.truncated.unwrap().2, "checksum mismatch");
    assert_eq!(restored.len(), 9);
}

#[test]
fn damage_before_the_last_segment_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _, _) = open(dir.path(), 2048);
    write_events(&mut log, 1..=200, 5);
    let first = log.segments[0].path.clone();
    drop(log);
    let mut data = std::fs::read(&first).unwrap();
    data[40] ^= 0x01;
    std::fs::write(&first, &data).unwrap();
    let err = Log::open(opts(dir.path(), 2048), |_| {}).err().unwrap();
    assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains(&first.display().to_string()));
}

#[test]
fn durability_parses() {
    assert_eq!("always".parse::<Durability>(), Ok(Durability::Always));
    assert_eq!("never".parse::<Durability>(), Ok(Durability::Never));
    assert_eq!(
        "interval:20ms".parse::<Durability>(),
        Ok(Durability::Interval(Duration::from_millis(20)))
    );
    assert!("sometimes".parse::<Durability>().is_err());
}

proptest! {
    /// Appends, a crash that cuts the last segment at any byte, recovery:
    /// the recovered events are exactly the records wholly before the cut,
    /// and the log accepts appends again afterwards.
    #[test]
    fn recovery_after_a_cut_at_any_byte(
        rounds in proptest::collection::vec(1usize..6, 1..8),
        cut_frac in 0.0f64..1.0,
        payload_len in 0usize..64,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _, _) = open(dir.path(), 1 << 20);
        let mut it = 0;
        let path = dir.path().join("log").join(segment::file_name(1));
        for n in rounds {
            for _ in 0..n {
                it += 1;
                log.append(&event(it, "p/q", &vec![it as u8; payload_len]));
            }
            log.write().unwrap();
        }
        drop(log);
        let full = std::fs::metadata(&path).unwrap().len();
        let cut = segment::HEADER_LEN as u64
            + ((full - segment::HEADER_LEN as u64) as f64 * cut_frac) as u64;
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(cut).unwrap();
        drop(f);

        let (mut log, rec, restored) = open(dir.path(), 1 << 20);
        let record_len = record::HEADER as u64 + event(1, "p/q", &vec![0; payload_len]).encoded().len() as u64;
        let survivors = (cut - segment::HEADER_LEN as u64) / record_len;
        prop_assert_eq!(rec.records, survivors);
        prop_assert_eq!(restored.len() as u64, survivors);
        for (i, e) in restored.iter().enumerate() {
            prop_assert_eq!(e.iteration(), i as u64 + 1);
        }
        log.append(&event(survivors + 1, "p/q", b"again"));
        log.write().unwrap();
        drop(log);
        let (_, rec, _) = open(dir.path(), 1 << 20);
        prop_assert_eq!(rec.records, survivors + 1);
    }
}

#[test]
fn a_checkpoint_skips_covered_segments_and_replays_only_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _, _) = open(dir.path(), 4096);
    write_events(&mut log, 1..=500, 10);
    // The table at iteration 300: the latest event of each of the 5 topics.
    let table: Vec<Event> = (296..=300)
        .map(|it| event(it, &format!("t/{}", it % 5), &it.to_le_bytes()))
        .collect();
    checkpoint::write(&dir.path().join("log"), 300, &table).unwrap();
    drop(log);

    let (_, rec, restored) = open(dir.path(), 4096);
    assert_eq!(rec.checkpoint, Some(300));
    assert!(rec.skipped_segments > 3, "{} skipped", rec.skipped_segments);
    assert_eq!(rec.last_iteration, Some(500));
    // The checkpoint's events, then only the log after it.
    let iters: Vec<u64> = restored.iter().map(Event::iteration).collect();
    let mut expected: Vec<u64> = (296..=300).collect();
    expected.extend(301..=500);
    assert_eq!(iters, expected);
    // History reads still reach into skipped segments.
    let (log, _, _) = open(dir.path(), 4096);
    assert_eq!(cursor_read_all(&mut log.cursor(0), 500, 64).len(), 500);
}

#[test]
fn a_cursor_sees_segments_created_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _, _) = open(dir.path(), 4096);
    let mut cursor = log.cursor(0); // no segment exists yet
    write_events(&mut log, 1..=200, 10);
    assert_eq!(
        cursor_read_all(&mut cursor, 200, 64),
        (1..=200).collect::<Vec<_>>()
    );
}

#[test]
fn retention_deletes_covered_segments_and_remembers_where_history_starts() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path(), 4096);
    o.retention = retention::Retention {
        max_bytes: Some(8192),
        max_age: None,
    };
    let (mut log, _) = Log::open(o.clone(), |_| {}).unwrap();
    write_events(&mut log, 1..=500, 10);
    let before = log.segments.len();
    // Nothing is covered by a checkpoint yet: nothing may go.
    assert_eq!(log.enforce_retention(0).unwrap(), 0);
    let deleted = log.enforce_retention(400).unwrap();
    assert!(deleted > 0 && deleted < before, "{deleted} of {before}");
    let from = log.retained_from().unwrap();
    assert!(
        from <= 401,
        "history from {from} must include everything after the checkpoint"
    );
    // What is left reads back from `from` on; what was before is reported
    // missing, not read.
    let mut cursor = log.cursor(0);
    let mut out = Vec::new();
    let missed = cursor.read(500, usize::MAX, usize::MAX, &mut out).unwrap();
    assert_eq!(
        missed,
        cursor::Missed::Range {
            first: 1,
            last: from - 1
        }
    );
    assert_eq!(
        cursor_read_all(&mut cursor, 500, 64),
        (from..=500).collect::<Vec<_>>()
    );
    drop(log);
    let (log, _) = Log::open(o, |_| {}).unwrap();
    assert_eq!(log.retained_from(), Some(from));
}

fn cursor_read_all(cursor: &mut cursor::LogCursor, until: u64, limit: usize) -> Vec<u64> {
    let mut out = Vec::new();
    loop {
        let before = out.len();
        let missed = cursor.read(until, limit, usize::MAX, &mut out).unwrap();
        assert_eq!(missed, cursor::Missed::None);
        if out.len() == before {
            return out.iter().map(Event::iteration).collect();
        }
    }
}

#[test]
fn cursor_follows_appends_and_segment_rolls() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments: the 300 events span many of them.
    let (mut log, _, _) = open(dir.path(), 4096);
    write_events(&mut log, 1..=100, 7);
    let mut cursor = cursor::LogCursor::new(&dir.path().join("log"), 0);
    // Nothing past `until` is read, and limits hold.
    let mut out = Vec::new();
    cursor.read(40, 10, usize::MAX, &mut out).unwrap();
    assert_eq!(out.len(), 10);
    assert_eq!(
        cursor_read_all(&mut cursor, 40, 10),
        (11..=40).collect::<Vec<_>>()
    );
    assert_eq!(cursor.position(), 40);
    assert_eq!(
        cursor_read_all(&mut cursor, 100, 1000),
        (41..=100).collect::<Vec<_>>()
    );
    // Appends (and new segments) after the cursor reached the end.
    write_events(&mut log, 101..=300, 13);
    assert!(segment::list(&dir.path().join("log")).unwrap().len() > 3);
    assert_eq!(
        cursor_read_all(&mut cursor, 300, 64),
        (101..=300).collect::<Vec<_>>()
    );
    // A cursor starting mid-log skips what precedes its position.
    let mut late = cursor::LogCursor::new(&dir.path().join("log"), 250);
    assert_eq!(
        cursor_read_all(&mut late, 300, 1000),
        (251..=300).collect::<Vec<_>>()
    );
}

#[test]
fn cursor_reads_records_larger_than_its_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _, _) = open(dir.path(), 64 << 20);
    let big = vec![7u8; 3 << 20];
    for it in 1..=3 {
        log.append(&event(it, "big", &big));
    }
    log.write().unwrap();
    let mut cursor = cursor::LogCursor::new(&dir.path().join("log"), 0);
    let mut out = Vec::new();
    cursor.read(3, 10, usize::MAX, &mut out).unwrap();
    cursor.read(3, 10, usize::MAX, &mut out).unwrap();
    cursor.read(3, 10, usize::MAX, &mut out).unwrap();
    assert_eq!(out.len(), 3);
    assert!(out.iter().all(|e| e.payload_bytes() == &big[..]));
}

#[test]
fn cursor_reports_history_deleted_before_it_was_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path(), 4096);
    o.retention = retention::Retention {
        max_bytes: Some(1),
        max_age: None,
    };
    let mut restored = Vec::new();
    let (mut log, _) = Log::open(o, |e| restored.push(e)).unwrap();
    write_events(&mut log, 1..=200, 10);
    let deleted = log.enforce_retention(150).unwrap();
    assert!(deleted > 0);
    let kept = log.retained_from().unwrap();
    let mut cursor = cursor::LogCursor::new(&dir.path().join("log"), 5);
    let mut out = Vec::new();
    let missed = cursor.read(200, 1000, usize::MAX, &mut out).unwrap();
    assert_eq!(
        missed,
        cursor::Missed::Range {
            first: 6,
            last: kept - 1
        }
    );
    assert!(out.is_empty());
    assert_eq!(
        cursor_read_all(&mut cursor, 200, 1000),
        (kept..=200).collect::<Vec<_>>()
    );
}

#[test]
fn what_an_interrupted_roll_left_is_removed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _, _) = open(dir.path(), 1 << 20);
        write_events(&mut log, 1..=10, 5);
    }
    let log_dir = dir.path().join("log");
    // A segment still under its temporary name, and a last one cut inside
    // its header (a crash of an older version during a roll).
    std::fs::write(
        log_dir.join(format!("{}.tmp", segment::file_name(11))),
        b"SPREAD",
    )
    .unwrap();
    std::fs::write(log_dir.join(segment::file_name(11)), b"SPREAD").unwrap();
    let (mut log, rec, restored) = open(dir.path(), 1 << 20);
    assert_eq!(restored.len(), 10);
    assert_eq!(rec.last_iteration, Some(10));
    assert_eq!(segment::list(&log_dir).unwrap().len(), 1);
    assert!(!log_dir
        .join(format!("{}.tmp", segment::file_name(11)))
        .exists());
    // And the log goes on.
    write_events(&mut log, 11..=12, 1);
    drop(log);
    assert_eq!(open(dir.path(), 1 << 20).2.len(), 12);
}

#[test]
fn damage_followed_by_valid_records_is_corruption_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _, _) = open(dir.path(), 1 << 20);
    write_events(&mut log, 1..=1000, 10);
    let path = log.segments[0].path.clone();
    drop(log);
    let mut data = std::fs::read(&path).unwrap();
    // A payload byte of an early record: a bad sector, not a torn write.
    data[segment::HEADER_LEN + 3 * 60] ^= 0x40;
    std::fs::write(&path, &data).unwrap();
    let err = Log::open(opts(dir.path(), 1 << 20), |_| {}).err().unwrap();
    assert!(matches!(err, LogError::DamagedMiddle { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), data, "nothing was cut");
    // --repair-log cuts there and keeps the rest aside.
    let mut repair = opts(dir.path(), 1 << 20);
    repair.repair = true;
    let mut restored = 0;
    let (_, rec) = Log::open(repair, |_| restored += 1).unwrap();
    assert!(restored < 10 && rec.truncated.is_some(), "{restored}");
    let aside: Vec<_> = std::fs::read_dir(dir.path().join("log"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".damaged-"))
        .collect();
    assert_eq!(aside.len(), 1);
}
