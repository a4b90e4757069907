#!/usr/bin/env bash
# Installs the Debian packages kiln needs to build, test and run.
# Idempotent and quiet: does nothing when everything is present.
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  libhiredis-dev libuv1-dev libcivetweb-dev libjansson-dev libyaml-dev
  libcurl4-openssl-dev libssl-dev libcmocka-dev
  redis-server
  # the render connector runs ffmpeg and ffprobe (tests/unit/test_connector_render.c)
  ffmpeg
  # promtool, which checks GET /metrics in tests/unit/test_machine_api.c
  # (the server unit the package also brings is disabled below)
  prometheus
  # the playwright service's browser: Debian's chromium (never a downloaded one)
  chromium
  # wrk drives bench/hub_submit.sh (POST /v1/jobs with keep-alive)
  wrk
)

missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

# The playwright service runs on node and installs playwright-core with npm.
# A node from elsewhere (NodeSource ships npm inside its nodejs) is kept:
# Debian's packages are added only for a command that is missing.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)

[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps: installing ${missing[*]}"
sudo_cmd=()
[ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq >/dev/null
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

# The prometheus package's own server would listen on :9090, the machine
# API's default port (machine.health_port); kiln needs only its promtool.
if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled prometheus >/dev/null 2>&1; then
  "${sudo_cmd[@]}" systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
