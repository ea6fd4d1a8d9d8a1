# Shared by scripts/demo and scripts/test: make .venv with the package installed.
# Usage: . scripts/_venv.sh EXTRAS [GROUP]   (EXTRAS like "" or "[redis]"; GROUP a
# dependency group of pyproject.toml, like "dev", installed beside the package)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ONCEONLY_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
group=()
if [ -n "${2:-}" ]; then
  # pip install --group came with pip 25.1; a virtualenv made earlier may have an older pip.
  if ! "$VENV/bin/python" -m pip install --help 2>/dev/null | grep -- '--group' >/dev/null; then
    echo "==> upgrading pip in $VENV (dependency groups need pip >= 25.1)"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "pip>=25.1"
  fi
  group=(--group "$ROOT/pyproject.toml:$2")
fi
echo "==> installing onceonly$1${2:+ and the $2 dependency group} into $VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT$1" ${group[@]+"${group[@]}"}
