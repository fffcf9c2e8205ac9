#!/usr/bin/env bash
# Debian packages FFCV needs at build time AND at run time (environment.md, "FFCV").
# Idempotent: does nothing when they are already installed.
set -euo pipefail
need=()
for pkg in pkg-config libopencv-dev libturbojpeg0-dev; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "[structgen] installing system packages: ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
