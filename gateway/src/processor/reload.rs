//! A reload as the core sees it: new settings, and every known sensor's
//! policy resolved again.
//!
//! A sensor whose policy is unchanged keeps everything: open windows, alarm
//! states, baseline, last value sent. One whose policy changed first closes
//! its open windows under the old policy (their summaries are emitted as
//! usual, on the old topics), then takes the new one; its alarm states and
//! baseline stay, as they would across a restart with the saved state,
//! unless the new policy has no alarms. One that a rule matched and no rule
//! matches any more is flushed and forgotten, like a retired sensor.

use std::sync::Arc;

use super::{CoreSettings, Processor};
use crate::model::{Record, SensorKey};
use crate::policy::SensorPolicy;

/// How many sensor ids a [`SensorPlan`] lists for the log.
pub const PLAN_LISTS_AT_MOST: usize = 10;

/// What a reload did to the sensors the core knew.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SensorPlan {
    /// Same policy: windows, alarm states and baselines kept.
    pub kept: usize,
    /// Policy changed: windows flushed, then the new policy taken.
    pub changed: usize,
    /// No rule matches them any more: flushed and forgotten.
    pub forgotten: usize,
    /// Active alarms dropped because their sensor's new policy has no
    /// alarms, or the sensor was forgotten.
    pub alarms_dropped: usize,
    /// Records the flushes emitted (summaries, and the anomaly events
    /// their windows raised).
    pub records_flushed: usize,
    /// The first [`PLAN_LISTS_AT_MOST`] changed or forgotten sensors.
    pub listed: Vec<Arc<str>>,
}

/// What happens to one sensor.
enum Outcome {
    Keep(Arc<SensorPolicy>, bool),
    Change(Arc<SensorPolicy>, bool),
    Forget,
}

impl Processor {
    /// Takes new settings at a reload (see the module's documentation); the
    /// records of flushed windows are appended to `out`. The registry's
    /// capacity (`max_sensors`) is fixed for the life of the process and
    /// stays as it was. Cached wire names are resolved again, through the
    /// new sources' templates.
    pub fn reconfigure(&mut self, mut settings: CoreSettings, out: &mut Vec<Record>) -> SensorPlan {
        settings.max_sensors = self.settings.max_sensors;
        let default = Arc::new(SensorPolicy::default_for(settings.default_window_ms));
        let mut plan = SensorPlan::default();
        let before = out.len();
        let mut outcomes = Vec::new();
        for i in 0..self.sensors.len() {
            if !self.sensors[i].live {
                continue;
            }
            let key = SensorKey(i as u32);
            let id = self.registry.info(key).id.clone();
            let (policy, ruled) = crate::policy::resolve(&settings.rules, &default, &id);
            let s = &self.sensors[i];
            let outcome = if *policy == *s.policy {
                plan.kept += 1;
                Outcome::Keep(policy, ruled)
            } else {
                if plan.listed.len() < PLAN_LISTS_AT_MOST {
                    plan.listed.push(id);
                }
                let forget = s.ruled && !ruled;
                // Flushed under the settings they were opened with.
                self.close_sensor(key, i64::MAX, out);
                if forget {
                    plan.forgotten += 1;
                    Outcome::Forget
                } else {
                    plan.changed += 1;
                    Outcome::Change(policy, ruled)
                }
            };
            outcomes.push((key, outcome));
        }
        plan.records_flushed = out.len() - before;
        self.settings = settings;
        self.default_policy = default;
        self.registry.clear_wire_names();
        for (key, outcome) in outcomes {
            match outcome {
                Outcome::Keep(policy, ruled) => self.take_policy(key, policy, ruled),
                Outcome::Change(policy, ruled) => {
                    if policy.alarm.is_none() {
                        plan.alarms_dropped += self.drop_alarms(key);
                    }
                    self.take_policy(key, policy, ruled);
                }
                Outcome::Forget => {
                    plan.alarms_dropped += self.drop_alarms(key);
                    self.retire(key);
                }
            }
        }
        // Windows, stale limits and heartbeats may have changed: the next
        // scan finds every sensor's due time again.
        self.next_due_ms = i64::MIN;
        plan
    }

    fn take_policy(&mut self, key: SensorKey, policy: Arc<SensorPolicy>, ruled: bool) {
        let retire_after_ms = self.retire_after(&policy);
        let s = &mut self.sensors[key.index()];
        if s.extra.is_none() && policy.needs_analytics() {
            s.extra = Some(Box::default());
        }
        s.retire_after_ms = retire_after_ms;
        s.policy = policy;
        s.ruled = ruled;
    }

    /// Forgets a sensor's alarm states; returns how many were active.
    fn drop_alarms(&mut self, key: SensorKey) -> usize {
        let Some(extra) = self.sensors[key.index()].extra.as_mut() else {
            return 0;
        };
        let active = extra.drop_alarms();
        self.metrics.alarms_active.sub(active as i64);
        self.alarms_dirty = true;
        active
    }
}
