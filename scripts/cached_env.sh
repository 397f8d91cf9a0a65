#!/usr/bin/env bash
# Print the path of the shared cached environment (PyTorch, Detectron2, the test tools), building it on first use.
#
#   scripts/cached_env.sh          build (first use) or reuse; the path is the last line on stdout
#   scripts/cached_env.sh --key    print the cache key only
#
# The environment lives outside every checkout, keyed by a hash of the requirement files and of the scripts that
# build it (this file and install_detectron2.sh), so all checkouts, CI runs and later `make` calls on one machine
# share it:   ${HRDA_D2_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hrda_d2}/venv-<key>
# It holds no checkout path: scripts/setup_env.sh layers each checkout's own ./.venv over it.
# A half-built environment is never reused: it is built under a temporary name and renamed when done.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
key=$(cat requirements.txt requirements-test.txt scripts/cached_env.sh scripts/install_detectron2.sh \
      | sha256sum | cut -c1-16)
if [ "${1:-}" = "--key" ]; then
  echo "$key"
  exit 0
fi
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
cache=${HRDA_D2_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hrda_d2}
venv="$cache/venv-$key"

if [ ! -x "$venv/bin/python" ]; then
  echo "[env] creating $venv (first use; installs PyTorch, Detectron2 and the test tools)" >&2
  start=$(date +%s)
  mkdir -p "$cache"
  tmp="$venv.tmp.$$"
  rm -rf "$tmp"
  "$PYTHON" -m venv "$tmp"
  "$tmp/bin/python" -m pip install --quiet --upgrade pip >&2
  "$tmp/bin/python" -m pip install --quiet -r requirements.txt -r requirements-test.txt >&2
  bash scripts/install_detectron2.sh "$tmp/bin/python" >&2
  rm -rf "$venv"
  mv "$tmp" "$venv"
  # the scripts in bin/ carry the temporary path in their shebangs: point them at the final one
  grep -rlI --null "$tmp" "$venv/bin" 2>/dev/null | xargs -0 -r sed -i "s#$tmp#$venv#g"
  sed -i "s#$tmp#$venv#g" "$venv/pyvenv.cfg"
  echo "[env] built in $(( $(date +%s) - start )) s" >&2
else
  echo "[env] reusing $venv" >&2
fi
echo "$venv"
