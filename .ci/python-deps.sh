#!/usr/bin/env bash
# Installs structgen with every Python dependency (`pip install -e '.[dev]'`) into the venv $1.
#
# With uv when it can be had: pip unpacks the ~5.5 GB of torch's wheels on one core; uv unpacks
# on all of them, and links from its cache when the wheels were unpacked before. Measured on a
# fresh clone of this 2-core machine with empty caches, the same packages at the same versions:
# 91 s with uv, 193 s with pip (143 s install + 50 s compileall). uv reads no pip configuration,
# so pip's own (its find-links, indexes and constraints: on these machines the local wheel store
# that holds torch) is handed to it, and it picks across indexes the way pip does.
#
# Either way the byte-code is compiled after the install, on every core, skipping the packages'
# own test folders (4,000 of the 17,000 files; nothing imports them): 49 s instead of 64 s. It is
# compiled at all because a process that may not write byte-code (PYTHONDONTWRITEBYTECODE, set on
# these machines) would otherwise compile torch and Ray again in every worker it starts.
set -euo pipefail
venv=$1
py=$venv/bin/python
test -x "$py" || "${PYTHON:-python3}" -m venv "$venv"

pip_settings() {   # "key value" per setting pip would apply, from its files and PIP_* variables
  "$py" -m pip config list 2>/dev/null | sed -E "s/^[^.]*\.([a-z-]+)='?([^']*)'?$/\1 \2/"
}

uv_args=(--index-strategy unsafe-best-match)
while read -r key values; do
  for value in $values; do
    case $key in
      index-url) uv_args+=(--index-url "$value") ;;
      extra-index-url) uv_args+=(--extra-index-url "$value") ;;
      find-links) uv_args+=(--find-links "$value") ;;
      constraint) uv_args+=(--constraint "$value") ;;
      cert) export SSL_CERT_FILE=$value ;;           # a proxy's CA, say: uv trusts its own roots otherwise
      default-timeout) export UV_HTTP_TIMEOUT=$value ;;
    esac
  done
done < <(pip_settings | sort -u)

if "$py" -m pip install --quiet --disable-pip-version-check 'uv>=0.9,<1' 2>/dev/null; then
  "$venv/bin/uv" pip install --quiet --python "$py" "${uv_args[@]}" -e '.[dev]'
else
  echo "[structgen] uv could not be installed: installing with pip (about twice as long)"
  "$py" -m pip install --quiet --disable-pip-version-check --no-compile -e '.[dev]'
fi
# A few files of torch are Python 3.12 syntax, which no installer compiles either: the status is ignored.
"$py" -m compileall -q -j 0 -x '/tests?/' "$venv/lib" > /dev/null || true
