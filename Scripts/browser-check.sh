#!/usr/bin/env bash
# The engineer's browser path, checked in headless Chromium (Scripts/browser_check.py says what).
# Needs the Debian package chromium and PyPI websockets; installs websockets when missing.
#   Scripts/browser-check.sh [--debug] [--no-build] [--screenshot PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  echo "browser-check: Chromium is missing: apt-get install chromium" >&2
  exit 2
fi
python3 -c "import websockets" 2>/dev/null || python3 -m pip install -q websockets
exec python3 Scripts/browser_check.py "$@"
