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
    installed bundle sequence and the audit log head) as RV(airlock_repo); its C(receipt) key is this
    host's part of a signed site receipt (C(playbooks/receipt.yml), docs/receipts.md).
  - With O(verify=true), the read-only compliance check (C(airlock.repo.verify)) of every present
    version of the selected models against the kept signed manifests and the catalog (hashes,
    sizes, modes, owner, missing, extra and stray files, provenance, the C(current) link), the
    mode of every repository path, the anti-downgrade sequence, the kept manifests' signatures
    (with O(trust); without it the result says loudly that they were NOT checked), the audit log's
    hash chain against the catalog's head and O(audit_anchor), deleted history rows, and with
    O(loadable=true) that the active versions' safetensors load.
  - With O(verify=true) and O(trust), the signature of every signed manifest kept in the repository
    (one per installed bundle) is checked again against the pinned fingerprints.
  - Drift is reported, never repaired, and nothing is written on the target, not even an audit
    record (the catalog is opened read-only); the control node keeps the result and the audit head.
options:
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
  audit_anchor:
    description:
      - The audit head (C({seq, hash})) the control node recorded on its last run. The log must
        still hold that record, byte for byte; a truncated or replaced log is drift (rule
        C(audit-anchor)) even when the catalog's head was edited too.
      - Without O(verify), only the audit log is checked (chain, catalog head, this anchor), cheap
        enough for the end of every run (C(playbooks/tasks/audit_head.yml)).
    type: dict
extends_documentation_fragment:
  - airlock.appliance.airlock
  - airlock.appliance.airlock.trust
  - airlock.appliance.airlock.keys
author:
  - Airlock maintainers (@airlock)
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
  description: One line per drift item, untruncated (empty when everything matches).
  returned: when verify is true
  type: list
  elements: str
  sample: ["minilm 1.1.0: /srv/airlock/model_repo/minilm/1.1.0/model.bin: sha256 (expected 3f, found 9a)"]
drift_items:
  description:
    - The drift as data, one dict per item (C(model), C(version), C(path), C(rule), C(expected),
      C(found)); the rules are listed in docs/repository.md.
  returned: when verify is true
  type: list
  elements: dict
  sample: [{"model": "minilm", "version": "1.1.0", "path": "/srv/airlock/model_repo/minilm/9.9.9",
            "rule": "stray-version", "expected": "not in the catalog", "found": "directory"}]
signatures_checked:
  description: Whether the kept manifests' signatures were checked again (only with O(trust)).
  returned: when verify is true
  type: bool
verify_warnings:
  description: What the check could not vouch for (signatures not checked, unsigned versions).
  returned: when verify is true
  type: list
  elements: str
audit_head:
  description: The audit log head seen (C({seq, hash})), for the control node to keep as the next anchor.
  returned: when verify is true or audit_anchor is given
  type: dict
audit_ok:
  description: Whether the audit chain, the catalog's head and O(audit_anchor) all agree.
  returned: when verify is true or audit_anchor is given
  type: bool
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


def _check(repo, p):
    from airlock.bundle import Trust
    from airlock.repo.audit import parse_head
    from airlock.repo.verify import drift_text

    trust = None
    if p["trust"]:
        trust = Trust(fingerprints=p["trust"], gnupghome=p["gnupghome"], keyring=p["keyring"])
    report = repo.compliance(p["models"] or None, trust=trust, anchor=parse_head(p["audit_anchor"]),
                             expected=p["expected"], loadable=p["loadable"])
    return dict(verify=report["models"], drift=[drift_text(d) for d in report["drift"]],
                drift_items=report["drift"], signatures_checked=report["signatures_checked"],
                verify_warnings=report["warnings"], audit_head=report["audit_head"],
                audit_ok=report["audit_ok"], sequence=report["sequence"])


def _audit_only(repo, p):
    from airlock.repo.audit import parse_head
    from airlock.repo.verify import audit_drift

    report = repo.audit_report(parse_head(p["audit_anchor"]))
    items = [d.as_dict() for d in audit_drift(report)]
    return dict(drift=[d.text() for d in audit_drift(report)], drift_items=items, audit_ok=report.ok,
                audit_head=report.head.as_dict())


def run_module():
    spec = dict(models=dict(type="list", elements="str", default=[]), verify=dict(type="bool", default=False),
                loadable=dict(type="bool", default=False), expected=dict(type="dict", default={}),
                trust=dict(type="list", elements="str"), keyring=dict(type="path"),
                gnupghome=dict(type="path"), audit_anchor=dict(type="dict"),
                **dict(repo_argument_spec(), **keys_argument_spec()))
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    require_airlock(module)
    p = module.params
    from airlock.repo.verify import drift_text

    if not Path(p["root"], "model_repo").is_dir():
        # nothing installed yet (or check mode before the layout exists): an empty state, no writes
        if p["verify"] and p["models"]:
            module.fail_json(msg="%s: no model repository here to verify" % p["root"])
        items = []
        if (p["audit_anchor"] or {}).get("seq"):  # it had an audit log: the repository is gone
            items.append(dict(model=None, version=None, path=p["root"], rule="audit-anchor",
                              expected=p["audit_anchor"], found="no model repository"))
        module.exit_json(changed=False, airlock_repo=dict(root=p["root"], models={}, sequence=None,
                                                          audit_head=None, exists=False),
                         verify={}, drift=[drift_text(d) for d in items],
                         drift_items=items, signatures_checked=bool(p["trust"]), verify_warnings=[],
                         audit_head=None, audit_ok=not items)
    repo = open_repository(module)
    try:
        state = dict(repo.state(), exists=True)
        result = dict(changed=False, airlock_repo=state)
        if p["verify"]:
            result.update(_check(repo, p))
            for warning in result["verify_warnings"]:
                module.warn(warning)
        elif p["audit_anchor"] is not None:
            result.update(_audit_only(repo, p))
        if result.get("drift") and module._diff:
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
