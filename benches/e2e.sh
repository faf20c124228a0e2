#!/usr/bin/env bash
# End-to-end benchmark: sensor-sim -> broker -> sensor-gateway -> upstream broker.
#
# For each rate, in one run and on the same broker:
#   1. the floor: a bare rumqttc subscriber that only counts messages
#      (`sensor-sim count`): CPU microseconds per message and peak RSS;
#   2. the gateway with the same stream: CPU microseconds per reading, peak
#      RSS, records delivered upstream;
# and reports the gateway/floor CPU ratio side by side.
#
# Loads (LOAD=...):
#   w1    (default) 1,000 sensors, JSON {"value", "ts" in ms}, 1 s windows,
#         count/min/max/mean, one threshold alarm (on vibration);
#   wide  10,200 sensors, 10 s windows, default statistics.
# Brokers: Mosquitto when installed, else the embedded rumqttd.
#
# Usage: benches/e2e.sh                         (RATES="20000 50000", DURATION=20, REPEAT=1)
#        LOAD=wide RATES=20000 DURATION=15 benches/e2e.sh
# Needs GNU time (/usr/bin/time, Debian package `time`).
set -euo pipefail
cd "$(dirname "$0")/.."
LOAD=${LOAD:-w1}
RATES=${RATES:-${RATE:-20000 50000}}
DURATION=${DURATION:-20}
cargo build --release -q -p sensor-gateway -p sensor-sim
BIN=target/release
. benches/lib.sh
P1=$(free_port); P2=$(free_port)
start_broker "$P1"; start_broker "$P2"

if [ "$LOAD" = wide ]; then
    LINES=100; MACHINES=34; SENSORS="10,200"
else
    LINES=10; MACHINES=50; SENSORS="1,000"
fi
scenario() {
    # LINES x MACHINES x (2 or 3) sensors.
    cat > "$TMP/scenario.toml" <<TOML
topic_prefix = "plant"
lines = $LINES
machines_per_line = $MACHINES
rate = $1
seed = 1
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
TOML
    if [ "$LOAD" = wide ]; then
        cat >> "$TMP/scenario.toml" <<TOML
[[sensor]]
name = "current"
kind = "motor_current"
base = 20.0
noise = 0.5
load_period = "60s"
load_amplitude = 3.0
TOML
    fi
}

publish() {
    "$BIN/sensor-sim" run --scenario "$TMP/scenario.toml" --broker "127.0.0.1:$P1" --count "$N" --qos 0 --client-id "bench-pub-$1-$RATE" 2>/dev/null
}
# Samples a process's resident memory every 0.1 s until it exits and writes
# "<max anonymous KiB> <max file-backed KiB>" (file-backed: code and read-only
# data of the binary and shared libraries, which the kernel maps in large
# chunks and can drop at any time; anonymous: the process's own memory).
sample_rss() {
    local parent=$1 out=$2 pid="" anon=0 file=0 a f
    for _ in $(seq 100); do pid=$(pgrep -P "$parent" | head -1); [ -n "$pid" ] && break; sleep 0.05; done
    while [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; do
        read -r a f < <(awk '/^RssAnon/ {a=$2} /^RssFile/ {f=$2} END {print a+0, f+0}' "/proc/$pid/status" 2>/dev/null || echo "0 0")
        [ "${a:-0}" -gt "$anon" ] && anon=$a
        [ "${f:-0}" -gt "$file" ] && file=$f
        sleep 0.1
    done
    echo "$anon $file" > "$out"
}
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
cpu_us_per() { awk -v t="$1" -v n="$2" 'BEGIN { split(t, a, " "); printf "%.2f", (a[1] + a[2]) * 1e6 / n }'; }

measure() {
RATE=$1
N=$((RATE * DURATION))
scenario "$RATE"
echo "== floor: bare rumqttc subscriber, $N messages at $RATE/s"
/usr/bin/time -f "%U %S %M" -o "$TMP/floor.time" \
    "$BIN/sensor-sim" count --broker "127.0.0.1:$P1" --topic 'plant/#' --idle 3s > "$TMP/floor.out" 2> "$TMP/floor.err" &
FLOOR=$!
sample_rss "$FLOOR" "$TMP/floor.rss" &
SAMPLER=$!
for _ in $(seq 200); do grep -q subscribed "$TMP/floor.err" && break; sleep 0.05; done
publish floor
wait "$FLOOR"
wait "$SAMPLER" || true
read -r FLOOR_ANON FLOOR_FILE < "$TMP/floor.rss"
FLOOR_N=$(sed -n 's/received=//p' "$TMP/floor.out")
FLOOR_T=$(cat "$TMP/floor.time")
FLOOR_CPU=$(cpu_us_per "$FLOOR_T" "$FLOOR_N")
FLOOR_RSS=$(echo "$FLOOR_T" | awk '{printf "%.1f", $3/1024}')

echo "== gateway: same stream ($LOAD), upstream QoS 1"
cat > "$TMP/gw-$RATE.toml" <<TOML
[gateway]
id = "bench"
state_dir = "$TMP/state-$RATE"
metrics_interval = "500ms"
[[source]]
kind = "mqtt"
broker = "127.0.0.1:$P1"
topic_template = "plant/{line}/{machine}/{sensor}"
qos = 0
[upstream]
broker = "127.0.0.1:$P2"
TOML
if [ "$LOAD" = wide ]; then
    printf '[pipeline]\ndefault_window = "10s"\nmax_sensors = 20000\n' >> "$TMP/gw-$RATE.toml"
else
    cat >> "$TMP/gw-$RATE.toml" <<TOML
[[sensor]]
match = "*"
window = "1s"
stats = ["count", "min", "max", "mean"]
[[sensor]]
match = "*/vibration"
window = "1s"
stats = ["count", "min", "max", "mean"]
[sensor.alarm]
high = 3.5
hysteresis = 0.2
TOML
fi
# A fresh state and metrics file per run: a metrics file left by the previous
# run would satisfy the wait for the subscription before this gateway is up.
rm -rf "$TMP/state-$RATE" "$TMP/gw-$RATE.prom"
RUST_LOG=warn /usr/bin/time -f "%U %S %M" -o "$TMP/gw.time" \
    "$BIN/sensor-gateway" run --config "$TMP/gw-$RATE.toml" --metrics-file "$TMP/gw-$RATE.prom" 2> "$TMP/gw.log" &
GWTIME=$!
sample_rss "$GWTIME" "$TMP/gw.rss" &
SAMPLER=$!
metric() { awk -v m="$1" '$1 == m { print $2 }' "$TMP/gw-$RATE.prom" 2>/dev/null || true; }
for _ in $(seq 200); do [ "$(metric gateway_source_subscriptions_total)" = "1" ] && break; sleep 0.05; done
START=$(date +%s.%N)
publish gateway
last=-1
while true; do
    sleep 1
    got=$(metric gateway_messages_received_total)
    [ "$got" = "$last" ] && break
    last=$got
done
END=$(date +%s.%N)
pkill -TERM -P "$GWTIME" || true
wait "$GWTIME" || true
wait "$SAMPLER" || true
read -r GW_ANON GW_FILE < "$TMP/gw.rss"
GW_N=$(metric gateway_messages_received_total)
GW_T=$(cat "$TMP/gw.time")
GW_CPU=$(cpu_us_per "$GW_T" "$GW_N")
GW_RSS=$(echo "$GW_T" | awk '{printf "%.1f", $3/1024}')
SUMMARIES=$(metric gateway_upstream_acked_total)

RATIO=$(awk -v a="$GW_CPU" -v b="$FLOOR_CPU" 'BEGIN { printf "%.2f", a / b }')
ROWS+=("$(printf '%-8s %-9s %-7s %-5s %-4s %-4s  %-9s %-7s %-5s %-4s %-4s  %-9s %s' "$RATE" "$FLOOR_N" "$FLOOR_CPU" "$FLOOR_RSS" "$(mb "$FLOOR_ANON")" "$(mb "$FLOOR_FILE")" "$GW_N" "$GW_CPU" "$GW_RSS" "$(mb "$GW_ANON")" "$(mb "$GW_FILE")" "$SUMMARIES" "$RATIO")")
}

ROWS=()
for r in $RATES; do for _ in $(seq "${REPEAT:-1}"); do measure "$r"; done; done

cat <<REPORT

machine:  $(nproc) cores, $(awk '/model name/ {sub(/.*: /, ""); print; exit}' /proc/cpuinfo)
broker:   $BROKER
load:     $LOAD, $SENSORS sensors, $DURATION s per rate (QoS 0 in, QoS 1 upstream)

         floor (bare rumqttc)                 sensor-gateway
                            peak  anon file                     peak  anon file
rate/s   received  CPU us  RSS MB (MB) (MB)  received  CPU us  RSS MB (MB) (MB)  upstream  CPU ratio
REPORT
printf '%s\n' "${ROWS[@]}"
