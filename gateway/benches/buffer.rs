//! Durable buffer figures: append throughput with group commit, write
//! amplification, start-up recovery time of a 100 MB backlog, and RSS with a
//! 100 MB backlog against an empty one (measured in child processes).
//!
//! Run: cargo bench -p sensor-gateway --bench buffer
//! Set BENCH_DIR to put the files on the filesystem you care about (the
//! default is the system's temporary directory).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use sensor_gateway::buffer::{segment, Buffer};
use sensor_gateway::config::{BufferConfig, Durability, WhenFull};
use sensor_gateway::metrics::Metrics;
use sensor_gateway::model::{Lane, Record};

fn config() -> BufferConfig {
    BufferConfig {
        durability: Durability::Always,
        commit_interval_ms: 1000,
        spill_after_ms: 2000,
        max_disk_bytes: 1 << 30,
        segment_bytes: 1 << 20,
        when_full: WhenFull::DropOldest,
        memory_budget_bytes: 4 << 20,
        max_age_ms: 0,
    }
}

/// A record shaped like a real summary (about 330 bytes of JSON).
fn record(seq: u64) -> Record {
    let payload = format!(
        r#"{{"schema":1,"kind":"summary","gateway":"press-line-1","seq":{seq},"sensor":"line3/m{m}/vibration","labels":{{"line":"line3","machine":"m{m}","sensor":"vibration"}},"unit":"mm/s","window_start_ms":1700000000000,"window_end_ms":1700000010000,"count":100,"min":1.52,"max":2.21,"mean":1.83,"std":0.14,"first_ts_ms":1700000000012,"last_ts_ms":1700000009987}}"#,
        m = seq % 34
    );
    Record {
        seq,
        lane: Lane::Summary,
        ts_ms: 1_700_000_010_000,
        topic: format!(
            "gateways/press-line-1/summary/line3/m{}/vibration",
            seq % 34
        ),
        payload: payload.into_bytes(),
    }
}

fn now_ms() -> i64 {
    sensor_gateway::now_ms()
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Child mode: open the buffer in `dir`, deliver and acknowledge 10,000
/// records, and print peak RSS in KiB.
fn rss_probe(dir: &Path) {
    let (mut b, _) = Buffer::open(&config(), dir, Arc::new(Metrics::new())).expect("open");
    b.maintain(now_ms(), true);
    for _ in 0..10_000 {
        match b.next_unsent(now_ms()) {
            Some(r) => b.ack(r.seq),
            None => break,
        }
    }
    println!("{}", rss_kib("VmHWM:"));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 3 && args[1] == "rss-probe" {
        rss_probe(Path::new(&args[2]));
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let base = std::env::var_os("BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&base).expect("a temporary directory");
    let metrics = Arc::new(Metrics::new());
    let (mut b, _) = Buffer::open(&config(), dir.path(), metrics.clone()).expect("open");
    let written_before = metrics.buffer_bytes_written.get();

    // 1. Append throughput: batches of 256 as the sink takes them, real
    //    time, group commit every second.
    let n: u64 = 300_000;
    let records: Vec<Record> = (0..n).map(|i| record(b.next_seq() + i)).collect();
    let mut encoded = 0u64;
    let mut scratch = Vec::new();
    for r in &records {
        scratch.clear();
        segment::encode_record(
            &mut scratch,
            &segment::Body {
                seq: r.seq,
                ts_ms: r.ts_ms,
                topic: &r.topic,
                payload: &r.payload,
            },
        )
        .expect("encode");
        encoded += scratch.len() as u64;
    }
    let start = Instant::now();
    for (i, r) in records.into_iter().enumerate() {
        b.push(r, 0);
        if i % 256 == 255 {
            b.maintain(now_ms(), false);
        }
    }
    b.close(now_ms());
    let secs = start.elapsed().as_secs_f64();
    let written = metrics.buffer_bytes_written.get() - written_before;
    println!(
        "append: {n} records ({:.1} MB) in {secs:.3} s = {:.0} records/s, {} fsyncs",
        encoded as f64 / 1e6,
        n as f64 / secs,
        metrics.buffer_fsyncs.get()
    );
    println!(
        "write amplification: {written} bytes written / {encoded} encoded record bytes = {:.3}",
        written as f64 / encoded as f64
    );
    drop(b);

    // 2. Recovery of the backlog (about 100 MB).
    let start = Instant::now();
    let (b, report) =
        Buffer::open(&config(), dir.path(), Arc::new(Metrics::new())).expect("reopen");
    println!(
        "recovery: {} segments, {} records, {:.1} MB in {:.3} s",
        report.segments,
        report.records,
        report.bytes as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );
    drop(b);

    // 3. RSS with the backlog against an empty buffer, in fresh processes.
    let exe = std::env::current_exe().expect("own path");
    let probe = |d: &Path| -> u64 {
        let out = Command::new(&exe)
            .arg("rss-probe")
            .arg(d)
            .output()
            .expect("probe");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    };
    let empty = tempfile::tempdir_in(&base).expect("a temporary directory");
    let rss_empty = probe(empty.path());
    let rss_full = probe(dir.path());
    println!(
        "peak RSS delivering 10,000 records: empty buffer {} KiB, {:.0} MB backlog {} KiB (difference {} KiB)",
        rss_empty,
        report.bytes as f64 / 1e6,
        rss_full,
        rss_full as i64 - rss_empty as i64
    );
}
