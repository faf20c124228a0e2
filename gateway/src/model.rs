//! The event model: what a reading is, and how sensors are named cheaply.
//!
//! A sensor is identified on the wire by a topic (or, later, a serial node and
//! channel). The gateway interns each distinct identity once, in a
//! [`SensorRegistry`], and from then on passes a [`SensorKey`] (a `u32`) around.
//! A [`Reading`] is therefore `Copy` and costs no heap allocation on the hot path.

use std::collections::HashMap;
use std::sync::Arc;

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
/// first time it is seen. The number of sensors is bounded so that a
/// misbehaving publisher cannot grow the gateway's memory without limit.
#[derive(Debug)]
pub struct SensorRegistry {
    /// Wire name (per source) to key. The source index keeps two sources that
    /// publish the same topic apart only when their templates differ, which
    /// the key already encodes, so the map is keyed by name alone.
    by_wire_name: HashMap<Box<str>, SensorKey>,
    by_id: HashMap<Arc<str>, SensorKey>,
    sensors: Vec<SensorInfo>,
    max_sensors: usize,
}

impl SensorRegistry {
    pub fn new(max_sensors: usize) -> Self {
        Self {
            by_wire_name: HashMap::new(),
            by_id: HashMap::new(),
            sensors: Vec::new(),
            max_sensors,
        }
    }

    /// The key for a wire name already seen.
    pub fn lookup(&self, wire_name: &str) -> Option<SensorKey> {
        self.by_wire_name.get(wire_name).copied()
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
            self.by_wire_name.insert(wire_name.into(), key);
            let known = &mut self.sensors[key.index()];
            if known.names.is_empty() && !info.names.is_empty() {
                *known = info;
            }
            return Ok(key);
        }
        if self.sensors.len() >= self.max_sensors {
            return Err(RegistryError::Full(self.max_sensors));
        }
        let key = SensorKey(self.sensors.len() as u32);
        self.by_id.insert(info.id.clone(), key);
        self.by_wire_name.insert(wire_name.into(), key);
        self.sensors.push(info);
        Ok(key)
    }

    pub fn info(&self, key: SensorKey) -> &SensorInfo {
        &self.sensors[key.index()]
    }

    pub fn len(&self) -> usize {
        self.sensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sensors.is_empty()
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
    fn registry_is_bounded() {
        let mut reg = SensorRegistry::new(1);
        reg.insert("a", info("a")).unwrap();
        assert_eq!(reg.insert("b", info("b")), Err(RegistryError::Full(1)));
    }
}
