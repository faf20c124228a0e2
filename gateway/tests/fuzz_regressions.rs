//! Every input a fuzzer found a defect with is saved under
//! `fuzz/regressions/<target>/` and replayed here, so a fixed crash stays
//! fixed. The targets themselves are in `sensor_gateway::fuzzing`.

use std::path::Path;

#[test]
fn saved_fuzz_inputs_stay_fixed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    let mut replayed = 0;
    for target in sensor_gateway::fuzzing::TARGETS {
        let dir = root.join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.extension().is_some_and(|e| e == "md") {
                continue;
            }
            let data = std::fs::read(&path).expect("a saved input");
            assert!(sensor_gateway::fuzzing::run(target, &data));
            replayed += 1;
        }
    }
    // The directory exists and holds at least the seeds committed with it.
    assert!(replayed > 0, "no inputs under {}", root.display());
}
