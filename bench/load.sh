#!/usr/bin/env bash
# Load comparison of `genesis-gate serve` against a bare rustls server
# (examples/bare_tls.rs) over TLS on 127.0.0.1, with oha as the client.
#
# It installs oha when missing and builds release binaries. Then it starts
# three servers on loopback: genesis-gate with context `created`, where
# review 0010 is denied, genesis-gate with context `annotated`, where it is
# allowed, and the bare server. For HTTP/1.1 keep-alive and HTTP/2 it runs:
#   - a fixed rate of RATE requests per second for RATE_DURATION, with
#     oha's coordinated-omission correction;
#   - maximum throughput for MAX_DURATION.
# Every oha run is bounded by -z, and the servers are stopped on exit.
# It prints one table: rate, p50, p99, p99.9, requests per second, and the
# server's CPU time per request (from /proc, user + system).
#
# Usage: bench/load.sh    (from anywhere; about 4 minutes of load)
# Settings, as environment variables: RATE (1000), RATE_DURATION (20s),
# MAX_DURATION (15s), RESULTS_DIR (a new temporary folder; oha's JSON
# output and the server logs are kept there).
set -euo pipefail

RATE=${RATE:-1000}
RATE_DURATION=${RATE_DURATION:-20s}
MAX_DURATION=${MAX_DURATION:-15s}
# Connections for the fixed-rate runs: HTTP/1.1 clients keep a pool of
# connections, and HTTP/2 clients multiplex streams over one connection.
RATE_H1_CONNECTIONS=8
RATE_H2_CONNECTIONS=1
RATE_H2_STREAMS=8
# Requests in flight for the maximum-throughput runs: enough to keep two
# server cores busy, few enough that oha, on the same two cores, stays
# light.
MAX_H1_CONNECTIONS=32
MAX_H2_CONNECTIONS=4
MAX_H2_STREAMS=8
# oha's version is pinned so that a rerun measures with the same client.
OHA_VERSION=1.16.0

GATE_DENY_PORT=18443
GATE_ALLOW_PORT=18444
BARE_PORT=18445

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
target_dir=${CARGO_TARGET_DIR:-$repo/target}
results=${RESULTS_DIR:-$(mktemp -d -t genesis-gate-load.XXXXXX)}
mkdir -p "$results"
cert_dir="$results/certs"
review="$repo/tests/fixtures/admissionreviews/0010-Pod-CREATE.json"

pids=()
stop_servers() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
trap stop_servers EXIT

if ! command -v oha >/dev/null; then
    echo "== installing oha $OHA_VERSION (cargo install --locked)"
    # --locked: the newest versions of oha's dependencies need a newer
    # rustc than this project's toolchain.
    cargo install oha --version "$OHA_VERSION" --locked
fi

echo "== building release binaries"
cargo build --release --bin genesis-gate --example bare_tls
gate_bin="$target_dir/release/genesis-gate"
bare_bin="$target_dir/release/examples/bare_tls"

# Waits up to 10 s until a server responds to /healthz (genesis-gate) or
# to a POST (the bare server).
wait_ready() {
    local url=$1
    for _ in $(seq 100); do
        if curl -sf --cacert "$cert_dir/ca.pem" -X POST -d '{}' "$url" >/dev/null 2>&1 \
            || curl -sf --cacert "$cert_dir/ca.pem" "${url%/*}/healthz" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    echo "error: $url did not respond within 10 s; see the server logs in $results" >&2
    exit 1
}

# start_gate PORT CONTEXT: starts genesis-gate and sets started_pid.
start_gate() {
    local port=$1 context=$2
    # RUST_LOG is cleared so the server logs at its shipped default level.
    env -u RUST_LOG "$gate_bin" serve --listen "127.0.0.1:$port" --cert-dir "$cert_dir" \
        --context "tests/fixtures/context/$context" --no-cluster \
        2>"$results/gate-$context.log" &
    started_pid=$!
    pids+=("$started_pid")
    wait_ready "https://127.0.0.1:$port/validate"
}

echo "== starting servers on 127.0.0.1 (logs in $results)"
start_gate "$GATE_DENY_PORT" created
gate_deny_pid=$started_pid
# The first server created the dev CA and serving certificate; the others
# use the same files.
start_gate "$GATE_ALLOW_PORT" annotated
gate_allow_pid=$started_pid
"$bare_bin" --listen "127.0.0.1:$BARE_PORT" --cert-dir "$cert_dir" 2>"$results/bare.log" &
bare_pid=$!
pids+=("$bare_pid")
wait_ready "https://127.0.0.1:$BARE_PORT/validate"

# Checks that each genesis-gate decides review 0010 as the case expects,
# so that each run below measures the path its name gives.
expect_allowed() {
    local port=$1 expected=$2 answer
    answer=$(curl -sf --cacert "$cert_dir/ca.pem" -H 'Content-Type: application/json' \
        --data-binary "@$review" "https://127.0.0.1:$port/validate")
    if ! grep -q "\"allowed\":$expected" <<<"$answer"; then
        echo "error: expected allowed=$expected from port $port, got: $answer" >&2
        exit 1
    fi
}
expect_allowed "$GATE_DENY_PORT" false
expect_allowed "$GATE_ALLOW_PORT" true

# CPU time (user + system) of a process in clock ticks, from /proc.
cpu_ticks() {
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

# run NAME PID PORT OHA-ARGS...: one bounded oha run, with the server's
# CPU ticks before and after stored beside oha's JSON output.
run() {
    local name=$1 pid=$2 port=$3
    shift 3
    echo "== $name"
    local before after
    before=$(cpu_ticks "$pid")
    oha --no-tui --output-format json -o "$results/$name.json" \
        -m POST -H 'Content-Type: application/json' -D "$review" \
        --cacert "$cert_dir/ca.pem" -t 5s "$@" \
        "https://127.0.0.1:$port/validate"
    after=$(cpu_ticks "$pid")
    echo "$((after - before))" >"$results/$name.cpu"
}

servers=("gate-deny $gate_deny_pid $GATE_DENY_PORT" "gate-allow $gate_allow_pid $GATE_ALLOW_PORT" "bare $bare_pid $BARE_PORT")
for server in "${servers[@]}"; do
    read -r label pid port <<<"$server"
    run "rate-h1-$label" "$pid" "$port" -q "$RATE" --latency-correction -z "$RATE_DURATION" -w \
        -c "$RATE_H1_CONNECTIONS"
done
for server in "${servers[@]}"; do
    read -r label pid port <<<"$server"
    run "rate-h2-$label" "$pid" "$port" -q "$RATE" --latency-correction -z "$RATE_DURATION" \
        --http2 -c "$RATE_H2_CONNECTIONS" -p "$RATE_H2_STREAMS"
done
for server in "${servers[@]}"; do
    read -r label pid port <<<"$server"
    run "max-h1-$label" "$pid" "$port" -z "$MAX_DURATION" -w -c "$MAX_H1_CONNECTIONS"
done
for server in "${servers[@]}"; do
    read -r label pid port <<<"$server"
    run "max-h2-$label" "$pid" "$port" -z "$MAX_DURATION" \
        --http2 -c "$MAX_H2_CONNECTIONS" -p "$MAX_H2_STREAMS"
done

echo
echo "== machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1)," \
    "$(free -g | awk '/^Mem:/ { print $2 }') GiB; load average at the end:" \
    "$(cut -d' ' -f1-3 /proc/loadavg); $(oha --version)"
python3 - "$results" "$(getconf CLK_TCK)" <<'EOF'
import json, pathlib, sys

results = pathlib.Path(sys.argv[1])
ticks_per_second = int(sys.argv[2])
header = f"{'run':<22} {'rps':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'ok %':>6} {'cpu us/req':>10}  statuses"
print(header)
print("-" * len(header))
for mode in ("rate-h1", "rate-h2", "max-h1", "max-h2"):
    for server in ("gate-deny", "gate-allow", "bare"):
        name = f"{mode}-{server}"
        data = json.loads((results / f"{name}.json").read_text())
        ticks = int((results / f"{name}.cpu").read_text())
        latency = data["latencyPercentiles"]
        statuses = data["statusCodeDistribution"]
        done = sum(statuses.values())
        cpu_us = ticks / ticks_per_second * 1e6 / done if done else float("nan")
        errors = data["errorDistribution"]
        print(
            f"{name:<22} {data['summary']['requestsPerSec']:>9.0f}"
            f" {latency['p50'] * 1e3:>8.3f} {latency['p99'] * 1e3:>8.3f}"
            f" {latency['p99.9'] * 1e3:>9.3f} {data['summary']['successRate'] * 100:>6.1f}"
            f" {cpu_us:>10.0f}  {statuses} {errors if errors else ''}"
        )

# The design's throughput target: genesis-gate within half of the bare
# server's requests per second.
for mode in ("max-h1", "max-h2"):
    bare = json.loads((results / f"{mode}-bare.json").read_text())["summary"]["requestsPerSec"]
    for server in ("gate-deny", "gate-allow"):
        gate = json.loads((results / f"{mode}-{server}.json").read_text())["summary"]["requestsPerSec"]
        print(f"{mode}-{server}: {gate / bare:.0%} of the bare server's requests per second")
EOF
echo "oha JSON output and server logs: $results"
