# Shared by the end-to-end benchmarks (sourced, with BIN set): a temporary
# directory and the processes to stop on exit, free ports, and brokers
# (Mosquitto when installed, else the embedded rumqttd).
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP" 2>/dev/null || true; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start_broker() {
    local port=$1
    if command -v mosquitto >/dev/null; then
        printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 1000000\n' "$port" > "$TMP/m$port.conf"
        mosquitto -c "$TMP/m$port.conf" 2>/dev/null &
    else
        RUST_LOG=off "$BIN/sensor-sim" broker --listen "127.0.0.1:$port" &
    fi
    PIDS+=($!)
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return; sleep 0.05; done
    echo "broker on $port did not start" >&2; exit 1
}
BROKER=$(command -v mosquitto >/dev/null && echo "mosquitto $(mosquitto -h | head -1 | awk '{print $3}')" || echo "rumqttd (embedded)")
