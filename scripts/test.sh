#!/usr/bin/env bash
# Install everything the test suite needs, then run all of it.
# Debian/Ubuntu: chromium + chromium-driver (browser tests), redis-server (Celery tests).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for pkg in chromium chromium-driver redis-server; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi
python -m pip install -q -e ".[test]"
# Ray (RayManager tests) reports usage statistics to an outside server unless told not to.
export RAY_USAGE_STATS_ENABLED=0
exec python -m pytest "$@"
