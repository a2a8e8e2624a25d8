#!/usr/bin/env bash
# The README's main job: start a node on the embedded defaults (one node, sled, local storage;
# its data in target/demo), submit the bundled samples through the HTTP API with
# `ytcaption submit --wait`, print the transcripts, stop the node.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$REPO/target/release/ytcaption"
DEMO="$REPO/target/demo"
SAMPLE_TEXT="Self hosted transcription turns long recordings into searchable text and captions."
PORT="${YTCAPTION_DEMO_PORT:-8080}"
SERVER="http://127.0.0.1:$PORT"

# The models `make model` installed (same lookup as deploy/model/install.sh); the node's own
# data (job log, blobs) stays in target/demo.
if [ -n "${YTCAPTION_MODELS_DIR:-}" ]; then
  MODELS="$YTCAPTION_MODELS_DIR"
elif [ -n "${YTCAPTION_DATA_DIR:-}" ]; then
  MODELS="$YTCAPTION_DATA_DIR/models"
else
  MODELS="${XDG_DATA_HOME:-$HOME/.local/share}/ytcaption/models"
fi
export YTCAPTION_MODELS_DIR="$MODELS"

mkdir -p "$DEMO"
espeak-ng -v en-us -s 150 -w "$DEMO/sentence.wav" "$SAMPLE_TEXT" 2>/dev/null \
  || { echo "demo: espeak-ng is missing: apt-get install espeak-ng" >&2; exit 1; }

echo "== starting a node on $SERVER (data in $DEMO/node, log in $DEMO/node.log)"
"$BIN" serve --http "127.0.0.1:$PORT" --data-dir "$DEMO/node" >"$DEMO/node.log" 2>&1 &
NODE=$!
trap 'kill -TERM $NODE 2>/dev/null; wait $NODE 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  curl -fs "$SERVER/readyz" >/dev/null 2>&1 && break
  kill -0 $NODE 2>/dev/null || { echo "demo: the node stopped:" >&2; cat "$DEMO/node.log" >&2; exit 1; }
  sleep 0.1
done

echo "== beckett.wav (human speech), submitted as an upload, text:"
"$BIN" submit "$REPO/tests/fixtures/generated/beckett.wav" --server "$SERVER" --wait --format txt
echo "== a spoken sentence (\"$SAMPLE_TEXT\"), SRT:"
"$BIN" submit "$DEMO/sentence.wav" --server "$SERVER" --wait --format srt
echo "== jobs on this node:"
"$BIN" jobs list --server "$SERVER"
