#!/usr/bin/env bash
# Give this checkout its own environment ./.venv, layered over the shared cached packages.
#
# scripts/cached_env.sh builds (first use) or finds the shared environment with PyTorch, Detectron2 and the test
# tools. ./.venv is a small virtual environment of this checkout (no packages of its own, made in a fraction of a
# second) whose site-packages holds one file, hrda_d2_checkout.pth:
#     <this checkout>
#     import site; site.addsitedir('<shared environment>/lib/pythonX.Y/site-packages')
# so `.venv/bin/python` imports this checkout's hrda_d2, and then the shared packages. Every process started with
# it, and every process those start with sys.executable (tools/experiments.py's training runs, SLURM jobs started
# later), imports this checkout, whichever other checkout on the machine ran `make env` last.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
shared=$(bash "$here/scripts/cached_env.sh" | tail -n 1)
start=$(date +%s%N)
{ read -r site; read -r rel; } < <("$shared/bin/python" -c \
  'import os, sys, sysconfig; p = sysconfig.get_paths()["purelib"]; print(p); print(os.path.relpath(p, sys.prefix))')
pth="$here/.venv/$rel/hrda_d2_checkout.pth"
want=$(printf '%s\nimport site; site.addsitedir(%s)\n' "$here" "'$site'")

if [ -L "$here/.venv" ] || [ ! -x "$here/.venv/bin/python" ] || [ ! -f "$pth" ]; then
  # first use, or the link to the shared environment of an older set-up: a fresh layer
  rm -rf "$here/.venv"
  "$shared/bin/python" -m venv --without-pip "$here/.venv"
fi
if [ "$(cat "$pth" 2>/dev/null)" != "$want" ]; then  # new layer, another shared environment, or a moved checkout
  printf '%s\n' "$want" > "$pth.tmp.$$"
  mv "$pth.tmp.$$" "$pth"
fi
echo "[env] $here/.venv: this checkout over $shared ($(( ($(date +%s%N) - start) / 1000000 )) ms)"
"$here/.venv/bin/python" -c "import detectron2, hrda_d2, torch; print(f'[env] python ok: torch {torch.__version__}, detectron2 {detectron2.__version__}, hrda_d2 from {hrda_d2.__path__[0]}')"
