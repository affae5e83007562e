#!/usr/bin/env bash
# Set up everything `make demo` / `make test` need on a fresh Debian machine:
# Debian packages (when root) and a virtual environment with pinned Python dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

mapfile -t pkgs < <(grep -v '^\s*#' scripts/apt-packages.txt | sed '/^\s*$/d')
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "bootstrap: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "bootstrap: missing Debian packages (run as root or: sudo apt-get install ${missing[*]})" >&2
  fi
fi

stamp="$VENV/.airlock-$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  echo "bootstrap: installing Python dependencies into $VENV"
  "$VENV/bin/python" -m pip install -q -e ".[test,dev,fixtures]" 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -c "import airlock, safetensors, zstandard, gnupg" 
  rm -f "$VENV"/.airlock-*
  touch "$stamp"
fi
