//! The event model: what a reading is, and how sensors are named cheaply.
//!
//! A sensor is identified on the wire by a topic (or, later, a serial node and
//! channel). The gateway interns each distinct identity once, in a
//! [`SensorRegistry`], and from then on passes a [`SensorKey`] (a `u32`) around.
//! A [`Reading`] is therefore `Copy` and costs no heap allocation on the hot path.

use std::collections::HashMap;
use std::sync::Arc;

pub mod payload;
mod record;

pub use record::{Lane, Record};

/// A compact handle to a sensor interned in a [`SensorRegistry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SensorKey(pub u32);

impl SensorKey {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// One measurement, after decoding and before validation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub sensor: SensorKey,
    /// Event time in milliseconds since the Unix epoch: from the payload when
    /// it carries one, otherwise the gateway's receive time.
    pub ts_ms: i64,
    pub value: f64,
    /// The source's own sequence number, when the payload carries one.
    pub seq: Option<u64>,
}

/// What the gateway knows about an interned sensor.
#[derive(Debug, Clone)]
pub struct SensorInfo {
    /// The sensor id: the named segments of the topic template joined by `/`,
    /// e.g. `line1/press-3/temperature`.
    pub id: Arc<str>,
    /// The names of the id's segments, in order (`["line", "machine",
    /// "sensor"]`), shared by every sensor of one template: a sensor costs
    /// one allocation for its id and nothing for its labels.
    pub names: Arc<[Arc<str>]>,
}

impl SensorInfo {
    /// The labels, e.g. `("line", "line1")`, derived from the id's segments.
    pub fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.names
            .iter()
            .map(|n| n.as_ref())
            .zip(self.id.split('/'))
    }

    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

/// Why a new sensor could not be interned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("the sensor limit ({0}) is reached")]
    Full(usize),
}

/// Interns sensor identities.
///
/// Lookups by wire name (`&str`) allocate nothing; a name is copied only the
/// first time it is seen. Everything here is bounded, whatever publishers
/// send: at most `max_sensors` live sensors, and at most
/// [`WIRE_NAMES_PER_SENSOR`] × `max_sensors` cached wire names (a topic
/// template with `+` maps many topics to one sensor; past the bound, further
/// topics are resolved through the template each time instead of cached).
/// Retired sensors free their slot for reuse; a wire name cached for a
/// retired sensor is recognised by its slot's generation and never reaches
/// the slot's next sensor.
#[derive(Debug)]
pub struct SensorRegistry {
    /// Wire name to (key, generation of the slot when cached).
    by_wire_name: HashMap<Box<str>, (SensorKey, u32)>,
    by_id: HashMap<Arc<str>, SensorKey>,
    /// Per slot: the sensor (an empty id when the slot is free).
    sensors: Vec<SensorInfo>,
    /// Per slot: bumped at each retirement.
    generations: Vec<u32>,
    /// Free slots, reused before new ones are made.
    free: Vec<SensorKey>,
    /// Retirements since the wire-name cache was last purged: a purge is
    /// worth its O(cache) cost only if some names may have gone stale.
    retired_since_purge: usize,
    max_sensors: usize,
}

/// Cached wire names allowed per sensor slot, on average.
pub const WIRE_NAMES_PER_SENSOR: usize = 2;

impl SensorRegistry {
    pub fn new(max_sensors: usize) -> Self {
        Self {
            by_wire_name: HashMap::new(),
            by_id: HashMap::new(),
            sensors: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            retired_since_purge: 0,
            max_sensors,
        }
    }

    /// The key for a wire name already seen (and whose sensor is still live).
    pub fn lookup(&self, wire_name: &str) -> Option<SensorKey> {
        let (key, generation) = self.by_wire_name.get(wire_name).copied()?;
        (self.generations.get(key.index()) == Some(&generation)).then_some(key)
    }

    /// The key of a sensor id.
    pub fn lookup_id(&self, id: &str) -> Option<SensorKey> {
        self.by_id.get(id).copied()
    }

    /// Interns `info` under `wire_name`. Two wire names that map to the same
    /// sensor id share one key. A sensor first known without labels (restored
    /// from saved state) takes the labels of its first real message.
    pub fn insert(
        &mut self,
        wire_name: &str,
        info: SensorInfo,
    ) -> Result<SensorKey, RegistryError> {
        if let Some(key) = self.by_id.get(&info.id).copied() {
            self.cache_wire_name(wire_name, key);
            let known = &mut self.sensors[key.index()];
            if known.names.is_empty() && !info.names.is_empty() {
                *known = info;
            }
            return Ok(key);
        }
        if self.len() >= self.max_sensors {
            return Err(RegistryError::Full(self.max_sensors));
        }
        let key = match self.free.pop() {
            Some(key) => {
                self.sensors[key.index()] = info.clone();
                key
            }
            None => {
                let key = SensorKey(self.sensors.len() as u32);
                self.sensors.push(info.clone());
                self.generations.push(0);
                key
            }
        };
        self.by_id.insert(info.id, key);
        self.cache_wire_name(wire_name, key);
        Ok(key)
    }

    fn cache_wire_name(&mut self, wire_name: &str, key: SensorKey) {
        let generation = self.generations[key.index()];
        if let Some(entry) = self.by_wire_name.get_mut(wire_name) {
            *entry = (key, generation);
            return;
        }
        let bound = self.max_sensors.saturating_mul(WIRE_NAMES_PER_SENSOR);
        if self.by_wire_name.len() >= bound {
            // Drop names of retired sensors; if the cache is still full, the
            // name is resolved again next time (cost, never memory).
            if self.retired_since_purge == 0 {
                return;
            }
            self.retired_since_purge = 0;
            let generations = &self.generations;
            self.by_wire_name
                .retain(|_, (k, g)| generations.get(k.index()) == Some(g));
            if self.by_wire_name.len() >= bound {
                return;
            }
        }
        self.by_wire_name
            .insert(wire_name.into(), (key, generation));
    }

    /// Forgets every cached wire name, so that each is resolved again (after
    /// a reload, a topic may name another sensor); sensors keep their keys.
    pub fn clear_wire_names(&mut self) {
        self.by_wire_name.clear();
        self.retired_since_purge = 0;
    }

    /// Forgets a sensor: its slot is reused by a later one, and wire names
    /// cached for it no longer resolve.
    pub fn retire(&mut self, key: SensorKey) {
        let Some(info) = self.sensors.get_mut(key.index()) else {
            return;
        };
        if info.id.is_empty() {
            return;
        }
        self.by_id.remove(&info.id);
        *info = SensorInfo {
            id: Arc::from(""),
            names: Arc::from(Vec::new()),
        };
        self.generations[key.index()] = self.generations[key.index()].wrapping_add(1);
        self.free.push(key);
        self.retired_since_purge += 1;
    }

    /// Whether `key` names a live sensor.
    pub fn is_live(&self, key: SensorKey) -> bool {
        self.sensors
            .get(key.index())
            .is_some_and(|s| !s.id.is_empty())
    }

    pub fn info(&self, key: SensorKey) -> &SensorInfo {
        &self.sensors[key.index()]
    }

    /// Live sensors.
    pub fn len(&self) -> usize {
        self.sensors.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots ever made (live or free): the length of per-slot state.
    pub fn slots(&self) -> usize {
        self.sensors.len()
    }

    /// Cached wire names (bounded; for tests and metrics).
    pub fn wire_names(&self) -> usize {
        self.by_wire_name.len()
    }
}

/// What is remembered of retired sensors: the end of the last window each
/// sent, by sensor id. Bounded: at most `capacity` ids, the oldest forgotten
/// first (a sensor that comes back after that many others retired may send
/// a window again; upstream deduplication by window still sees it).
#[derive(Debug)]
pub struct Tombstones {
    by_id: HashMap<Arc<str>, i64>,
    order: std::collections::VecDeque<Arc<str>>,
    capacity: usize,
}

impl Tombstones {
    pub fn new(capacity: usize) -> Self {
        Self {
            by_id: HashMap::new(),
            order: std::collections::VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn insert(&mut self, id: Arc<str>, closed_until_ms: i64) {
        if self.by_id.insert(id.clone(), closed_until_ms).is_none() {
            self.order.push_back(id);
        }
        while self.by_id.len() > self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.by_id.remove(&old);
                }
                None => break,
            }
        }
        // Ids taken back leave stale entries in `order`; keep it bounded.
        if self.order.len() > self.capacity.saturating_mul(2) {
            let by_id = &self.by_id;
            self.order.retain(|id| by_id.contains_key(id));
        }
    }

    /// Takes the mark of a sensor that comes back.
    pub fn take(&mut self, id: &str) -> Option<i64> {
        self.by_id.remove(id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str) -> SensorInfo {
        SensorInfo {
            id: id.into(),
            names: Arc::from(Vec::new()),
        }
    }

    #[test]
    fn same_id_under_two_wire_names_shares_a_key() {
        let mut reg = SensorRegistry::new(10);
        let a = reg.insert("plant/l1/m1/t", info("l1/m1/t")).unwrap();
        let b = reg.insert("plant/l1/m1/t/", info("l1/m1/t")).unwrap();
        assert_eq!(a, b);
        assert_eq!(reg.len(), 1);
        assert_eq!(reg.lookup("plant/l1/m1/t/"), Some(a));
    }

    #[test]
    fn tombstones_are_bounded_oldest_first() {
        let mut t = Tombstones::new(2);
        t.insert("a".into(), 1);
        t.insert("b".into(), 2);
        t.insert("c".into(), 3);
        assert_eq!(t.len(), 2);
        assert_eq!(t.take("a"), None);
        assert_eq!(t.take("c"), Some(3));
        for i in 0..1000 {
            t.insert(format!("x{i}").into(), i);
            t.take(&format!("x{i}"));
        }
        assert!(t.order.len() <= 4);
    }

    #[test]
    fn registry_is_bounded() {
        let mut reg = SensorRegistry::new(1);
        reg.insert("a", info("a")).unwrap();
        assert_eq!(reg.insert("b", info("b")), Err(RegistryError::Full(1)));
    }

    #[test]
    fn a_retired_sensor_frees_its_slot_and_its_wire_names() {
        let mut reg = SensorRegistry::new(1);
        let a = reg.insert("t/a", info("a")).unwrap();
        reg.retire(a);
        assert_eq!(reg.len(), 0);
        assert_eq!(reg.lookup("t/a"), None);
        assert_eq!(reg.lookup_id("a"), None);
        let b = reg.insert("t/b", info("b")).unwrap();
        assert_eq!(b, a, "the slot is reused");
        assert_eq!(
            reg.lookup("t/a"),
            None,
            "the old name never reaches the new sensor"
        );
        assert_eq!(reg.lookup("t/b"), Some(b));
    }

    #[test]
    fn a_million_distinct_topics_keep_the_maps_bounded() {
        let max = 1_000;
        let mut reg = SensorRegistry::new(max);
        let mut full = 0;
        for i in 0..1_000_000u32 {
            // Every tenth topic is another name of one of ten sensors (a
            // template with `+`); the rest are new sensors.
            let (wire, id) = if i % 10 == 0 {
                (format!("plant/x{i}/s{}", i % 7), format!("s{}", i % 7))
            } else {
                (format!("plant/{i}"), format!("n{i}"))
            };
            match reg.insert(&wire, info(&id)) {
                Ok(_) => {}
                Err(RegistryError::Full(_)) => full += 1,
            }
            if i % 5000 == 4999 {
                // Retire everything but the ten steady sensors now and then.
                for k in 0..reg.slots() as u32 {
                    let key = SensorKey(k);
                    if reg.is_live(key) && !reg.info(key).id.starts_with('s') {
                        reg.retire(key);
                    }
                }
            }
        }
        assert!(full > 0, "the limit was reached");
        assert!(reg.len() <= max);
        assert!(reg.slots() <= max);
        assert!(reg.wire_names() <= max * WIRE_NAMES_PER_SENSOR);
        assert!(reg.by_id.len() <= max);
        for s in 0..7 {
            assert!(reg.lookup_id(&format!("s{s}")).is_some());
        }
    }
}
