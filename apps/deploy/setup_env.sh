#!/usr/bin/env bash
# Creates (or verifies) the MONAI Deploy application's own virtual environment, separate from the project's
# .venv: the App SDK needs pydicom>=3, which MONAI Label 0.8.5 (in .venv) cannot use.
#
#   apps/deploy/setup_env.sh [VENV_DIR]        (default: <repo>/.venv-deploy; env PYTHON=python3.11)
#
# Idempotent: a stamp file holds the hash of requirements.txt + constraints.txt; when it matches and the
# imports work, nothing is installed. torch==2.13.0 goes in first so that pip takes the local CPU wheel
# instead of pulling the multi-GB CUDA build for a package that asks for torch.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${1:-${MGCC_DEPLOY_VENV:-$REPO/.venv-deploy}}"
PYTHON="${PYTHON:-python3}"
REQ="$HERE/requirements.txt"
CON="$HERE/constraints.txt"
STAMP="$VENV/.mgcc-deploy-installed"
want="$(cat "$REQ" "$CON" | sha256sum | cut -d' ' -f1)"

check() {
  "$VENV/bin/python" - <<'PY' 2>/dev/null
import warnings
warnings.simplefilter("ignore")
import highdicom, holoscan, ignite, monai, nibabel, onnxruntime, pydicom, torch  # noqa: F401
import monai.deploy.operators.monai_bundle_inference_operator  # noqa: F401
assert int(pydicom.__version__.split(".")[0]) >= 3, pydicom.__version__
PY
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] && check; then
  echo "deploy env up to date: $VENV"
  exit 0
fi

echo "creating deploy env: $VENV"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -c "$CON" torch==2.13.0
"$VENV/bin/python" -m pip install -q -c "$CON" -r "$REQ"
check || { echo "error: $VENV: imports of the deploy requirements fail after install" >&2; exit 1; }
echo "$want" > "$STAMP"
echo "deploy env ready: $VENV"
