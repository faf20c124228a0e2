//! The outbox: records waiting for the upstream broker's acknowledgement.
//!
//! [`MemoryQueue`] keeps records in order, bounded in bytes. A record is
//! *unsent*, *in flight* (published on the current connection, no PUBACK
//! yet) or *acked*; acked records leave from the front. A reconnect turns
//! every in-flight record back into unsent, so it is sent again (delivery is
//! at least once; upstream drops duplicates by `(gateway, seq)`). When full,
//! the oldest records are dropped and reported to the caller for counting.
//!
//! The sink uses only the [`Outbox`] trait, so the durable on-disk log can
//! take this type's place.

use std::collections::VecDeque;

use crate::processor::Record;

/// What the upstream sink needs from a store of outgoing records.
pub trait Outbox {
    /// Appends a record; returns how many older records were dropped to make
    /// room (or 1 if `record` itself could not be held).
    fn push(&mut self, record: Record) -> usize;
    /// The next record to publish on the current connection, marked in flight.
    fn next_unsent(&mut self) -> Option<&Record>;
    /// The broker acknowledged `seq`.
    fn ack(&mut self, seq: u64);
    /// The connection was lost: every in-flight record becomes unsent.
    /// Returns how many there were.
    fn rewind(&mut self) -> usize;
    fn in_flight(&self) -> usize;
    fn len(&self) -> usize;
    fn bytes(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Unsent,
    InFlight,
    Acked,
}

#[derive(Debug)]
pub struct MemoryQueue {
    entries: VecDeque<(Record, State)>,
    /// Index of the first unsent entry; entries before it are in flight or acked.
    cursor: usize,
    bytes: u64,
    max_bytes: u64,
    in_flight: usize,
}

/// Memory a record costs beyond its payload and topic bytes (the struct
/// itself and the deque slot), so the byte bound holds for tiny records too.
const RECORD_OVERHEAD: u64 = 64;

fn cost(r: &Record) -> u64 {
    (r.payload.len() + r.topic.len()) as u64 + RECORD_OVERHEAD
}

impl MemoryQueue {
    pub fn new(max_bytes: u64) -> Self {
        Self {
            entries: VecDeque::new(),
            cursor: 0,
            bytes: 0,
            max_bytes,
            in_flight: 0,
        }
    }

    fn pop_front(&mut self) -> Option<(Record, State)> {
        let (r, s) = self.entries.pop_front()?;
        self.bytes -= cost(&r);
        if s == State::InFlight {
            self.in_flight -= 1;
        }
        self.cursor = self.cursor.saturating_sub(1);
        Some((r, s))
    }
}

impl Outbox for MemoryQueue {
    fn push(&mut self, record: Record) -> usize {
        let c = cost(&record);
        if c > self.max_bytes {
            return 1;
        }
        let mut dropped = 0;
        while self.bytes + c > self.max_bytes {
            match self.pop_front() {
                Some((_, State::Acked)) => {}
                Some(_) => dropped += 1,
                None => break,
            }
        }
        self.bytes += c;
        self.entries.push_back((record, State::Unsent));
        dropped
    }

    fn next_unsent(&mut self) -> Option<&Record> {
        while matches!(self.entries.get(self.cursor), Some((_, State::Acked))) {
            self.cursor += 1;
        }
        let entry = self.entries.get_mut(self.cursor)?;
        entry.1 = State::InFlight;
        self.in_flight += 1;
        self.cursor += 1;
        Some(&entry.0)
    }

    fn ack(&mut self, seq: u64) {
        // Records are ordered by seq; a seq that is gone was dropped already.
        let Some(front) = self.entries.front() else {
            return;
        };
        let Some(offset) = seq.checked_sub(front.0.seq) else {
            return;
        };
        let idx = match self.entries.get(offset as usize) {
            Some((r, _)) if r.seq == seq => offset as usize,
            _ => match self.entries.iter().position(|(r, _)| r.seq == seq) {
                Some(i) => i,
                None => return,
            },
        };
        if self.entries[idx].1 == State::InFlight {
            self.in_flight -= 1;
            self.entries[idx].1 = State::Acked;
        }
        while matches!(self.entries.front(), Some((_, State::Acked))) {
            self.pop_front();
        }
    }

    fn rewind(&mut self) -> usize {
        let mut n = 0;
        for (_, s) in self.entries.iter_mut().take(self.cursor) {
            if *s == State::InFlight {
                *s = State::Unsent;
                n += 1;
            }
        }
        self.in_flight = 0;
        // Acked entries can sit behind an unacked one; next_unsent skips them.
        self.cursor = self
            .entries
            .iter()
            .position(|(_, s)| *s == State::Unsent)
            .unwrap_or(self.entries.len());
        n
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64) -> Record {
        Record {
            seq,
            topic: "t".into(),
            payload: vec![0; 35],
        }
    }

    #[test]
    fn delivers_in_order_and_frees_on_ack() {
        let mut q = MemoryQueue::new(10_000);
        for s in 1..=3 {
            assert_eq!(q.push(rec(s)), 0);
        }
        assert_eq!(q.next_unsent().map(|r| r.seq), Some(1));
        assert_eq!(q.next_unsent().map(|r| r.seq), Some(2));
        assert_eq!(q.in_flight(), 2);
        q.ack(2);
        assert_eq!(q.len(), 3, "1 is still unacked, so nothing leaves");
        q.ack(1);
        assert_eq!(q.len(), 1);
        assert_eq!(q.next_unsent().map(|r| r.seq), Some(3));
        q.ack(3);
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn rewind_resends_unacked_only() {
        let mut q = MemoryQueue::new(10_000);
        for s in 1..=4 {
            q.push(rec(s));
        }
        for _ in 0..3 {
            q.next_unsent();
        }
        q.ack(2);
        assert_eq!(q.rewind(), 2);
        assert_eq!(q.next_unsent().map(|r| r.seq), Some(1));
        assert_eq!(
            q.next_unsent().map(|r| r.seq),
            Some(3),
            "2 was acked and is not resent"
        );
        assert_eq!(q.next_unsent().map(|r| r.seq), Some(4));
    }

    #[test]
    fn full_queue_drops_oldest_and_reports_it() {
        let mut q = MemoryQueue::new(300);
        let mut dropped = 0;
        for s in 1..=5 {
            dropped += q.push(rec(s));
        }
        assert_eq!(dropped, 2);
        assert_eq!(q.len(), 3);
        assert!(q.bytes() <= 300);
        assert_eq!(q.next_unsent().map(|r| r.seq), Some(3));
    }
}
