//! Window statistics against reference values computed independently
//! (`gateway/tests/data/make_stats_vectors.py`, exact rational arithmetic;
//! the vectors are committed in `stats-vectors.json`).

use super::*;
use crate::sketch::{ALPHA, MAX_BINS};

#[derive(serde::Deserialize)]
struct Vector {
    name: String,
    values: Vec<f64>,
    ts_ms: Vec<i64>,
    count: u64,
    min: f64,
    max: f64,
    mean: f64,
    std: f64,
    rms: f64,
    p2p: f64,
    crest: Option<f64>,
    skewness: Option<f64>,
    kurtosis: Option<f64>,
    slope_per_hour: Option<f64>,
    first: f64,
    last: f64,
    quantiles: std::collections::BTreeMap<String, f64>,
}

fn vectors() -> Vec<Vector> {
    serde_json::from_str(include_str!("../../tests/data/stats-vectors.json"))
        .expect("the committed test vectors parse")
}

/// `got` is within `rel` of `want`, or within `abs` for values near 0.
fn close(name: &str, what: &str, got: Option<f64>, want: Option<f64>, rel: f64, abs: f64) {
    match (got, want) {
        (None, None) => {}
        (Some(g), Some(w)) => assert!(
            (g - w).abs() <= rel * w.abs() + abs,
            "{name}: {what} = {g}, reference {w}"
        ),
        (g, w) => panic!("{name}: {what} = {g:?}, reference {w:?}"),
    }
}

#[test]
fn every_statistic_matches_the_reference_vectors() {
    let vs = vectors();
    assert!(vs.len() >= 8);
    for v in vs {
        let mut w = WindowStats::with_options(v.ts_ms[0], true);
        for (x, t) in v.values.iter().zip(&v.ts_ms) {
            w.push(*x, *t);
        }
        let n = &v.name;
        // Relative precision: tight, except where a huge offset leaves
        // fewer significant digits for the spread (still far better than
        // a sum of squares, which gives 0 or garbage there).
        let rel = if n == "huge_offset" { 1e-6 } else { 1e-9 };
        let abs = 1e-9 * v.std.max(1e-12);
        assert_eq!(w.count, v.count, "{n}");
        assert_eq!((w.min, w.max), (v.min, v.max), "{n}");
        close(n, "mean", Some(w.mean()), Some(v.mean), 1e-12, 1e-12);
        close(n, "std", Some(w.std_dev()), Some(v.std), rel, abs);
        close(n, "rms", Some(w.rms()), Some(v.rms), 1e-9, 1e-12);
        close(n, "p2p", Some(w.peak_to_peak()), Some(v.p2p), 1e-12, 1e-12);
        close(n, "crest", w.crest_factor(), v.crest, 1e-9, 1e-12);
        close(n, "skewness", w.skewness(), v.skewness, 1e-6, 1e-6);
        close(n, "kurtosis", w.kurtosis(), v.kurtosis, 1e-6, 1e-6);
        close(n, "slope", w.slope_per_hour(), v.slope_per_hour, 1e-6, 1e-6);
        assert_eq!((w.first, w.last), (v.first, v.last), "{n}");
        // Percentiles: within the sketch's stated bound (relative ALPHA),
        // or, for values below the collapsed range, no larger than it.
        let max_abs = v.max.abs().max(v.min.abs());
        let g = (1.0 + ALPHA) / (1.0 - ALPHA);
        let floor = max_abs / g.powi(MAX_BINS as i32 - 1);
        for (q, want) in &v.quantiles {
            let q: f64 = q.parse().expect("a quantile");
            let got = w.quantile(q).expect("percentiles kept");
            if want.abs() >= floor {
                assert!(
                    (got - want).abs() <= ALPHA * want.abs() * (1.0 + 1e-9) + 1e-12,
                    "{n}: p{q} = {got}, reference {want}"
                );
            } else {
                assert!(
                    got.abs() <= floor * g * g,
                    "{n}: p{q} = {got} in the collapsed range"
                );
            }
        }
    }
}

#[test]
fn a_naive_sum_of_squares_would_fail_where_this_does_not() {
    // 0.001 amplitude on a 10,000 offset: the naive E[x²] - E[x]² loses
    // every digit (this documents why the recurrences are used).
    let v = vectors()
        .into_iter()
        .find(|v| v.name == "tiny_vibration_on_offset")
        .expect("vector");
    let n = v.values.len() as f64;
    let naive = (v.values.iter().map(|x| x * x).sum::<f64>() / n
        - (v.values.iter().sum::<f64>() / n).powi(2))
    .max(0.0)
    .sqrt();
    assert!((naive - v.std).abs() > 0.1 * v.std, "naive {naive}");
    let mut w = WindowStats::new();
    for (x, t) in v.values.iter().zip(&v.ts_ms) {
        w.push(*x, *t);
    }
    assert!((w.std_dev() - v.std).abs() < 1e-9 * v.std);
}

#[test]
fn state_size_is_bounded() {
    // Without percentiles a window is a fixed-size value.
    assert_eq!(std::mem::size_of::<WindowStats>(), 128);
}
