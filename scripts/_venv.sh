# Shared by scripts/demo and scripts/test: make .venv with the package installed.
# Usage: . scripts/_venv.sh EXTRAS   (EXTRAS like "" or "[dev]")
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ONCEONLY_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
echo "==> installing onceonly$1 into $VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT$1"
