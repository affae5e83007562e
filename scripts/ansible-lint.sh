#!/usr/bin/env bash
# ansible-lint (production profile) over the whole tree (roles, playbooks, inventories, molecule, galaxy.yml
# and the changelog), offline
# (--offline: no galaxy installs; the collection airlock.appliance resolves through ansible.cfg's
# collections_path). Usage: scripts/ansible-lint.sh [extra paths or ansible-lint args]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${AIRLOCK_VENV:-$repo/.venv}"
cd "$repo"
export PATH="$venv/bin:$PATH" ANSIBLE_CONFIG="$repo/ansible.cfg"
# A throwaway HOME: ansible-lint also looks in ~/.ansible/collections, where an older installed copy of
# this collection (from a galaxy install or an earlier lint) would shadow the checkout (a role added
# since then "was not found").
home="$(mktemp -d "${TMPDIR:-/tmp}/airlock-lint-home.XXXXXX")"
trap 'rm -rf "$home"' EXIT
HOME="$home" ansible-lint --offline --profile production --nocolor "$@"
