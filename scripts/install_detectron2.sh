#!/usr/bin/env bash
# Install Detectron2 into the environment of the given Python interpreter.
#
#   scripts/install_detectron2.sh PYTHON
#
# Does nothing if `import detectron2` already works (for example after the upstream route:
#   pip install 'git+https://github.com/facebookresearch/detectron2.git').
# Otherwise takes the registry route: the `sal-detectron2==0.7.2` wheel holds upstream detectron2's
# pure-Python code (upstream commit a59f0563); it is tagged cp310, so it is downloaded for 3.10,
# its sha256 is verified, it is re-tagged py3-none-any and installed without dependencies (its runtime
# needs are pinned in requirements.txt). Its compiled `_C` is never imported on Python 3.11 and is not
# needed for semantic segmentation.
set -euo pipefail

PY=${1:?usage: install_detectron2.sh PYTHON}
WHEEL_VERSION=0.7.2
WHEEL_SHA256=491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561

if "$PY" -c "import detectron2" >/dev/null 2>&1; then
  echo "[install_detectron2] detectron2 already importable: $("$PY" -c 'import detectron2, os; print(detectron2.__version__, os.path.dirname(detectron2.__file__))')"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "[install_detectron2] downloading sal-detectron2==${WHEEL_VERSION} (upstream detectron2 pure-Python code)"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.10 \
  "sal-detectron2==${WHEEL_VERSION}" -d "$tmp"
shopt -s nullglob
wheels=("$tmp"/sal_detectron2-${WHEEL_VERSION}-*.whl)
if [ ${#wheels[@]} -ne 1 ]; then
  echo "[install_detectron2] ERROR: expected one sal_detectron2-${WHEEL_VERSION} wheel in $tmp, found: $(ls "$tmp")" >&2
  exit 1
fi
got=$(sha256sum "${wheels[0]}" | cut -d' ' -f1)
if [ "$got" != "$WHEEL_SHA256" ]; then
  echo "[install_detectron2] ERROR: sha256 mismatch for $(basename "${wheels[0]}")" >&2
  echo "  expected $WHEEL_SHA256" >&2
  echo "  got      $got" >&2
  echo "  Refusing to install. Install detectron2 from source instead:" >&2
  echo "  pip install 'git+https://github.com/facebookresearch/detectron2.git'" >&2
  exit 1
fi
retagged="$tmp/sal_detectron2-${WHEEL_VERSION}-py3-none-any.whl"
mv "${wheels[0]}" "$retagged"
"$PY" -m pip install --quiet --no-deps "$retagged"
"$PY" -c "import detectron2; print('[install_detectron2] installed detectron2', detectron2.__version__)"
