#!/usr/bin/env bash
# Idle benchmark: what a gateway with nothing to do costs.
#
# Starts two brokers (Mosquitto when installed, else the embedded rumqttd),
# then the gateway with the shipped example configuration configs/gateway.toml
# (broker addresses pointed at the two brokers, the state directory in a
# temporary directory, upstream without TLS; everything else as shipped),
# waits until both connections are up and the start-up is over, and measures
# over DURATION seconds with no input at all:
#   - context switches per second, voluntary + involuntary, summed over every
#     thread of the process (/proc/PID/task/*/status; a thread that ends
#     during the measurement takes its count with it);
#   - CPU % of one core (utime + stime from /proc/PID/stat);
#   - resident memory at the end (VmRSS, RssAnon, RssFile).
# Then, if `strace` is installed and STRACE=1, which system calls wake the
# process (strace -f -c over STRACE_SECONDS, a separate run of the count:
# strace's own overhead does not enter the figures above).
#
# Usage: benches/idle.sh                  (DURATION=60, PROFILE=release)
#        PROFILE=debug DURATION=60 STRACE=1 benches/idle.sh
#        GATEWAY_BIN=target/cross-aarch64/aarch64-unknown-linux-gnu/release/sensor-gateway \
#            GATEWAY_RUNNER=qemu-aarch64-static benches/idle.sh
#        (another binary, e.g. the ARM build that CI makes, run through a
#        QEMU user-mode emulator: the process measured is then QEMU with the
#        gateway in it, so RSS includes QEMU's own code and translation cache)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-60}
PROFILE=${PROFILE:-release}
WARMUP=${WARMUP:-5}
if [ "$PROFILE" = release ]; then
    cargo build --release -q -p sensor-gateway -p sensor-sim
else
    cargo build -q -p sensor-gateway -p sensor-sim
fi
BIN=target/$PROFILE
. benches/lib.sh
P1=$(free_port); P2=$(free_port)
start_broker "$P1"; start_broker "$P2"

# The shipped example, pointed at the local brokers.
CONFIG=configs/gateway.toml
awk -v p1="$P1" -v p2="$P2" -v dir="$TMP/state" '
    /^\[/ { section = $0 }
    section == "[upstream.tls]" { next }
    /^state_dir *=/ { print "state_dir = \"" dir "\""; next }
    /^broker *=/ && section == "[[source]]" { print "broker = \"127.0.0.1:" p1 "\""; next }
    /^broker *=/ && section == "[upstream]" { print "broker = \"127.0.0.1:" p2 "\""; next }
    { print }
' "$CONFIG" > "$TMP/gateway.toml"

start_gateway() {
    rm -rf "$TMP/state" "$TMP/gw.prom"
    RUST_LOG=info ${GATEWAY_RUNNER:-} "${GATEWAY_BIN:-$BIN/sensor-gateway}" run --config "$TMP/gateway.toml" --metrics-file "$TMP/gw.prom" 2> "$TMP/gw.log" &
    GW=$!
    PIDS+=("$GW")
    # Both links up: the source subscribed, upstream connected.
    for _ in $(seq 200); do
        grep -q "Connected to upstream" "$TMP/gw.log" 2>/dev/null && grep -q "Connected to the source broker" "$TMP/gw.log" 2>/dev/null && break
        sleep 0.05
    done
    sleep "$WARMUP"
}
# Sum of voluntary + involuntary context switches over all threads.
switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ { s += $2 } END { print s + 0 }'; }
# utime + stime in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' /proc/"$1"/stat; }
status_kb() { awk -v k="$2:" '$1 == k { print $2 }' /proc/"$1"/status; }

start_gateway
S0=$(switches "$GW"); C0=$(cpu_ticks "$GW"); T0=$(date +%s.%N)
sleep "$DURATION"
S1=$(switches "$GW"); C1=$(cpu_ticks "$GW"); T1=$(date +%s.%N)
THREADS=$(ls /proc/"$GW"/task | wc -l)
PER_THREAD=$(for t in /proc/"$GW"/task/*; do printf '%s=%s ' "$(cat "$t/comm")" "$(awk '/ctxt_switches/ { s += $2 } END { print s + 0 }' "$t/status")"; done)
RSS=$(status_kb "$GW" VmRSS); ANON=$(status_kb "$GW" RssAnon); FILE=$(status_kb "$GW" RssFile)
HZ=$(getconf CLK_TCK)
kill -TERM "$GW"; wait "$GW" || true

cat <<REPORT
machine:  $(nproc) cores, $(awk '/model name/ {sub(/.*: /, ""); print; exit}' /proc/cpuinfo)
broker:   $BROKER (both), build: ${GATEWAY_BIN:-$PROFILE}${GATEWAY_RUNNER:+ under $GATEWAY_RUNNER}, config: $CONFIG (brokers local, no TLS)
idle for: $(awk -v a="$T0" -v b="$T1" 'BEGIN { printf "%.1f", b - a }') s after $WARMUP s of warm-up
context switches/s: $(awk -v a="$S0" -v b="$S1" -v t0="$T0" -v t1="$T1" 'BEGIN { printf "%.2f", (b - a) / (t1 - t0) }')  (threads: $THREADS; totals since start: $PER_THREAD)
CPU:      $(awk -v a="$C0" -v b="$C1" -v hz="$HZ" -v t0="$T0" -v t1="$T1" 'BEGIN { printf "%.3f", 100 * (b - a) / hz / (t1 - t0) }') % of one core
RSS:      $(awk -v k="$RSS" 'BEGIN { printf "%.1f", k / 1024 }') MB (anon $(awk -v k="$ANON" 'BEGIN { printf "%.1f", k / 1024 }') MB, file $(awk -v k="$FILE" 'BEGIN { printf "%.1f", k / 1024 }') MB)
REPORT

if [ "${STRACE:-0}" = 1 ] && command -v strace >/dev/null; then
    start_gateway
    echo "system calls over ${STRACE_SECONDS:-20} s (strace -f -c):"
    timeout -s INT "${STRACE_SECONDS:-20}" strace -f -c -o "$TMP/strace.txt" -p "$GW" 2>/dev/null || true
    head -20 "$TMP/strace.txt"
    kill -TERM "$GW"; wait "$GW" || true
fi
