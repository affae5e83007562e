"""The modules' documentation as Ansible reads it: every module parses (a ': ' inside a plain YAML
scalar breaks ansible-doc and ansible-test), and the shared options come from the doc fragment
plugin (plugins/doc_fragments/airlock.py), written once, not repeated in the modules."""

from __future__ import annotations

import json
import re

import pytest

from tests.support import REPO, run_ansible_tool

MODULES = sorted(p.stem for p in (REPO / "plugins" / "modules").glob("airlock_*.py"))
SHARED = {"root", "owner", "group", "lock_timeout", "trust", "keyring", "gnupghome", "keys_config"}


@pytest.fixture(scope="module")
def docs() -> dict[str, dict[str, object]]:
    r = run_ansible_tool("ansible-doc", "--json", *(f"airlock.appliance.{m}" for m in MODULES), timeout=300)
    assert r.returncode == 0 and "[ERROR]" not in r.stderr, r.stderr[-3000:]
    return {k.rsplit(".", 1)[1]: v["doc"] for k, v in json.loads(r.stdout).items()}


def test_every_module_documents_the_shared_options_through_the_fragment(docs: dict[str, dict]) -> None:
    assert sorted(docs) == MODULES and len(MODULES) == 3
    for name, doc in docs.items():
        options = doc["options"]
        assert {"root", "lock_timeout", "keyring", "gnupghome", "trust"} <= set(options), name
        assert options["root"]["required"] and options["lock_timeout"]["default"] == 600.0
        source = (REPO / "plugins" / "modules" / f"{name}.py").read_text()
        assert "extends_documentation_fragment:\n  - airlock.appliance.airlock\n" in source, name
        own = set(re.findall(r"^  (\w+):\n", source.split('EXAMPLES = r"""')[0], re.M))
        assert own & SHARED <= {"trust"}, f"{name} repeats shared options: {own & SHARED}"
    assert docs["airlock_bundle"]["options"]["trust"]["required"]  # the one override: required there
