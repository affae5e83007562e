#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Airlock maintainers
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: airlock_model_info
short_description: Report the state of an Airlock model repository, optionally with a drift check
version_added: "0.1.0"
description:
  - Returns the repository state (models, active and previous versions, every version's state, the
    installed bundle sequence and the audit log head) as RV(airlock_repo).
  - With O(verify=true), checks every present version of the selected models against the catalog
    and the kept signed manifest (hashes, sizes, modes, owner, missing and extra files, the
    C(current) link) and the audit log's hash chain, and with O(loadable=true) also that the active
    version's safetensors load. Drift is reported, never repaired; each check appends a
    C(verify) record to the audit log (the compliance trail), nothing else is written.
options:
  root:
    description: Root of the model repository on the target.
    type: path
    required: true
  models:
    description: Models to verify (default all) when O(verify=true).
    type: list
    elements: str
    default: []
  verify:
    description: Also run the drift check.
    type: bool
    default: false
  loadable:
    description: With O(verify=true), also check that each active version's tensors load.
    type: bool
    default: false
  expected:
    description: "Expected active version per model (C({model: version})); a difference is drift."
    type: dict
    default: {}
  trust:
    description:
      - Pinned signer fingerprints. With O(verify=true), the signature of every signed manifest kept
        in the repository (one per installed bundle) is checked again against them.
    type: list
    elements: str
  keyring:
    description: Public keyring file holding the trusted keys.
    type: path
  gnupghome:
    description: An existing GnuPG home holding the trusted public keys.
    type: path
  owner:
    description: Expected owner of version files (checked when the module runs as root).
    type: str
  group:
    description: Expected group of version files (checked when the module runs as root).
    type: str
  keys_config:
    description:
      - Key provider config for versions stored encrypted at rest (docs/security.md). Default
        C(/etc/airlock/keys.yaml) (or C($AIRLOCK_KEYS_CONFIG)) when that file exists. PINs and
        tokens live in files it names, never in this option.
    type: path
  lock_timeout:
    description: Seconds to wait for the repository lock.
    type: float
    default: 600.0
author:
  - Airlock maintainers (@airlock)
requirements:
  - airlock (the engine, installed from the bundle's wheelhouse by the airlock_runtime role)
attributes:
  check_mode:
    support: full
    description: Plans and verifies only; nothing is written.
"""

EXAMPLES = r"""
- name: Read the repository state
  airlock.appliance.airlock_model_info:
    root: /srv/airlock
  register: repo

- name: Compliance check of minilm
  airlock.appliance.airlock_model_info:
    root: /srv/airlock
    models: [minilm]
    verify: true
    loadable: true
  register: check

- name: Fail on drift
  ansible.builtin.assert:
    that: check.drift | length == 0
"""

RETURN = r"""
airlock_repo:
  description: The repository state.
  returned: always
  type: dict
  sample: {"root": "/srv/airlock", "sequence": 2, "models": {"minilm": {"active": "1.1.0",
           "previous": "1.0.0", "current": "1.1.0", "versions": {"1.0.0": "previous", "1.1.0": "active"}}}}
verify:
  description: Per model, the engine's drift report (with O(verify=true)).
  returned: when verify is true
  type: dict
  sample: {"minilm": {"ok": true, "versions": [], "current": {"ok": true}}}
drift:
  description: One line per problem found (empty when everything matches).
  returned: when verify is true
  type: list
  elements: str
  sample: ["minilm 1.1.0: model.safetensors: sha256 differs from the catalog"]
"""

from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.airlock.appliance.plugins.module_utils.airlock_common import (
    AirlockError,
    open_repository,
    keys_argument_spec,
    repo_argument_spec,
    require_airlock,
)


def _problem_text(problem):
    if isinstance(problem, dict) and "kind" in problem:
        text = "%s: %s" % (problem.get("path") or ".", problem["kind"])
        if problem.get("expected") is not None or problem.get("actual") is not None:
            text += " (expected %s, found %s)" % (problem.get("expected"), problem.get("actual"))
        return text
    if isinstance(problem, dict):
        return ", ".join("%s=%s" % (k, problem[k]) for k in sorted(problem))
    return str(problem)


def _signatures(repo, p):
    """Re-verify every kept signed manifest against the pinned signers."""
    from airlock.bundle import Trust, load_signed_manifest

    drift = []
    records = repo.layout.packages / "bundles"
    trust = Trust(fingerprints=p["trust"], gnupghome=p["gnupghome"], keyring=p["keyring"])
    for rec in sorted(records.iterdir()) if records.is_dir() else []:
        try:
            load_signed_manifest(rec, trust)
        except AirlockError as exc:
            drift.append("bundle %s: signature: %s" % (rec.name, exc))
    return drift


def _check(repo, state, models, loadable, expected):
    from airlock.repo import check_loadable

    reports, drift = {}, []
    for model, want in sorted(expected.items()):
        have = state["models"].get(model, {}).get("active")
        if want is not None and have != str(want):
            drift.append("%s: active version is %s, expected %s" % (model, have, want))
    for model in models or sorted(state["models"]):
        report = repo.verify(model)
        reports[model] = report
        for v in report["versions"]:
            drift.extend("%s %s: %s" % (model, v.get("version"), _problem_text(pr)) for pr in v["problems"])
        if not report["current"].get("ok", False):
            drift.append("%s: current link: %s" % (model, _problem_text(report["current"])))
        active = state["models"].get(model, {}).get("active")
        if loadable and active:
            try:
                lr = check_loadable(repo.layout.version_dir(model, active))
                report["loadable"] = dict(tensors=lr.tensors, files=lr.files, checks=lr.checks)
            except AirlockError as exc:
                drift.append("%s %s: not loadable: %s" % (model, active, exc))
    audit = repo.audit_verify()
    drift.extend("audit log: %s" % pr for pr in audit.problems)
    if not audit.ok and not audit.problems:
        drift.append("audit log: hash chain broken")
    return reports, drift


def run_module():
    spec = dict(models=dict(type="list", elements="str", default=[]), verify=dict(type="bool", default=False),
                loadable=dict(type="bool", default=False), expected=dict(type="dict", default={}),
                trust=dict(type="list", elements="str"), keyring=dict(type="path"),
                gnupghome=dict(type="path"),
                **dict(repo_argument_spec(), **keys_argument_spec()))
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    require_airlock(module)
    p = module.params
    if not Path(p["root"], "model_repo").is_dir():
        # nothing installed yet (or check mode before the layout exists): an empty state, no writes
        if p["verify"] and p["models"]:
            module.fail_json(msg="%s: no model repository here to verify" % p["root"])
        module.exit_json(changed=False, airlock_repo=dict(root=p["root"], models={}, sequence=None,
                                                          audit_head=None, exists=False),
                         verify={}, drift=[])
    repo = open_repository(module)
    try:
        state = dict(repo.state(), exists=True)
        result = dict(changed=False, airlock_repo=state)
        if p["verify"]:
            result["verify"], result["drift"] = _check(repo, state, p["models"], p["loadable"], p["expected"])
            if p["trust"]:
                result["drift"].extend(_signatures(repo, p))
            if result["drift"] and module._diff:
                result["diff"] = dict(before="no drift\n", after="".join(d + "\n" for d in result["drift"]),
                                      before_header="expected", after_header="found on %s" % p["root"])
    except AirlockError as exc:
        module.fail_json(msg=str(exc), airlock_error=exc.as_dict())
    finally:
        repo.close()
    module.exit_json(**result)


def main():
    run_module()


if __name__ == "__main__":
    main()
