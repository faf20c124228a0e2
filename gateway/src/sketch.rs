//! A mergeable quantile sketch with bounded memory: DDSketch (Masson, Rim,
//! Lee, "DDSketch: a fast and fully-mergeable quantile sketch with
//! relative-error guarantees", VLDB 2019) with a collapsing store.
//!
//! Values are counted in logarithmic bins: bin `i` holds magnitudes in
//! `(γ^(i-1), γ^i]` with `γ = (1 + α) / (1 - α)`, and reports
//! `2 γ^i / (γ + 1)`, which is within `α` (relative) of every value in the
//! bin. Positive and negative values have a store each (negatives by
//! magnitude), and magnitudes below 1e-12 count as zero.
//!
//! **Error bound**: for `α = 0.02`, a quantile's reported value is within
//! 2 % of the true value of that rank (`|x̂ - x| <= 0.02 |x|`), as long as
//! the window's magnitudes span less than `γ^128 ≈ 167x` per sign. Beyond
//! that, the store collapses its smallest magnitudes into its lowest bin:
//! quantiles that fall there are reported too high (towards the larger
//! magnitudes), the upper quantiles that condition monitoring cares about
//! keep the bound. Memory: at most 128 four-byte counters per sign.

/// The relative accuracy.
pub const ALPHA: f64 = 0.02;
/// Bins per store at most.
pub const MAX_BINS: usize = 128;
const MIN_MAGNITUDE: f64 = 1e-12;

fn gamma() -> f64 {
    (1.0 + ALPHA) / (1.0 - ALPHA)
}

/// `1 / ln(γ)`, precomputed: one logarithm per value instead of two.
const INV_LN_GAMMA: f64 = 24.996_666_311_036_567;

fn index_of(magnitude: f64) -> i32 {
    (magnitude.ln() * INV_LN_GAMMA).ceil() as i32
}

fn value_of(index: i32) -> f64 {
    let g = gamma();
    2.0 * g.powi(index) / (g + 1.0)
}

/// Counts per bin index, contiguous from `offset`.
#[derive(Debug, Clone, Default, PartialEq)]
struct Store {
    offset: i32,
    bins: Vec<u32>,
}

impl Store {
    #[cfg(test)]
    fn total(&self) -> u64 {
        self.bins.iter().map(|&c| u64::from(c)).sum()
    }

    fn add(&mut self, index: i32, n: u32) {
        if self.bins.is_empty() {
            self.offset = index;
            self.bins.push(n);
            return;
        }
        let top = self.offset + self.bins.len() as i32 - 1;
        if index < self.offset {
            // Below the lowest bin: grow downwards, or collapse into it.
            let grow = (self.offset - index) as usize;
            if self.bins.len() + grow > MAX_BINS {
                let room = MAX_BINS - self.bins.len();
                self.grow_front(room);
                self.bins[0] = self.bins[0].saturating_add(n);
            } else {
                self.grow_front(grow);
                self.bins[0] = self.bins[0].saturating_add(n);
            }
        } else if index > top {
            let grow = (index - top) as usize;
            self.bins.resize(self.bins.len() + grow, 0);
            if self.bins.len() > MAX_BINS {
                // Collapse the smallest magnitudes into the new lowest bin.
                let excess = self.bins.len() - MAX_BINS;
                let moved: u32 = self.bins[..excess]
                    .iter()
                    .fold(0u32, |a, &c| a.saturating_add(c));
                self.bins.drain(..excess);
                self.offset += excess as i32;
                self.bins[0] = self.bins[0].saturating_add(moved);
            }
            let last = self.bins.len() - 1;
            self.bins[last] = self.bins[last].saturating_add(n);
        } else {
            let i = (index - self.offset) as usize;
            self.bins[i] = self.bins[i].saturating_add(n);
        }
    }

    fn grow_front(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let mut v = vec![0u32; n];
        v.extend_from_slice(&self.bins);
        self.bins = v;
        self.offset -= n as i32;
    }

    fn merge(&mut self, other: &Store) {
        for (i, &c) in other.bins.iter().enumerate() {
            if c > 0 {
                self.add(other.offset + i as i32, c);
            }
        }
    }
}

/// The sketch of one window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sketch {
    positive: Store,
    negative: Store,
    zero: u64,
    count: u64,
}

impl Sketch {
    pub fn add(&mut self, v: f64) {
        if !v.is_finite() {
            return;
        }
        self.count += 1;
        if v > MIN_MAGNITUDE {
            self.positive.add(index_of(v), 1);
        } else if v < -MIN_MAGNITUDE {
            self.negative.add(index_of(-v), 1);
        } else {
            self.zero += 1;
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Sketch) {
        self.positive.merge(&other.positive);
        self.negative.merge(&other.negative);
        self.zero += other.zero;
        self.count += other.count;
    }

    /// The value of rank `floor(q (count - 1))`, within the error bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = (q * (self.count - 1) as f64).floor() as u64;
        let mut seen = 0u64;
        // Most negative first: the negative store from its largest magnitude.
        for (i, &c) in self.negative.bins.iter().enumerate().rev() {
            seen += u64::from(c);
            if seen > rank {
                return Some(-value_of(self.negative.offset + i as i32));
            }
        }
        seen += self.zero;
        if seen > rank {
            return Some(0.0);
        }
        for (i, &c) in self.positive.bins.iter().enumerate() {
            seen += u64::from(c);
            if seen > rank {
                return Some(value_of(self.positive.offset + i as i32));
            }
        }
        // Saturated counters only: the largest value.
        self.positive
            .bins
            .len()
            .checked_sub(1)
            .map(|i| value_of(self.positive.offset + i as i32))
    }

    /// Heap bytes in use.
    pub fn heap_bytes(&self) -> usize {
        (self.positive.bins.capacity() + self.negative.bins.capacity()) * 4
    }

    #[cfg(test)]
    fn stored(&self) -> u64 {
        self.positive.total() + self.negative.total() + self.zero
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn exact(sorted: &[f64], q: f64) -> f64 {
        sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
    }

    #[test]
    fn the_precomputed_constant_is_one_over_ln_gamma() {
        assert!((INV_LN_GAMMA - 1.0 / gamma().ln()).abs() < 1e-12);
    }

    #[test]
    fn memory_is_bounded_whatever_the_range() {
        let mut s = Sketch::default();
        for i in 0..100_000 {
            s.add(1e-9 * 1.0001f64.powi(i));
            s.add(-(1e-9 * 1.0001f64.powi(i)));
        }
        assert!(s.positive.bins.len() <= MAX_BINS);
        assert!(s.negative.bins.len() <= MAX_BINS);
        assert_eq!(s.stored(), 200_000);
        // The top of the distribution keeps the bound after collapsing.
        let q = s.quantile(0.99).unwrap();
        // Rank 197,999 of 200,000: the 98,000th positive value.
        let truth = 1e-9 * 1.0001f64.powi(97_999);
        assert!((q - truth).abs() <= ALPHA * truth * 1.01, "{q} vs {truth}");
    }

    #[test]
    fn zero_constant_and_single_values() {
        let mut s = Sketch::default();
        assert_eq!(s.quantile(0.5), None);
        s.add(0.0);
        assert_eq!(s.quantile(0.5), Some(0.0));
        let mut s = Sketch::default();
        for _ in 0..1000 {
            s.add(4.2);
        }
        let p = s.quantile(0.99).unwrap();
        assert!((p - 4.2).abs() <= ALPHA * 4.2);
    }

    proptest! {
        /// Every quantile is within the stated relative error of the exact
        /// value of the same rank, for values of both signs whose
        /// magnitudes span less than the stated 167x.
        #[test]
        fn quantiles_stay_within_the_error_bound(
            values in proptest::collection::vec(
                (any::<bool>(), 1.0f64..160.0).prop_map(|(neg, v)| if neg { -v } else { v }),
                1..2000,
            ),
            q in 0.0f64..=1.0,
        ) {
            let mut s = Sketch::default();
            for v in &values {
                s.add(*v);
            }
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            let truth = exact(&sorted, q);
            let got = s.quantile(q).unwrap();
            prop_assert!((got - truth).abs() <= ALPHA * truth.abs() * (1.0 + 1e-9), "q={q} got {got} truth {truth}");
        }

        /// Merging two sketches is the sketch of both inputs.
        #[test]
        fn merge_equals_the_sketch_of_the_union(
            a in proptest::collection::vec(0.5f64..50.0, 0..500),
            b in proptest::collection::vec(0.5f64..50.0, 0..500),
        ) {
            let (mut sa, mut sb, mut all) = (Sketch::default(), Sketch::default(), Sketch::default());
            a.iter().for_each(|v| { sa.add(*v); all.add(*v); });
            b.iter().for_each(|v| { sb.add(*v); all.add(*v); });
            sa.merge(&sb);
            for q in [0.0, 0.5, 0.9, 0.99, 1.0] {
                prop_assert_eq!(sa.quantile(q), all.quantile(q));
            }
        }
    }
}
