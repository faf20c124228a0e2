use super::*;

/// 2026-11-26T00:00:00Z.
const BUILD_MS: i64 = 1_795_651_200_000;

fn guard(require_sync: bool) -> ClockGuard {
    ClockGuard::new(ClockSettings {
        require_sync,
        not_before_ms: BUILD_MS,
    })
}

fn at(wall_ms: i64, mono_ms: i64, synced: bool) -> ClockReading {
    ClockReading {
        wall_ms,
        mono_ms,
        synced,
    }
}

#[test]
fn a_clock_before_the_build_date_is_not_trusted_until_synchronised() {
    for require_sync in [false, true] {
        let mut g = guard(require_sync);
        assert!(!g.observe(at(5_000, 5_000, false)).trusted);
        let v = g.observe(at(BUILD_MS + 86_400_000, 6_000, true));
        assert!(v.trusted && v.became_trusted);
        assert!(
            v.jump_ms.is_some_and(|j| j > 0),
            "the sync is a forward jump"
        );
    }
}

#[test]
fn without_require_sync_a_plausible_clock_is_trusted_at_once() {
    let mut g = guard(false);
    let v = g.observe(at(BUILD_MS + 1_000, 0, false));
    assert!(v.trusted && v.became_trusted);
    let mut g = guard(true);
    assert!(!g.observe(at(BUILD_MS + 1_000, 0, false)).trusted);
}

#[test]
fn a_far_future_clock_is_not_believed_without_synchronisation() {
    let mut g = guard(false);
    let year_2106 = 4_294_967_295_000;
    assert!(!g.observe(at(year_2106, 0, false)).trusted);
    assert!(g.observe(at(year_2106, 10, true)).trusted);
}

#[test]
fn trust_once_given_stays_when_the_kernel_reports_unsynchronised_again() {
    let mut g = guard(true);
    assert!(g.observe(at(BUILD_MS, 0, true)).trusted);
    assert!(g.observe(at(BUILD_MS + 1_000, 1_000, false)).trusted);
}

#[test]
fn steps_both_ways_are_jumps_and_slow_drift_is_not() {
    let mut g = guard(false);
    g.observe(at(BUILD_MS, 0, true));
    // 20 ms of difference over a minute: slewing, not a step.
    assert_eq!(g.observe(at(BUILD_MS + 60_020, 60_000, true)).jump_ms, None);
    let v = g.observe(at(BUILD_MS + 3_600_000 + 61_020, 61_000, true));
    assert_eq!(v.jump_ms, Some(3_600_000));
    let v = g.observe(at(BUILD_MS + 62_020 - 5_000, 62_000, true));
    assert_eq!(v.jump_ms, Some(-3_600_000 - 5_000));
}

#[test]
fn waiting_inputs_are_stamped_with_the_time_they_arrived_on_the_corrected_clock() {
    let mut p = Pending::new(2);
    p.hold("a", at(5_000, 5_000, false));
    p.hold("b", at(7_000, 7_000, false));
    assert!(p.is_full());
    let released: Vec<_> = p.release(at(BUILD_MS, 10_000, true)).collect();
    assert_eq!(released[0].arrived_ms, BUILD_MS - 5_000);
    assert_eq!(released[1].arrived_ms, BUILD_MS - 3_000);
    assert_eq!(released[1].correction_ms, BUILD_MS - 10_000);
    assert!(p.is_empty());
}
