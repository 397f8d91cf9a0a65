#!/usr/bin/env bash
# Create (first use) or reuse the project's virtual environment and link it as ./.venv.
#
# The environment lives in a cache outside the checkout, keyed by a hash of the requirement files and
# of the install scripts, so CI runs and later `make` calls on the same machine reuse it:
#   ${HRDA_D2_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hrda_d2}/venv-<hash>
# A half-built environment is never reused: it is built under a temporary name and renamed when done.
# The checkout itself is put on the environment's sys.path through a .pth file (re-pointed on every
# call), so `.venv/bin/python -c "import hrda_d2"` uses this checkout's code without a reinstall.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
cache=${HRDA_D2_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hrda_d2}
key=$(cat requirements.txt requirements-test.txt scripts/setup_env.sh scripts/install_detectron2.sh \
      | sha256sum | cut -c1-16)
venv="$cache/venv-$key"

if [ ! -x "$venv/bin/python" ]; then
  echo "[env] creating $venv (first use; installs PyTorch, Detectron2 and the test tools)"
  start=$(date +%s)
  mkdir -p "$cache"
  tmp="$venv.tmp.$$"
  rm -rf "$tmp"
  "$PYTHON" -m venv "$tmp"
  "$tmp/bin/python" -m pip install --quiet --upgrade pip
  "$tmp/bin/python" -m pip install --quiet -r requirements.txt -r requirements-test.txt
  bash scripts/install_detectron2.sh "$tmp/bin/python"
  rm -rf "$venv"
  mv "$tmp" "$venv"
  # the scripts in bin/ carry the temporary path in their shebangs: point them at the final one
  grep -rlI --null "$tmp" "$venv/bin" 2>/dev/null | xargs -0 -r sed -i "s#$tmp#$venv#g"
  sed -i "s#$tmp#$venv#g" "$venv/pyvenv.cfg"
  echo "[env] built in $(( $(date +%s) - start )) s"
else
  echo "[env] reusing $venv"
fi

site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$here" > "$site/hrda_d2_checkout.pth"
ln -sfn "$venv" "$here/.venv"
"$here/.venv/bin/python" -c "import detectron2, torch; print(f'[env] python ok: torch {torch.__version__}, detectron2 {detectron2.__version__}')"
