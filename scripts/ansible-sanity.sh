#!/usr/bin/env bash
# ansible-test sanity for the airlock.appliance collection, offline.
#
# ansible-test wants the collection at .../ansible_collections/<ns>/<name>/ and a git or plain tree
# it can list; it bootstraps pip in its test venvs with a get-pip script from the internet, which
# the offline shim in scripts/ansible-test-get-pip.py replaces (docs/ansible.md, "Offline tooling").
# Usage: scripts/ansible-sanity.sh [extra ansible-test args, e.g. --test validate-modules]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${AIRLOCK_VENV:-$repo/.venv}"
export PATH="$venv/bin:$PATH"
pyver="$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

work="$(mktemp -d "${TMPDIR:-/tmp}/airlock-sanity.XXXXXX")"
trap 'rm -rf "$work"' EXIT
coll="$work/ansible_collections/airlock/appliance"
mkdir -p "$coll"
cp -r "$repo/plugins" "$repo/meta" "$repo/galaxy.yml" "$coll/"
# sanity ignores (only the GPLv3 header check: this collection is Apache-2.0)
mkdir -p "$coll/tests/sanity"
for f in "$repo"/tests/ansible/sanity/ignore-*.txt; do cp "$f" "$coll/tests/sanity/"; done
find "$coll" -name __pycache__ -prune -exec rm -rf {} + -o -name 'ruff.toml' -exec rm -f {} +

# offline get-pip shim for every pip version ansible-test may ask for
cache="$HOME/.ansible/test/cache"
mkdir -p "$cache"
pipver="$("$venv/bin/python" - <<'PY'
import re, pathlib, ansible_test
src = pathlib.Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py"
m = re.search(r"\bpip=['\"]([0-9.]+)['\"]", src.read_text()) if src.exists() else None
print(m.group(1) if m else "24.2")
PY
)" || pipver="24.2"
cp "$repo/scripts/ansible-test-get-pip.py" "$cache/get_pip_${pipver//./_}.py"

# All 24 sanity tests run (the tools they need are installed into ansible-test's own venvs through
# the shim above, from the package sources in the pip configuration file).
cd "$coll"
ansible-test sanity --python "$pyver" --venv --color no "$@"
