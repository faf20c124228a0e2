#!/usr/bin/env bash
# Power-cut run: the gateway is SIGKILLed and the power cut at random points
# (filesystem: tests/powercut, which forgets what was not fsynced), in both
# durability modes, and prints per mode: cuts, readings lost per cut
# (min/median/max), how old the oldest lost reading was at its cut, and
# violations of the stated loss window.
#
# Usage: benches/powercut.sh [CUTS]      (1000 by default; POWERCUT_SEED=N replays)
# Needs root, /dev/fuse and Mosquitto (Debian packages `fuse3`, `mosquitto`).
set -euo pipefail
cd "$(dirname "$0")/.."
export POWERCUT_CUTS=${1:-1000}
cargo build -q -p sensor-gateway -p sensor-sim --bins
out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
# One mode at a time: the two would share the machine's cores.
for t in power_cuts_in_always_mode power_cuts_in_outage_mode; do
    cargo test -q -p sensor-gateway-e2e --test it "powercut::$t" -- --nocapture --test-threads=1 \
        >>"$out" 2>&1 || status=1
done
echo "| mode | cuts | readings lost per cut: min | median | max | oldest lost reading at its cut | violations |"
echo "|---|---|---|---|---|---|---|"
grep -E '^\| (always|outage) \|' "$out" || true
grep -E '^violation:|POWERCUT_SEED' "$out" || true
if [ "$status" -ne 0 ]; then
    echo "a power-cut test failed; its output:" >&2
    tail -n 60 "$out" >&2
fi
exit "$status"
