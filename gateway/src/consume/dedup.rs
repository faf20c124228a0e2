//! Deduplication by `(gateway, seq)` with bounded memory: per gateway, a
//! bitmap of the last [`WINDOW`] sequence numbers below the highest seen,
//! for at most [`MAX_GATEWAYS`] gateways (the least recently seen one is
//! forgotten to make room for a new one).

use std::collections::HashMap;

/// Sequence numbers remembered per gateway, below the highest seen.
pub const WINDOW: u64 = 65_536;
/// Gateways remembered at once.
pub const MAX_GATEWAYS: usize = 1_024;
/// Longest gateway name that is remembered; a longer one is not a gateway
/// id (those are short) and is not deduplicated.
pub const MAX_GATEWAY_LEN: usize = 256;

const WORDS: usize = (WINDOW / 64) as usize;

/// What [`Dedup::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen before: write it.
    New,
    /// Seen before: skip it.
    Duplicate,
    /// More than [`WINDOW`] below the gateway's highest seq, or from a name
    /// that cannot be remembered: written, since it cannot be checked.
    Unchecked,
}

#[derive(Debug, Default)]
pub struct Dedup {
    gateways: HashMap<String, Window>,
    /// Advances at every check; a gateway's last check is its recency.
    clock: u64,
    /// Gateways forgotten to make room for others.
    pub evicted: u64,
}

#[derive(Debug)]
struct Window {
    highest: u64,
    /// Bit `seq % WINDOW` is set when `seq` (within the window) was seen.
    seen: Box<[u64; WORDS]>,
    last_used: u64,
}

impl Window {
    fn new(seq: u64) -> Self {
        let mut w = Window {
            highest: seq,
            seen: Box::new([0; WORDS]),
            last_used: 0,
        };
        w.set(seq);
        w
    }

    fn slot(seq: u64) -> (usize, u64) {
        let i = seq % WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    fn set(&mut self, seq: u64) {
        let (w, bit) = Self::slot(seq);
        self.seen[w] |= bit;
    }

    fn check(&mut self, seq: u64) -> Verdict {
        if seq > self.highest {
            if seq - self.highest >= WINDOW {
                self.seen.fill(0);
            } else {
                for s in self.highest + 1..seq {
                    let (w, bit) = Self::slot(s);
                    self.seen[w] &= !bit;
                }
            }
            self.highest = seq;
            self.set(seq);
            return Verdict::New;
        }
        if self.highest - seq >= WINDOW {
            return Verdict::Unchecked;
        }
        let (w, bit) = Self::slot(seq);
        if self.seen[w] & bit != 0 {
            Verdict::Duplicate
        } else {
            self.seen[w] |= bit;
            Verdict::New
        }
    }
}

impl Dedup {
    /// Whether `(gateway, seq)` is new, and remembers it.
    pub fn check(&mut self, gateway: &str, seq: u64) -> Verdict {
        if gateway.len() > MAX_GATEWAY_LEN {
            return Verdict::Unchecked;
        }
        self.clock += 1;
        let now = self.clock;
        if let Some(w) = self.gateways.get_mut(gateway) {
            w.last_used = now;
            return w.check(seq);
        }
        if self.gateways.len() >= MAX_GATEWAYS {
            let oldest = self
                .gateways
                .iter()
                .min_by_key(|(_, w)| w.last_used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.gateways.remove(&k);
                self.evicted += 1;
            }
        }
        let mut w = Window::new(seq);
        w.last_used = now;
        self.gateways.insert(gateway.to_owned(), w);
        Verdict::New
    }

    /// Gateways remembered now.
    pub fn gateways(&self) -> usize {
        self.gateways.len()
    }
}
