#!/usr/bin/env bash
# Node benchmarks (not tests: figures depend on the machine). Prints:
#   1. durable submissions per second and latency percentiles, with wrk against POST /v1/jobs
#      (every 202 means the job's first event was fsynced);
#   2. orchestration overhead per job: end to end (accepted -> completed, server clock) minus
#      the engine's own time, median of N small uploads with tiny.en;
#   3. idle RSS of a node with no model loaded.
#
#   deploy/bench/node.sh [DURATION_S] [CONNECTIONS]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="${YTCAPTION_BIN:-$REPO/target/release/ytcaption}"
DURATION="${1:-10}"
CONNECTIONS="${2:-64}"
command -v wrk >/dev/null || { echo "bench: wrk is missing: apt-get install wrk" >&2; exit 1; }
[ -x "$BIN" ] || { echo "bench: $BIN is missing: make build" >&2; exit 1; }

WORK="$(mktemp -d)"
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
MODELS="$(python3 - <<'EOF'
import os
d = os.environ.get("YTCAPTION_MODELS_DIR") or os.path.join(os.environ.get("YTCAPTION_DATA_DIR") or os.path.join(os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "ytcaption"), "models")
print(d)
EOF
)"

# Starts a node with extra TOML; prints its port. Waits for /healthz.
start_node() {
  local name="$1" extra="$2" port
  port="$(free_port)"
  mkdir -p "$WORK/$name"
  cat > "$WORK/$name/config.toml" <<EOF
data_dir = "$WORK/$name"
models_dir = "$MODELS"
[http]
listen = "127.0.0.1:$port"
[log]
level = "warn"
$extra
EOF
  "$BIN" serve --config "$WORK/$name/config.toml" >"$WORK/$name/log" 2>&1 &
  PIDS+=("$!")
  echo "$!" > "$WORK/$name/pid"
  for _ in $(seq 1 300); do
    curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && { echo "$port"; return; }
    sleep 0.05
  done
  echo "bench: node $name did not start:" >&2; cat "$WORK/$name/log" >&2; exit 1
}

echo "== 1. durable submissions (wrk, $DURATION s, $CONNECTIONS connections, 2 threads)"
# The jobs point at a closed port and one driver runs at a time: the node's intake is measured,
# not downloads.
DEAD="$(free_port)"
PORT="$(start_node intake '[transcriber]
preload = false
[jobs]
max_active = 1
max_queued = 1000000')"
cat > "$WORK/post.lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"url": "http://127.0.0.1:$DEAD/none.mp3", "formats": ["txt"]}'
EOF
wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$WORK/post.lua" "http://127.0.0.1:$PORT/v1/jobs" | tee "$WORK/wrk.txt"
python3 - "$WORK/wrk.txt" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
def ms(label):
    m = re.search(label + r"%\s+([\d.]+)(us|ms|s)\b", text)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(f"submissions/s: {rps:.0f} (target >= 3000)   p50 {ms('50'):.2f} ms   p99 {ms('99'):.2f} ms (target <= 25)"
      + (f"   non-2xx: {non2xx.group(1)}" if non2xx else ""))
EOF
kill -9 "$(cat "$WORK/intake/pid")"

echo "== 2. orchestration overhead (tiny.en, uploads of a 12 s clip)"
PORT="$(start_node overhead '[transcriber]
model = "tiny.en"
threads = 2')"
CLIP="$REPO/tests/fixtures/generated/weather_festival.wav"
[ -f "$CLIP" ] || { echo "bench: $CLIP is missing: make fixtures" >&2; exit 1; }
python3 - "$PORT" "$CLIP" <<'EOF'
import json, statistics, subprocess, sys, time, urllib.request
port, clip = sys.argv[1], sys.argv[2]
base = f"http://127.0.0.1:{port}"
def get(path):
    with urllib.request.urlopen(base + path) as r:
        return json.load(r)
overheads, totals = [], []
for i in range(6):
    out = subprocess.run(["curl", "-fsS", "-F", f"file=@{clip}", "-F", "formats=txt", base + "/v1/jobs"],
                         capture_output=True, text=True, check=True).stdout
    job = json.loads(out)
    while True:
        job = get(f"/v1/jobs/{job['id']}")
        if job["state"] in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.01)
    assert job["state"] == "completed", job
    if i == 0:
        continue  # the first job loads the model
    total = job["timings_ms"]
    e2e = job["elapsed_ms"]
    engine = job["engine_ms"]
    overheads.append(e2e - engine)
    totals.append(e2e)
print(f"end to end median {statistics.median(totals):.0f} ms; engine's own time subtracted: "
      f"overhead median {statistics.median(overheads):.0f} ms, max {max(overheads):.0f} ms (target <= 30)")
EOF
kill -9 "$(cat "$WORK/overhead/pid")"

echo "== 3. idle RSS without a model"
PORT="$(start_node idle '[transcriber]
preload = false')"
sleep 2
PID="$(cat "$WORK/idle/pid")"
RSS_KB="$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")"
echo "idle RSS: $((RSS_KB / 1024)) MB (target <= 60)"
