"""The model_update role in depot mode (model_update_depot / airlock_depot): a real install.yml and
update.yml on a local fleet of two hosts (ansible_connection=local, one repository root each); every
host stages the bundle from the depot itself and nothing is copied from the control node; a bundle
that is not in the depot stops the host before anything is applied, with a message naming the depot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from airlock.bundle import Trust
from airlock.depot import Depot
from airlock.fleet import run_playbook
from airlock.repo import Repository
from tests.fleet.bundles import MODEL, make_bundles

pytestmark = pytest.mark.timeout(600)
HOSTS = ("depot-a", "depot-b")


def test_install_and_update_stage_from_the_depot(tmp_path: Path) -> None:
    b = make_bundles(tmp_path / "bundles")
    trust = Trust([b.fingerprint], keyring=b.keyring)
    depot = tmp_path / "warm" / "depot"
    full = Depot(depot).import_bundle(b.full, trust).entry.bundle_id
    fleet = tmp_path / "fleet"
    hosts = {h: {"airlock_root": str(fleet / h)} for h in HOSTS}
    inv = {"all": {"children": {"appliances": {"hosts": hosts}},
                   "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                            "airlock_state_dir": str(tmp_path / "control")}}}
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump(inv))
    ev = {"airlock_trust": [b.fingerprint], "airlock_keyring": str(b.keyring), "airlock_depot": str(depot),
          "airlock_bundle": full}
    r = run_playbook("install", inventory, ev, private_data_dir=tmp_path / "runner")
    assert r.rc == 0, json.dumps(r.as_dict())[-3000:]
    for h in HOSTS:
        repo = Repository(fleet / h)
        try:
            assert repo.state()["models"][MODEL]["active"] == "1.0.0"
            assert repo.verify(MODEL)["ok"]
        finally:
            repo.close()
        assert not (fleet / h / "incoming").exists()  # nothing copied from the control node
    staged = [e for e in r.events if e.get("event") == "runner_on_ok"
              and e["event_data"].get("task") == "Verify and stage the bundle"]
    srcs = [e["event_data"]["res"]["invocation"]["module_args"]["src"] for e in staged]
    assert srcs == [str(depot / full)] * 2, srcs  # each host staged from the depot itself

    # a bundle not in the depot: both hosts stop before anything is applied, told why
    ev["airlock_bundle"] = "test-delta"
    r = run_playbook("update", inventory, {**ev, "airlock_update_serial": ["100%"]},
                     private_data_dir=tmp_path / "runner")
    assert r.rc != 0
    text = json.dumps(r.events)
    assert f"bundle test-delta is not in the site depot {depot}" in text
    for h in HOSTS:
        repo = Repository(fleet / h)
        try:
            assert repo.state()["models"][MODEL]["active"] == "1.0.0"
        finally:
            repo.close()
