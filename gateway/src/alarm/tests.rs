//! Table-driven alarm tests: a sequence of (time, value) and the events
//! expected, by transition and alarm kind.

use super::*;

const S: i64 = 1000;

fn spec() -> AlarmSpec {
    AlarmSpec {
        thresholds: vec![
            Threshold {
                kind: AlarmKind::High,
                limit: 7.1,
                severity: Severity::Warning,
            },
            Threshold {
                kind: AlarmKind::HighHigh,
                limit: 11.0,
                severity: Severity::Critical,
            },
            Threshold {
                kind: AlarmKind::Low,
                limit: 1.0,
                severity: Severity::Warning,
            },
        ],
        hysteresis: 0.5,
        ..AlarmSpec::default()
    }
}

/// Runs the readings and returns "raised:high@3" style descriptions.
fn run(spec: &AlarmSpec, steps: &[(i64, f64)]) -> Vec<String> {
    let mut a = SensorAlarms::default();
    let mut out = Vec::new();
    for &(t, v) in steps {
        a.reading(spec, v, t * S, &mut out);
    }
    out.iter()
        .map(|e| format!("{}:{}@{}", e.transition.name(), e.kind.name(), e.ts_ms / S))
        .collect()
}

#[test]
fn threshold_table() {
    struct Case {
        name: &'static str,
        spec: AlarmSpec,
        steps: Vec<(i64, f64)>,
        expect: Vec<&'static str>,
    }
    let cases = vec![
        Case {
            name: "raise above the limit, clear below limit - hysteresis",
            spec: spec(),
            steps: vec![(0, 5.0), (1, 7.2), (2, 6.8), (3, 6.65), (4, 6.59)],
            expect: vec!["raised:high@1", "cleared:high@4"],
        },
        Case {
            name: "no flapping inside the band",
            spec: spec(),
            steps: vec![(0, 7.2), (1, 7.0), (2, 7.2), (3, 6.9), (4, 7.15), (5, 6.7)],
            expect: vec!["raised:high@0"],
        },
        Case {
            name: "both levels",
            spec: spec(),
            steps: vec![(0, 8.0), (1, 12.0), (2, 10.4), (3, 6.0)],
            expect: vec![
                "raised:high@0",
                "raised:high_high@1",
                "cleared:high_high@2",
                "cleared:high@3",
            ],
        },
        Case {
            name: "low alarm mirrors high",
            spec: spec(),
            steps: vec![(0, 2.0), (1, 0.9), (2, 1.3), (3, 1.6)],
            expect: vec!["raised:low@1", "cleared:low@3"],
        },
        Case {
            name: "on-delay by time: a short spike raises nothing",
            spec: AlarmSpec {
                on_delay: Delay::Ms(3 * S),
                ..spec()
            },
            steps: vec![
                (0, 8.0),
                (1, 8.0),
                (2, 5.0),
                (3, 8.0),
                (4, 8.0),
                (5, 8.0),
                (6, 8.0),
            ],
            expect: vec!["raised:high@6"],
        },
        Case {
            name: "on-delay by readings",
            spec: AlarmSpec {
                on_delay: Delay::Readings(3),
                ..spec()
            },
            steps: vec![(0, 8.0), (1, 8.0), (2, 5.0), (3, 8.0), (4, 8.0), (5, 8.0)],
            expect: vec!["raised:high@5"],
        },
        Case {
            name: "off-delay keeps the alarm through a brief dip",
            spec: AlarmSpec {
                off_delay: Delay::Ms(2 * S),
                ..spec()
            },
            steps: vec![(0, 8.0), (1, 5.0), (2, 8.0), (3, 5.0), (4, 5.0), (5, 5.0)],
            expect: vec!["raised:high@0", "cleared:high@5"],
        },
        Case {
            name: "latched: stays active after the condition clears",
            spec: AlarmSpec {
                latch: true,
                ..spec()
            },
            steps: vec![(0, 8.0), (1, 5.0), (2, 5.0), (3, 8.0), (4, 5.0)],
            expect: vec!["raised:high@0"],
        },
    ];
    for c in cases {
        assert_eq!(run(&c.spec, &c.steps), c.expect, "{}", c.name);
    }
}

#[test]
fn latched_alarm_clears_only_on_acknowledgement() {
    let spec = AlarmSpec {
        latch: true,
        ..spec()
    };
    let mut a = SensorAlarms::default();
    let mut out = Vec::new();
    a.reading(&spec, 8.0, 0, &mut out);
    a.reading(&spec, 5.0, S, &mut out);
    assert!(a.states[AlarmKind::High as usize].active);
    assert!(a.acknowledge(&spec, AlarmKind::High, "jane", 2 * S, &mut out));
    let names: Vec<_> = out.iter().map(|e| e.transition.name()).collect();
    assert_eq!(names, ["raised", "acknowledged", "cleared"]);
    assert_eq!(out[1].by.as_deref(), Some("jane"));
    assert_eq!(out[2].duration_ms, 2 * S);
    assert!(!a.any_active());
    // A second acknowledgement does nothing.
    assert!(!a.acknowledge(&spec, AlarmKind::High, "jane", 3 * S, &mut out));
}

#[test]
fn acknowledged_while_the_condition_holds_then_clears_normally() {
    let spec = AlarmSpec {
        latch: true,
        ..spec()
    };
    let mut a = SensorAlarms::default();
    let mut out = Vec::new();
    a.reading(&spec, 8.0, 0, &mut out);
    a.acknowledge(&spec, AlarmKind::High, "op", S, &mut out);
    a.reading(&spec, 8.5, 2 * S, &mut out);
    a.reading(&spec, 5.0, 3 * S, &mut out);
    let names: Vec<_> = out
        .iter()
        .map(|e| format!("{}@{}", e.transition.name(), e.ts_ms / S))
        .collect();
    assert_eq!(names, ["raised@0", "acknowledged@1", "cleared@3"]);
    assert_eq!(out[2].peak, Some(8.5));
}

#[test]
fn rate_of_change_table() {
    let spec = AlarmSpec {
        rate: Some(RateSpec {
            limit_per_min: 5.0,
            interval_ms: 60 * S,
            both_directions: false,
            severity: Severity::Warning,
        }),
        ..AlarmSpec::default()
    };
    // Bearing temperature: +2/min, then +6/min, then flat.
    let steps: Vec<(i64, f64)> = vec![
        (0, 40.0),
        (60, 42.0),
        (120, 44.0),
        (180, 50.0),
        (240, 56.0),
        (300, 56.0),
        (330, 56.1),
    ];
    assert_eq!(
        run(&spec, &steps),
        ["raised:rate_of_change@180", "cleared:rate_of_change@300"]
    );
    // Falling fast only counts in both directions.
    let falling = [(0, 50.0), (60, 40.0), (120, 30.0)];
    assert!(run(&spec, &falling).is_empty());
    let both = AlarmSpec {
        rate: spec.rate.map(|r| RateSpec {
            both_directions: true,
            ..r
        }),
        ..spec.clone()
    };
    assert_eq!(run(&both, &falling), ["raised:rate_of_change@60"]);
}

#[test]
fn stale_sensor_table() {
    let spec = AlarmSpec {
        stale_after_ms: Some(30 * S),
        ..AlarmSpec::default()
    };
    let mut a = SensorAlarms::default();
    let mut out = Vec::new();
    a.reading(&spec, 1.0, 0, &mut out);
    a.tick(&spec, 29 * S, 0, &mut out);
    assert!(out.is_empty(), "not yet stale");
    a.tick(&spec, 30 * S, 0, &mut out);
    a.tick(&spec, 40 * S, 0, &mut out);
    assert_eq!(out.len(), 1, "raised once");
    assert_eq!(
        (out[0].transition, out[0].kind, out[0].duration_ms),
        (Transition::Raised, AlarmKind::Stale, 30 * S)
    );
    a.reading(&spec, 1.0, 45 * S, &mut out);
    assert_eq!(out[1].transition, Transition::Cleared);
    assert!(!a.any_active());
}

#[test]
fn state_round_trips_through_persistence() {
    let spec = spec();
    let mut a = SensorAlarms::default();
    let mut out = Vec::new();
    a.reading(&spec, 8.0, 0, &mut out);
    let bytes = postcard::to_allocvec(&a).unwrap();
    let mut b: SensorAlarms = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(a, b);
    // After a restart: the same reading raises nothing, a low one clears.
    let mut out = Vec::new();
    b.reading(&spec, 8.0, S, &mut out);
    assert!(out.is_empty());
    b.reading(&spec, 5.0, 2 * S, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].transition, Transition::Cleared);
    assert_eq!(out[0].since_ms, 0);
}
