//! Buffer tests against the real filesystem (temporary directories), plus a
//! property test against a trivial in-memory model.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use segment::{Parsed, RECORD_HEADER_LEN};

fn cfg(durability: Durability) -> BufferConfig {
    BufferConfig {
        durability,
        commit_interval_ms: 1000,
        spill_after_ms: 2000,
        max_disk_bytes: 64 * 1024 * 1024,
        segment_bytes: 16 * 1024,
        when_full: WhenFull::DropOldest,
        memory_budget_bytes: 1024 * 1024,
        max_age_ms: 0,
    }
}

fn rec(seq: u64, lane: Lane) -> Record {
    Record {
        seq,
        lane,
        ts_ms: 1_700_000_000_000 + seq as i64,
        topic: format!("gw/t/{seq}"),
        payload: format!(
            "{{\"seq\":{seq},\"pad\":\"{}\"}}",
            "x".repeat((seq % 50) as usize)
        )
        .into_bytes(),
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    metrics: Arc<Metrics>,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            metrics: Arc::new(Metrics::new()),
        }
    }

    fn open(&self, c: &BufferConfig) -> Buffer {
        Buffer::open(c, self.dir.path(), self.metrics.clone())
            .unwrap()
            .0
    }

    fn segments(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("buffer/summaries"))
            .unwrap()
            .count()
    }
}

/// Publishes and acknowledges up to `n` records; returns their seqs.
fn deliver(b: &mut Buffer, n: usize, ack: bool) -> Vec<u64> {
    let mut out = Vec::new();
    while out.len() < n {
        let Some(r) = b.next_unsent(1_700_000_000_000) else {
            break;
        };
        out.push(r.seq);
        if ack {
            b.ack(r.seq);
        }
    }
    out
}

#[test]
fn always_mode_survives_a_restart_and_resumes_after_the_acked_cursor() {
    let f = Fixture::new();
    let c = cfg(Durability::Always);
    let mut b = f.open(&c);
    let first = b.next_seq();
    for s in first..first + 10 {
        b.push(rec(s, Lane::Summary), 0);
    }
    assert_eq!(
        deliver(&mut b, 4, true),
        (first..first + 4).collect::<Vec<_>>()
    );
    b.close(0);
    drop(b);
    let mut b = f.open(&c);
    assert!(
        b.next_seq() > first + 9,
        "sequence numbers never repeat after a restart"
    );
    assert_eq!(
        deliver(&mut b, 100, true),
        (first + 4..first + 10).collect::<Vec<_>>()
    );
    b.maintain(5_000, true);
    assert!(b.is_empty());
    assert_eq!(f.segments(), 0, "fully acknowledged segments are deleted");
}

#[test]
fn outage_mode_does_not_touch_disk_while_upstream_acknowledges() {
    let f = Fixture::new();
    let mut b = f.open(&cfg(Durability::Outage));
    b.maintain(0, true);
    let written_at_start = f.metrics.buffer_bytes_written.get();
    let s0 = b.next_seq();
    for i in 0..1000u64 {
        b.push(rec(s0 + i, Lane::Summary), i as i64);
        deliver(&mut b, 10, true);
        b.maintain(i as i64, true);
    }
    assert!(b.is_empty());
    assert_eq!(f.segments(), 0);
    assert_eq!(
        f.metrics.buffer_bytes_written.get(),
        written_at_start,
        "no byte written"
    );
}

#[test]
fn a_record_waiting_for_its_batch_is_not_written_in_outage_mode() {
    let f = Fixture::new();
    let mut b = f.open(&cfg(Durability::Outage));
    b.set_batch_wait_ms(30_000);
    b.maintain(0, true);
    let s0 = b.next_seq();
    b.push(rec(s0, Lane::Summary), 0);
    b.maintain(2_100, true);
    b.maintain(31_000, true);
    assert_eq!(
        f.segments(),
        0,
        "within max_delay + spill_after: memory only"
    );
    b.maintain(32_100, true);
    assert_eq!(f.segments(), 1, "unacknowledged beyond both: written");
}

#[test]
fn outage_mode_writes_when_upstream_is_down_and_when_acks_are_late() {
    let f = Fixture::new();
    let c = cfg(Durability::Outage);
    let mut b = f.open(&c);
    b.maintain(0, true);
    let s0 = b.next_seq();
    b.push(rec(s0, Lane::Summary), 0);
    b.maintain(100, true);
    assert_eq!(f.segments(), 0, "young and upstream up: memory only");
    b.maintain(2_100, true);
    assert_eq!(f.segments(), 1, "unacknowledged for spill_after: written");
    b.push(rec(s0 + 1, Lane::Summary), 2_200);
    b.maintain(2_200, false);
    b.maintain(3_200, false);
    // A crash now (no close) loses nothing: both are on disk and fsynced.
    drop(b);
    let mut b = f.open(&c);
    assert_eq!(deliver(&mut b, 10, true), vec![s0, s0 + 1]);
}

#[test]
fn alarms_are_delivered_before_the_summary_backlog_and_are_durable_by_their_group_commit() {
    let f = Fixture::new();
    let c = cfg(Durability::Outage);
    let mut b = f.open(&c);
    b.maintain(0, true);
    let s = b.next_seq();
    for i in 0..5 {
        b.push(rec(s + i, Lane::Summary), 0);
    }
    b.push(rec(s + 5, Lane::Alarm), 0);
    assert_eq!(b.commit_due(), Some(GROUP_COMMIT_MS));
    b.maintain(GROUP_COMMIT_MS, true);
    assert_eq!(b.commit_due(), None);
    // Crash after the group commit and nothing else: the alarm is fsynced.
    drop(b);
    let mut b = f.open(&c);
    assert_eq!(
        deliver(&mut b, 10, true),
        vec![s + 5],
        "the summaries were in memory only (outage mode, no outage)"
    );
    let first_alarm = s + 5;
    let mut b2 = {
        drop(b);
        f.open(&c)
    };
    let s = b2.next_seq();
    for i in 0..3 {
        b2.push(rec(s + i, Lane::Summary), 0);
    }
    b2.push(rec(s + 3, Lane::Alarm), 0);
    assert_eq!(
        deliver(&mut b2, 10, true),
        // The first alarm's acknowledgement never reached a durable cursor
        // (a crash before any commit), so its segment was kept and it is
        // sent again (upstream deduplicates by seq); then the new alarm,
        // then summaries oldest first.
        vec![first_alarm, s + 3, s, s + 1, s + 2],
        "alarms first, then summaries oldest first"
    );
}

#[test]
fn rewind_resends_unacknowledged_records_in_order() {
    let f = Fixture::new();
    let mut b = f.open(&cfg(Durability::Always));
    let s = b.next_seq();
    for i in 0..6 {
        b.push(rec(s + i, Lane::Summary), 0);
    }
    let sent = deliver(&mut b, 4, false);
    b.ack(sent[1]);
    assert_eq!(b.rewind(), 3);
    assert_eq!(
        deliver(&mut b, 10, true),
        vec![s, s + 2, s + 3, s + 4, s + 5]
    );
}

#[test]
fn drop_oldest_keeps_the_newest_and_counts_what_it_dropped() {
    let f = Fixture::new();
    let mut c = cfg(Durability::Always);
    c.max_disk_bytes = BufferConfig::MIN_DISK_BYTES;
    c.segment_bytes = 64 * 1024;
    let mut b = f.open(&c);
    let s = b.next_seq();
    let n = 20_000u64;
    for i in 0..n {
        b.push(rec(s + i, Lane::Summary), 0);
        if i % 100 == 0 {
            b.maintain(0, false);
        }
    }
    b.maintain(0, false);
    assert!(b.disk_bytes() <= c.max_disk_bytes, "{}", b.disk_bytes());
    let dropped = f.metrics.buffer_dropped_oldest.get();
    assert!(dropped > 0);
    let delivered = deliver(&mut b, n as usize, true);
    assert_eq!(
        *delivered.last().unwrap(),
        s + n - 1,
        "the newest record is kept"
    );
    assert!(delivered.windows(2).all(|w| w[0] < w[1]), "in order");
    assert_eq!(
        delivered.len() as u64 + dropped,
        n,
        "every record is delivered or counted as dropped"
    );
}

#[test]
fn drop_newest_refuses_new_records_and_counts_them() {
    let f = Fixture::new();
    let mut c = cfg(Durability::Always);
    c.max_disk_bytes = BufferConfig::MIN_DISK_BYTES;
    c.when_full = WhenFull::DropNewest;
    c.memory_budget_bytes = 64 * 1024;
    let mut b = f.open(&c);
    let s = b.next_seq();
    for i in 0..20_000u64 {
        b.push(rec(s + i, Lane::Summary), 0);
    }
    b.maintain(0, false);
    assert!(b.disk_bytes() <= c.max_disk_bytes);
    assert!(f.metrics.buffer_dropped_disk_full.get() > 0);
    assert_eq!(
        deliver(&mut b, 1, true),
        vec![s],
        "the oldest record is kept"
    );
}

#[test]
fn records_older_than_max_age_are_dropped_at_delivery_and_counted() {
    let f = Fixture::new();
    let mut c = cfg(Durability::Always);
    c.max_age_ms = 60_000;
    let mut b = f.open(&c);
    let s = b.next_seq();
    let mut old = rec(s, Lane::Summary);
    old.ts_ms = 1_700_000_000_000 - 120_000;
    b.push(old, 0);
    b.push(rec(s + 1, Lane::Summary), 0);
    assert_eq!(deliver(&mut b, 10, true), vec![s + 1]);
    assert_eq!(f.metrics.buffer_expired.get(), 1);
}

#[test]
fn a_torn_tail_is_cut_and_earlier_records_survive() {
    let f = Fixture::new();
    let c = cfg(Durability::Always);
    let mut b = f.open(&c);
    let s = b.next_seq();
    for i in 0..5 {
        b.push(rec(s + i, Lane::Summary), 0);
    }
    b.close(0);
    drop(b);
    let seg = std::fs::read_dir(f.dir.path().join("buffer/summaries"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let (mut b, report) = Buffer::open(&c, f.dir.path(), f.metrics.clone()).unwrap();
    assert_eq!(report.torn_tails, 1);
    assert_eq!(deliver(&mut b, 10, true), (s..s + 4).collect::<Vec<_>>());
}

#[test]
fn a_damaged_record_is_quarantined_and_the_rest_salvaged() {
    let f = Fixture::new();
    let c = cfg(Durability::Always);
    let mut b = f.open(&c);
    let s = b.next_seq();
    for i in 0..5 {
        b.push(rec(s + i, Lane::Summary), 0);
    }
    b.close(0);
    drop(b);
    let seg = std::fs::read_dir(f.dir.path().join("buffer/summaries"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&seg).unwrap();
    let scan = segment::scan(&bytes);
    let (off, _) = scan.records[2];
    bytes[off + RECORD_HEADER_LEN + 3] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();
    assert!(inspect::is_damaged(&inspect::verify(f.dir.path())));
    let (mut b, report) = Buffer::open(&c, f.dir.path(), f.metrics.clone()).unwrap();
    assert_eq!(report.quarantined.len(), 1);
    assert!(report.quarantined[0].exists());
    assert_eq!(deliver(&mut b, 10, true), vec![s, s + 1, s + 3, s + 4]);
    assert!(
        !inspect::is_damaged(&inspect::verify(f.dir.path())),
        "healthy after recovery"
    );
}

#[test]
fn garbage_files_never_stop_start_up() {
    let f = Fixture::new();
    let dir = f.dir.path().join("buffer/summaries");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("00000000000000000001.seg"), b"").unwrap();
    std::fs::write(dir.join("00000000000000000002.seg"), vec![0xA5; 5000]).unwrap();
    std::fs::write(dir.join("junk.tmp"), b"hello").unwrap();
    std::fs::write(f.dir.path().join("buffer/cursor.a"), b"short").unwrap();
    let (mut b, _) =
        Buffer::open(&cfg(Durability::Always), f.dir.path(), f.metrics.clone()).unwrap();
    assert!(deliver(&mut b, 10, true).is_empty());
}

#[derive(Debug, Clone)]
enum Op {
    Push(u8),
    Maintain,
    Deliver { n: u8, ack: bool },
    Rewind,
    Restart,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..20).prop_map(Op::Push),
        2 => Just(Op::Maintain),
        3 => (1u8..15, any::<bool>()).prop_map(|(n, ack)| Op::Deliver { n, ack }),
        1 => Just(Op::Rewind),
        1 => Just(Op::Restart),
        1 => Just(Op::Crash),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The buffer against a model: it never returns a record the model
    /// lacks, never loses one that was written before a crash, and never
    /// reorders within a delivery session.
    #[test]
    fn buffer_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let f = Fixture::new();
        let mut c = cfg(Durability::Always);
        c.segment_bytes = 4096;
        let mut b = f.open(&c);
        let mut model: BTreeMap<u64, Record> = BTreeMap::new();
        let mut durable: BTreeSet<u64> = BTreeSet::new();
        let mut acked: BTreeSet<u64> = BTreeSet::new();
        let mut unflushed: BTreeSet<u64> = BTreeSet::new();
        let mut last_in_session = 0u64;
        for op in ops {
            match op {
                Op::Push(n) => for _ in 0..n {
                    let r = rec(b.next_seq(), Lane::Summary);
                    model.insert(r.seq, r.clone());
                    unflushed.insert(r.seq);
                    b.push(r, 0);
                },
                Op::Maintain => {
                    b.maintain(10_000, false);
                    durable.extend(unflushed.iter().copied());
                    unflushed.clear();
                }
                Op::Deliver { n, ack } => for _ in 0..n {
                    let Some(r) = b.next_unsent(1_700_000_000_000) else { break };
                    prop_assert_eq!(Some(&*r), model.get(&r.seq), "a record the model lacks");
                    prop_assert!(r.seq > last_in_session, "reordered: {} after {}", r.seq, last_in_session);
                    last_in_session = r.seq;
                    if ack {
                        b.ack(r.seq);
                        acked.insert(r.seq);
                    }
                },
                Op::Rewind => {
                    b.rewind();
                    last_in_session = 0;
                }
                Op::Restart => {
                    b.close(0);
                    durable.extend(unflushed.iter().copied());
                    unflushed.clear();
                    drop(b);
                    b = f.open(&c);
                    last_in_session = 0;
                }
                Op::Crash => {
                    // Dropped without close: what was not written may be lost
                    // (or may have reached the file already); it is not owed.
                    unflushed.clear();
                    drop(b);
                    b = f.open(&c);
                    last_in_session = 0;
                }
            }
        }
        b.rewind();
        let mut seen = BTreeSet::new();
        while let Some(r) = b.next_unsent(1_700_000_000_000) {
            prop_assert_eq!(Some(&*r), model.get(&r.seq));
            seen.insert(r.seq);
            b.ack(r.seq);
        }
        for s in durable.difference(&acked) {
            prop_assert!(seen.contains(s), "lost durable record {}", s);
        }
    }
}

#[test]
fn block_policy_reports_no_room_instead_of_dropping() {
    let f = Fixture::new();
    let mut c = cfg(Durability::Always);
    c.max_disk_bytes = BufferConfig::MIN_DISK_BYTES;
    c.segment_bytes = 64 * 1024;
    c.when_full = WhenFull::Block;
    let mut b = f.open(&c);
    let s = b.next_seq();
    let mut pushed = 0u64;
    while b.has_room() {
        b.push(rec(s + pushed, Lane::Summary), 0);
        pushed += 1;
        assert!(pushed < 100_000, "the bound is never reached");
    }
    assert_eq!(f.metrics.buffer_dropped_oldest.get(), 0);
    assert_eq!(f.metrics.buffer_dropped_disk_full.get(), 0);
    // Delivering frees room again.
    let delivered = deliver(&mut b, pushed as usize, true);
    assert_eq!(
        delivered.len() as u64,
        pushed,
        "everything held back is delivered"
    );
    // Room comes back once the cursor that covers the delivered segments is
    // durable (at the next commit), since segments are deleted only then.
    b.maintain(10_000, true);
    assert!(b.has_room());
}

/// Summary segment files, oldest first.
fn summary_segments(f: &Fixture) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(f.dir.path().join("buffer/summaries"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// (offset, length, seq) of every record of a segment file.
fn records_of(path: &std::path::Path) -> Vec<(usize, usize, u64)> {
    let buf = std::fs::read(path).unwrap();
    segment::scan(&buf)
        .records
        .into_iter()
        .map(
            |(off, len)| match segment::parse_record(&buf[off..off + len]) {
                Parsed::Record { body, .. } => (off, len, body.seq),
                other => panic!("{other:?}"),
            },
        )
        .collect()
}

/// Writes a backlog of `n` summaries in small segments and reopens the
/// buffer, so that nothing is held in memory: delivery reads the disk.
fn backlog_on_disk(f: &Fixture, c: &BufferConfig, n: u64) -> (Buffer, Vec<u64>) {
    let mut b = f.open(c);
    let s = b.next_seq();
    for i in 0..n {
        b.push(rec(s + i, Lane::Summary), 0);
    }
    b.close(0);
    drop(b);
    (f.open(c), (s..s + n).collect())
}

#[test]
fn corrupt_record_mid_segment_skips_only_itself() {
    let f = Fixture::new();
    let mut c = cfg(Durability::Always);
    c.segment_bytes = 1024;
    let (mut b, all) = backlog_on_disk(&f, &c, 100);
    let segs = summary_segments(&f);
    assert!(segs.len() >= 5, "{} segments", segs.len());
    // Bit rot while the buffer runs, in closed segments: a body byte (bad
    // CRC), a record marker, and a length field that now points past the
    // end of the segment.
    let mut lost = Vec::new();
    let mut lost_bytes = 0;
    for (seg, damage) in [(&segs[1], 0), (&segs[2], 1), (&segs[3], 2)] {
        let recs = records_of(seg);
        assert!(recs.len() >= 3);
        let (off, len, seq) = recs[recs.len() / 2];
        let mut bytes = std::fs::read(seg).unwrap();
        match damage {
            0 => bytes[off + RECORD_HEADER_LEN + 2] ^= 0x10,
            1 => bytes[off] ^= 0xFF,
            _ => bytes[off + 3] = 0x10,
        }
        std::fs::write(seg, &bytes).unwrap();
        lost.push(seq);
        lost_bytes += len as u64;
    }
    let delivered = deliver(&mut b, 1000, true);
    let want: Vec<u64> = all.iter().copied().filter(|s| !lost.contains(s)).collect();
    assert_eq!(
        delivered, want,
        "every record before and after a damaged one is delivered"
    );
    let m = &f.metrics;
    assert_eq!(m.buffer_corrupt_regions.get(), 3);
    assert_eq!(
        m.buffer_corrupt_bytes.get(),
        lost_bytes,
        "exactly the damaged records' bytes are skipped"
    );
    assert_eq!(m.upstream_dropped_total(), 3);
    b.maintain(10_000, true);
    assert!(b.is_empty());
}

#[test]
fn an_unreadable_segment_delays_delivery_but_loses_nothing() {
    let f = Fixture::new();
    let mut c = cfg(Durability::Always);
    c.segment_bytes = 1024;
    let (mut b, all) = backlog_on_disk(&f, &c, 40);
    let segs = summary_segments(&f);
    let first_of_second = records_of(&segs[1])[0].2;
    let now = 1_700_000_000_000;
    // Read the first segment, then make the second one vanish for a while
    // (an open error, like a transient EIO).
    let mut got = Vec::new();
    while let Some(r) = b.next_unsent(now) {
        got.push(r.seq);
        b.ack(r.seq);
        if r.seq + 1 == first_of_second {
            break;
        }
    }
    let away = segs[1].with_extension("away");
    std::fs::rename(&segs[1], &away).unwrap();
    assert_eq!(b.next_unsent(now).map(|r| r.seq), None, "the lane waits");
    std::fs::rename(&away, &segs[1]).unwrap();
    assert_eq!(
        b.next_unsent(now + 100).map(|r| r.seq),
        None,
        "not before the retry delay"
    );
    while let Some(r) = b.next_unsent(now + 1_000) {
        got.push(r.seq);
        b.ack(r.seq);
    }
    assert_eq!(got, all, "nothing skipped, in order");
    assert_eq!(f.metrics.upstream_dropped_total(), 0);
    assert_eq!(f.metrics.buffer_read_errors.get(), 1);
}

#[test]
fn drop_oldest_never_evicts_alarms_for_summaries() {
    let f = Fixture::new();
    let mut c = cfg(Durability::Always);
    c.max_disk_bytes = 8 * 1024;
    c.segment_bytes = 1024;
    let mut b = f.open(&c);
    let s = b.next_seq();
    // Alarms take most of the bound, in several segments.
    let alarms: Vec<u64> = (s..s + 100).collect();
    for &a in &alarms {
        b.push(rec(a, Lane::Alarm), 0);
    }
    let alarm_segments = std::fs::read_dir(f.dir.path().join("buffer/alarms"))
        .unwrap()
        .count();
    assert!(alarm_segments > 1, "the alarms span several segments");
    assert!(b.disk_bytes() > 6 * 1024, "{}", b.disk_bytes());
    // A flood of summaries, far beyond the bound.
    let n = 2_000;
    for i in 0..n {
        b.push(rec(s + 100 + i, Lane::Summary), 0);
    }
    b.maintain(0, false);
    assert!(b.disk_bytes() <= c.max_disk_bytes, "{}", b.disk_bytes());
    let delivered = deliver(&mut b, 10_000, true);
    assert_eq!(
        delivered[..100],
        alarms[..],
        "every alarm survives the flood"
    );
    let dropped = f.metrics.buffer_dropped_oldest.get() + f.metrics.buffer_dropped_disk_full.get();
    assert!(dropped > 0);
    assert_eq!(
        delivered.len() as u64 - 100 + dropped,
        n,
        "summaries: delivered or counted"
    );
}

#[test]
fn drop_oldest_makes_room_for_an_alarm_from_summaries_first() {
    let f = Fixture::new();
    let mut c = cfg(Durability::Always);
    c.max_disk_bytes = 8 * 1024;
    c.segment_bytes = 1024;
    let mut b = f.open(&c);
    let s = b.next_seq();
    b.push(rec(s, Lane::Alarm), 0);
    for i in 1..500 {
        b.push(rec(s + i, Lane::Summary), 0);
    }
    for i in 500..530 {
        b.push(rec(s + i, Lane::Alarm), 0);
    }
    let delivered = deliver(&mut b, 10_000, true);
    let mut want = vec![s];
    want.extend(s + 500..s + 530);
    assert_eq!(
        delivered[..31],
        want[..],
        "no alarm was evicted while summaries were left"
    );
}

#[test]
fn a_failed_reservation_stops_publication_beyond_the_durable_reservation() {
    let f = Fixture::new();
    let c = cfg(Durability::Always);
    let mut b = f.open(&c);
    let reserved = b.reserved;
    for seq in reserved - 2..reserved + 3 {
        b.push(rec(seq, Lane::Summary), 0);
    }
    // The cursor can no longer be written (as on a read-only remount).
    for slot in ["cursor.a", "cursor.b"] {
        let p = f.dir.path().join("buffer").join(slot);
        let _ = std::fs::remove_file(&p);
        std::fs::create_dir(&p).unwrap();
    }
    let now = 1_700_000_000_000;
    let mut got = Vec::new();
    while let Some(r) = b.next_unsent(now) {
        got.push(r.seq);
        b.ack(r.seq);
    }
    assert_eq!(
        got,
        vec![reserved - 2, reserved - 1],
        "nothing at or above the durable reservation is handed out"
    );
    assert_eq!(b.reserved, reserved, "the reservation did not move");
    assert!(f.metrics.buffer_reservation_failures.get() >= 1);
    assert_eq!(
        b.next_unsent(now + 1_500),
        None,
        "still failing: still waiting"
    );
    for slot in ["cursor.a", "cursor.b"] {
        std::fs::remove_dir(f.dir.path().join("buffer").join(slot)).unwrap();
    }
    while let Some(r) = b.next_unsent(now + 3_000) {
        got.push(r.seq);
        b.ack(r.seq);
    }
    assert_eq!(
        got,
        (reserved - 2..reserved + 3).collect::<Vec<_>>(),
        "published once the reservation is durable"
    );
    b.close(0);
    drop(b);
    let b = f.open(&c);
    assert_eq!(
        b.next_seq(),
        reserved + 1 + RESERVE_BLOCK,
        "the new reservation is durable"
    );
}

#[test]
fn numbering_continues_above_everything_handed_out_after_the_buffer_is_deleted() {
    let f = Fixture::new();
    let c = cfg(Durability::Always);
    let mut b = f.open(&c);
    let s = b.next_seq();
    for i in 0..10 {
        b.push(rec(s + i, Lane::Summary), 0);
    }
    let sent = deliver(&mut b, 10, true);
    assert_eq!(sent.len(), 10);
    b.close(0);
    drop(b);
    std::fs::remove_dir_all(f.dir.path().join("buffer")).unwrap();
    let b = f.open(&c);
    assert!(
        b.next_seq() > *sent.iter().max().unwrap(),
        "next seq {} repeats a number handed out before",
        b.next_seq()
    );
}

#[test]
fn a_record_set_aside_is_not_handed_out_again_and_the_lane_moves_past_it() {
    let f = Fixture::new();
    let c = cfg(Durability::Always);
    let mut b = f.open(&c);
    let s = b.next_seq();
    for i in 0..5 {
        let mut r = rec(s + i, Lane::Summary);
        if i == 1 {
            r.topic = format!("gw/{}/#", "t".repeat(10_000));
            r.payload = vec![b'{', 0xFF, b'}'];
        }
        b.push(r, 0);
    }
    let now = 1_700_000_000_000;
    assert_eq!(deliver(&mut b, 3, false), vec![s, s + 1, s + 2]);
    assert!(b.set_aside(s + 1, "topic has a wildcard", now));
    assert!(!b.set_aside(s + 1, "again", now), "no longer in flight");
    b.ack(s);
    b.ack(s + 2);
    assert_eq!(
        b.lanes[Lane::Summary].acked,
        s + 2,
        "the acked mark moves past it"
    );
    assert_eq!(b.rewind(), 0, "it is not resent after a reconnect");
    assert_eq!(deliver(&mut b, 10, true), vec![s + 3, s + 4]);
    b.maintain(5_000, true);
    assert!(b.is_empty());
    assert_eq!(f.metrics.buffer_set_aside.get(), 1);
    assert_eq!(f.metrics.upstream_dropped_total(), 1);

    let file = f.dir.path().join("buffer/quarantine").join(SET_ASIDE_FILE);
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    let j = &lines[0];
    assert_eq!(j["seq"], s + 1);
    assert_eq!(j["lane"], "summaries");
    assert_eq!(j["reason"], "topic has a wildcard");
    assert_eq!(j["topic_len"], 10_005);
    assert_eq!(j["topic"].as_str().unwrap().len(), 4096, "truncated");
    assert_eq!(j["payload"], "{\u{FFFD}}");
    assert_eq!(j["payload_len"], 3);
    let mut b = {
        drop(b);
        f.open(&c)
    };
    assert_eq!(
        deliver(&mut b, 10, true),
        Vec::<u64>::new(),
        "not after a restart either"
    );
}

#[test]
fn the_set_aside_file_stops_growing_at_its_bound() {
    let f = Fixture::new();
    let mut b = f.open(&cfg(Durability::Always));
    let s = b.next_seq();
    b.push(rec(s, Lane::Alarm), 0);
    let file = f.dir.path().join("buffer/quarantine").join(SET_ASIDE_FILE);
    std::fs::File::create(&file)
        .unwrap()
        .set_len(SET_ASIDE_FILE_MAX)
        .unwrap();
    assert_eq!(deliver(&mut b, 1, false), vec![s]);
    assert!(b.set_aside(s, "topic too long", 0));
    assert_eq!(std::fs::metadata(&file).unwrap().len(), SET_ASIDE_FILE_MAX);
    assert_eq!(f.metrics.buffer_set_aside.get(), 1);
    assert!(b.is_empty());
}

#[test]
fn damage_to_records_still_held_in_memory_is_not_counted_as_lost() {
    let f = Fixture::new();
    let mut c = cfg(Durability::Always);
    c.segment_bytes = 1024;
    let mut b = f.open(&c);
    let s = b.next_seq();
    for i in 0..40 {
        b.push(rec(s + i, Lane::Summary), 0);
    }
    b.maintain(5_000, false);
    let segs = summary_segments(&f);
    let (off, _, _) = records_of(&segs[1])[1];
    let mut bytes = std::fs::read(&segs[1]).unwrap();
    bytes[off + RECORD_HEADER_LEN + 2] ^= 0x10;
    std::fs::write(&segs[1], &bytes).unwrap();
    assert_eq!(
        deliver(&mut b, 100, true),
        (s..s + 40).collect::<Vec<_>>(),
        "the damaged record is delivered from memory"
    );
    assert!(f.metrics.buffer_corrupt_bytes.get() > 0);
    assert_eq!(f.metrics.upstream_dropped_total(), 0, "nothing was lost");
}

#[test]
fn an_acknowledged_alarm_stays_accounted_for_until_a_durable_cursor_covers_it() {
    let f = Fixture::new();
    let c = cfg(Durability::Outage);
    let mut b = f.open(&c);
    b.maintain(0, true);
    let s = b.next_seq();
    b.push(rec(s, Lane::Alarm), 0);
    assert_eq!(deliver(&mut b, 10, true), vec![s]);
    // A crash before the next commit: the acknowledgement is not in a
    // durable cursor, so the segment must still be there, or the alarm
    // would look lost and be sent again under a new seq.
    drop(b);
    let mut b = f.open(&c);
    assert!(
        b.holds(Lane::Alarm, s),
        "the acknowledged alarm is accounted for"
    );
    // Once a cursor covering it is durable, the segment goes.
    assert_eq!(deliver(&mut b, 10, true), vec![s]);
    b.maintain(10_000, true);
    drop(b);
    let mut b = f.open(&c);
    assert!(
        b.holds(Lane::Alarm, s),
        "at or below the durable acknowledged mark"
    );
    assert_eq!(deliver(&mut b, 10, true), Vec::<u64>::new());
}

#[test]
fn a_burst_of_alarms_shares_one_group_commit() {
    let f = Fixture::new();
    let mut c = cfg(Durability::Always);
    c.segment_bytes = 1 << 20;
    let mut b = f.open(&c);
    b.maintain(0, true);
    let fsyncs = || f.metrics.buffer_fsyncs.get();
    let s = b.next_seq();
    // Summaries written but not fsynced yet, as between two commits.
    for i in 0..10 {
        b.push(rec(s + i, Lane::Summary), 1);
    }
    let before = fsyncs();
    let n = 500;
    for i in 0..n {
        b.push(rec(s + 10 + i, Lane::Alarm), 1);
    }
    assert_eq!(fsyncs(), before, "nothing is fsynced before the commit");
    assert_eq!(b.commit_due(), Some(1 + GROUP_COMMIT_MS));
    b.maintain(1 + GROUP_COMMIT_MS, true);
    let cost = fsyncs() - before;
    assert!(
        cost <= 2,
        "{n} alarms pushed together cost {cost} fsyncs (at most one per lane)"
    );
    assert_eq!(
        f.metrics.buffer_last_synced_seq.get(),
        (s + 10 + n - 1) as i64,
        "every alarm of the burst is durable"
    );
    // An alarm asked for before its commit is due is committed first.
    b.push(rec(s + 10 + n, Lane::Alarm), 2);
    let before = fsyncs();
    let handed: Vec<u64> = deliver(&mut b, 1000, true);
    assert_eq!(fsyncs(), before + 1, "one commit for the late alarm");
    assert_eq!(
        handed[..=n as usize],
        (s + 10..=s + 10 + n).collect::<Vec<_>>()[..]
    );
    assert_eq!(handed.len(), n as usize + 11, "then the summaries");
}

#[test]
fn a_spill_encodes_at_most_a_chunk_ahead_of_the_file_and_loses_nothing() {
    let f = Fixture::new();
    let mut c = cfg(Durability::Outage);
    c.segment_bytes = 1024 * 1024;
    let mut b = f.open(&c);
    b.maintain(0, true);
    let s0 = b.next_seq();
    // About 600 KiB of summaries held in memory (upstream up, not yet due).
    let n = 5_000;
    for i in 0..n {
        let mut r = rec(s0 + i, Lane::Summary);
        r.payload.resize(100, b'x');
        b.push(r, 0);
    }
    assert_eq!(f.segments(), 0, "held in memory");
    b.maintain(2_100, true);
    assert_eq!(f.segments(), 1, "spilled into one segment");
    assert!(
        b.lanes[Lane::Summary].pending_capacity() < 2 * WRITE_CHUNK_BYTES,
        "the spill was written in chunks, not encoded whole in memory (which the writer would then hold for good)"
    );
    drop(b);
    let mut b = f.open(&c);
    let got = deliver(&mut b, n as usize + 1, true);
    assert_eq!(
        got,
        (s0..s0 + n).collect::<Vec<_>>(),
        "every record, in order"
    );
}

#[test]
fn backlog_per_lane_and_outage_time_left_follow_what_waits() {
    let f = Fixture::new();
    let mut c = cfg(Durability::Outage);
    c.max_disk_bytes = 1024 * 1024;
    let mut b = f.open(&c);
    let m = &f.metrics;
    let t0 = 1_700_000_000_000;
    b.maintain(t0, false);
    assert_eq!(m.backlog_records.get(Lane::Summary), 0);
    assert_eq!(m.outage_seconds_left.get(), -1, "no input: never full");
    let s0 = b.next_seq();
    // Ten summaries a second for ten seconds while upstream is down, and
    // one alarm.
    let mut pushed = 0;
    for i in 0..100u64 {
        let r = rec(s0 + i, Lane::Summary);
        pushed += lane::encoded_len(&r);
        b.push(r, t0 + i as i64 * 100);
    }
    b.push(rec(s0 + 100, Lane::Alarm), t0 + 9_999);
    pushed += lane::encoded_len(&rec(s0 + 100, Lane::Alarm));
    let now = t0 + 10_000;
    b.maintain(now, false);
    assert_eq!(m.backlog_records.get(Lane::Summary), 100);
    assert_eq!(m.backlog_records.get(Lane::Alarm), 1);
    assert!(m.backlog_bytes.get(Lane::Summary) > 0);
    // The oldest summary was measured at 1_700_000_000_000 + s0.
    let oldest = (now - (t0 + s0 as i64)) / 1000;
    assert_eq!(m.backlog_oldest_age_seconds.get(Lane::Summary), oldest);
    // Input: `pushed` bytes over the ten complete seconds.
    let rate = pushed as f64 / 10.0;
    let free = c.max_disk_bytes - b.disk_bytes();
    let expected = (free as f64 / rate).floor() as i64;
    assert_eq!(m.outage_seconds_left.get(), expected);
    // Delivered, the backlog is gone; the input rate still says how long
    // an outage starting now could last.
    b.maintain(now, true);
    deliver(&mut b, 200, true);
    b.maintain(now + 100, true);
    assert_eq!(m.backlog_records.get(Lane::Summary), 0);
    assert_eq!(m.backlog_records.get(Lane::Alarm), 0);
    assert_eq!(m.backlog_oldest_age_seconds.get(Lane::Summary), 0);
    assert!(m.outage_seconds_left.get() >= expected);
}
