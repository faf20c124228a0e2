#!/usr/bin/env bash
# Drain benchmark: the gateway builds a backlog while upstream is down, then
# a local Mosquitto comes up (with a subscriber on it) and the backlog drains
# with QoS 1. Reports the backlog size on disk and summaries/s while draining.
#
# Usage: benches/drain.sh          (RATE=20000 DURATION=15 by default)
# Needs Mosquitto (Debian package `mosquitto`).
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-20000}
DURATION=${DURATION:-15}
DURABILITY=${DURABILITY:-outage}
cargo build --release -q -p sensor-gateway -p sensor-sim
BIN=target/release
. benches/lib.sh
mosq() {
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 10000000\nmax_inflight_messages 1000\n' "$1" > "$TMP/m$1.conf"
    mosquitto -c "$TMP/m$1.conf" 2>/dev/null &
    PIDS+=($!)
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done
}
metric() { awk -v m="$1" '$1 == m { print $2 }' "$TMP/gw.prom" 2>/dev/null || true; }
P1=$(free_port); P2=$(free_port)
mosq "$P1"
cat > "$TMP/scenario.toml" <<TOML
lines = 100
machines_per_line = 34
rate = $RATE
[[sensor]]
name = "temperature"
kind = "temperature"
base = 60.0
noise = 0.5
[[sensor]]
name = "vibration"
kind = "vibration"
base = 2.0
noise = 0.2
[[sensor]]
name = "current"
kind = "motor_current"
base = 20.0
noise = 0.5
TOML
cat > "$TMP/gw.toml" <<TOML
[gateway]
id = "bench"
state_dir = "$TMP/state"
metrics_interval = "100ms"
[[source]]
kind = "mqtt"
broker = "127.0.0.1:$P1"
topic_template = "plant/{line}/{machine}/{sensor}"
qos = 0
[pipeline]
default_window = "100ms"
allowed_lateness = "0s"
max_sensors = 20000
[upstream]
broker = "127.0.0.1:$P2"
reconnect_backoff_max = "1s"
inflight = 256
[buffer]
durability = "$DURABILITY"
max_disk_bytes = 4294967296
TOML
RUST_LOG=warn "$BIN/sensor-gateway" run --config "$TMP/gw.toml" --metrics-file "$TMP/gw.prom" 2> "$TMP/gw.log" &
GW=$!; PIDS+=($GW)
for _ in $(seq 200); do [ "$(metric gateway_source_subscriptions_total)" = "1" ] && break; sleep 0.05; done
echo "== building a backlog: $((RATE * DURATION)) readings at $RATE/s with upstream down"
"$BIN/sensor-sim" run --scenario "$TMP/scenario.toml" --broker "127.0.0.1:$P1" --count $((RATE * DURATION)) --qos 0 > /dev/null 2>&1
sleep 2
BACKLOG=$(metric gateway_upstream_queue_records)
DISK=$(metric gateway_buffer_disk_bytes)
echo "backlog: $BACKLOG summaries, $DISK bytes on disk"
echo "== upstream Mosquitto comes up"
mosq "$P2"
"$BIN/sensor-sim" count --broker "127.0.0.1:$P2" --topic 'gateways/+/summary/#' --idle 5s > "$TMP/count.out" 2>/dev/null &
PIDS+=($!)
for _ in $(seq 400); do [ "$(metric gateway_upstream_connected)" = "1" ] && break; sleep 0.025; done
START=$(date +%s.%N)
while [ "$(metric gateway_upstream_queue_records)" != "0" ]; do sleep 0.05; done
END=$(date +%s.%N)
awk -v n="$BACKLOG" -v a="$START" -v b="$END" 'BEGIN { printf "drained %d summaries in %.2f s = %.0f summaries/s (QoS 1, Mosquitto, inflight 256)\n", n, b - a, n / (b - a) }'
