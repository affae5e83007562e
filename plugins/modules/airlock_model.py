#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Airlock maintainers
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: airlock_model
short_description: Install, update, activate, roll back or prune model versions in an Airlock repository
version_added: "0.1.0"
description:
  - With O(bundle), installs every model of a verified, staged bundle (full versions are copied,
    deltas are applied to the installed source version with unchanged files hard-linked) and, with
    O(state=active), switches each model's C(current) link to the new version atomically.
  - Without O(bundle), O(state=active) activates an installed O(version) of O(name);
    O(state=active) with O(rollback=true) makes the previous good version (or O(version)) active again,
    rebuilding it from the kept reverse delta if it was pruned; O(state=pruned) removes all but the
    O(keep) newest versions (never the active or previous-good one).
  - The repository plans first (reads only) and reports whether anything changes, with a diff of
    what would change; in check mode nothing is written. A version already installed with
    identical content and already active is C(ok).
  - The engine is crash-safe; a kill at any point leaves the previously active version serving.
options:
  name:
    description: The model. Required unless O(bundle) is given (then every model of the bundle is handled).
    type: str
  version:
    description:
      - The version to activate (O(state=active) without O(bundle)) or to roll back to
        (O(rollback=true); default the previous good version).
      - With O(rollback=true) and O(version) set, a model already on O(version) is unchanged.
      - With O(rollback=true) and no O(version), a model already rolled back (no previous good
        version left, the newer versions marked C(rolled_back) or C(failed)) is unchanged, so a repeated
        rollback is C(ok).
      - O(rollback=true) first runs the repository's crash recovery (a killed apply's staging
        leftovers are removed, catalog and C(current) link aligned), then plans from that state.
    type: str
  state:
    description:
      - The state the model ends in. C(present) installed, not activated; C(active) installed and
        active (with O(rollback=true), the version rolled back to is active); C(pruned) old
        versions removed.
      - C(rolled_back) is deprecated (it is an action, not a state) and will be removed in 1.0.0;
        it means O(state=active) with O(rollback=true) and warns.
    type: str
    choices: [present, active, rolled_back, pruned]
    default: active
  rollback:
    description:
      - With O(state=active) and no O(bundle), switch O(name) back to its previous good version (or
        to O(version)) instead of activating a newer one.
    type: bool
    default: false
  failed:
    description:
      - With O(rollback=true), mark the version rolled back from C(failed) (the automatic rollback
        after a failed apply or health gate) instead of C(rolled_back) (an operator's rollback, after
        which the version stays good and available to roll forward with O(state=active)).
    type: bool
    default: false
  bundle:
    description:
      - The bundle to install, through the engine's one install path
        (C(airlock.installer.install_bundle)), from a bundle directory or packed C(.tar) (verified
        while staged into O(stage_dir), then installed), or a staging directory completed by
        M(airlock.appliance.airlock_bundle) (reopened, its completion
        marker and the signature over the staged manifest are checked, nothing is copied or hashed
        again; every installed byte is still checked against the signed hashes).
      - The staged copy is removed once the bundle is installed. This very bundle already installed
        (its signed manifest kept, every version present and active as asked) is C(ok) without staging.
      - O(trust) is required with O(bundle).
    type: path
  stage_dir:
    description:
      - With O(bundle), the staging directory itself (for example the C(staged_path) that
        M(airlock.appliance.airlock_bundle) returned). Default
        C(<root>/model_repo/update_packages/staged/<bundle directory name>).
    type: path
  compatible:
    description: This appliance's profile; a bundle built for another profile is refused.
    type: str
  keep:
    description: With O(state=pruned), how many versions to keep.
    type: int
    default: 2
  encrypt:
    description:
      - Store the installed versions encrypted at rest under this key, C(PROVIDER:KEY_ID) (for
        example C(hsm:models-kek)); the manifest's hashes stay the plaintext hashes. Needs the
        providers of O(keys_config).
    type: str
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
  diff_mode:
    support: full
    description: Shows the repository state before and after, and the plan per file.
"""

EXAMPLES = r"""
- name: Install and activate every model of a staged bundle
  airlock.appliance.airlock_model:
    root: /srv/airlock
    bundle: "{{ staged.path }}"
    trust: ["0123456789ABCDEF0123456789ABCDEF01234567"]
    keyring: /etc/airlock/trusted.gpg
    state: active
    owner: airlock
    group: airlock

- name: Roll minilm back to 1.0.0 (unchanged when it is already there)
  airlock.appliance.airlock_model:
    root: /srv/airlock
    name: minilm
    version: 1.0.0
    rollback: true

- name: Keep the two newest versions of minilm
  airlock.appliance.airlock_model:
    root: /srv/airlock
    name: minilm
    state: pruned
    keep: 2
"""

RETURN = r"""
plans:
  description: One plan per model handled (action, before/after, files with how each is produced, bytes).
  returned: always
  type: list
  elements: dict
  sample: [{"action": "update", "model": "minilm", "version": "1.1.0", "changed": true}]
models:
  description: Per model, the active version before and after.
  returned: always
  type: dict
  sample: {"minilm": {"from": "1.0.0", "to": "1.1.0"}}
bundle_id:
  description: With O(bundle), the bundle id from its signed manifest.
  returned: O(bundle) given
  type: str
  sample: site-a-2026-11
manifest:
  description:
    - With O(bundle), the bundle's signed manifest as kept in the repository (the staged copy is gone
      after the install); the health gate reads the golden smoke tests from it.
  returned: O(bundle) given
  type: str
  sample: /srv/airlock/model_repo/update_packages/bundles/site-a-2026-11/MANIFEST.json
diff:
  description: Before/after repository state of the models handled (with --diff).
  returned: changed
  type: dict
  sample: {"before": "minilm: active=1.0.0\n", "after": "minilm: active=1.1.0\n"}
airlock_error:
  description: The engine error (class, rule, path, message, exit code).
  returned: failure
  type: dict
  sample: {"error": "DowngradeError", "rule": "downgrade", "path": "/srv/airlock/..."}
"""

from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.airlock.appliance.plugins.module_utils.airlock_common import (
    AirlockError,
    fail_airlock,
    open_repository,
    keys_argument_spec,
    repo_argument_spec,
    require_airlock,
)


def _state_lines(plans, which):
    lines = []
    for pl in plans:
        state = getattr(pl, which)
        lines.append("%s: active=%s previous=%s\n" % (pl.model, state.get("active"), state.get("previous")))
    return "".join(lines)


def _bundle(module, repo):
    from airlock.bundle import Trust
    from airlock.installer import install_bundle

    p = module.params
    if not p["trust"]:
        module.fail_json(msg="trust (pinned signer fingerprints) is required with bundle")
    trust = Trust(fingerprints=p["trust"], gnupghome=p["gnupghome"], keyring=p["keyring"])
    result = install_bundle(Path(p["bundle"]), repo, trust, stage=p["stage_dir"] and Path(p["stage_dir"]),
                            compatible=p["compatible"], activate=p["state"] == "active", encrypt=p["encrypt"],
                            check=module.check_mode)
    extra = dict(bundle_id=result.manifest.bundle_id,
                 manifest=str(repo.layout.bundle_record(result.manifest.bundle_id) / "MANIFEST.json"))
    return result.plans, extra


def _rolled_back_already(before):
    """No previous good version left, and a version newer than the active one was rolled back
    from (marked rolled_back or failed): a rollback already happened, so a repeated one has nothing to do."""
    from airlock.repo.layout import version_key

    active = before.get("active")
    if not active or before.get("previous") or before.get("current") != active:
        return False
    newer = [v for v in before.get("versions", []) if version_key(v["version"]) > version_key(active)]
    return bool(newer) and all(v["state"] in ("failed", "rolled_back") for v in newer)


def _single(module, repo):
    p = module.params
    name, version, state, rollback = p["name"], p["version"], p["state"], p["rollback"]
    recovered = []
    if not name:
        module.fail_json(msg="name is required without bundle")
    if state == "present":
        module.fail_json(msg="state=present needs a bundle to install from")
    if rollback and state != "active":
        module.fail_json(msg="rollback=true goes with state=active (the version rolled back to is active)")
    if rollback:
        if not module.check_mode and repo.layout.catalog.exists():
            recovered = repo.recover_now()  # a killed apply's leftovers; plan from the recovered state
        before = repo.show(name) if repo.layout.catalog.exists() else {}
        if version and before.get("active") == version and before.get("current") == version:
            plan = repo.plan_activate(name, version, action="rollback")
        elif not version and _rolled_back_already(before):
            plan = repo.plan_activate(name, before["active"], action="rollback")
        else:
            plan = repo.plan_rollback(name, to=version)
    elif state == "active":
        if not version:
            module.fail_json(msg="version is required for state=active without bundle")
        plan = repo.plan_activate(name, version)
    else:
        plan = repo.plan_prune(name, keep=p["keep"])
    if module.check_mode or not plan.changed:
        if rollback and recovered:  # only crash leftovers to clean up: that is a change
            plan.changed = True
            plan.notes.extend(recovered)
        return [plan]
    if rollback:
        return [repo.rollback(name, to=plan.version, failed=p["failed"])]
    return [repo.execute(plan)]


def run_module():
    spec = dict(
        name=dict(type="str"), version=dict(type="str"),
        state=dict(type="str", default="active", choices=["present", "active", "rolled_back", "pruned"]),
        bundle=dict(type="path"), stage_dir=dict(type="path"), trust=dict(type="list", elements="str"),
        keyring=dict(type="path"),
        gnupghome=dict(type="path"), compatible=dict(type="str"), keep=dict(type="int", default=2),
        encrypt=dict(type="str"), failed=dict(type="bool", default=False),
        rollback=dict(type="bool", default=False), **dict(repo_argument_spec(), **keys_argument_spec()))
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True,
                           required_if=[("state", "present", ("bundle",)), ("state", "pruned", ("name",)),
                                        ("state", "rolled_back", ("name",)), ("rollback", True, ("name",))])
    p = module.params
    if p["state"] == "rolled_back":  # the old spelling of an action as a state
        module.deprecate("state=rolled_back is an action, not a state: use state=active with rollback=true",
                         version="1.0.0", collection_name="airlock.appliance")
        p["state"], p["rollback"] = "active", True
    if p["rollback"] and p["bundle"]:
        module.fail_json(msg="rollback=true takes no bundle (it switches back to an installed version)")
    require_airlock(module)
    repo = open_repository(module)
    try:
        if module.params["bundle"]:
            plans, extra = _bundle(module, repo)
        else:
            plans, extra = _single(module, repo), {}
    except AirlockError as exc:
        module.fail_json(msg=str(exc), airlock_error=exc.as_dict())
    except OSError as exc:
        fail_airlock(module, exc)
    finally:
        repo.close()
    changed = any(pl.changed for pl in plans)
    result = dict(changed=changed, plans=[pl.as_dict() for pl in plans],
                  models=dict((pl.model, {"from": pl.before.get("active"), "to": pl.after.get("active")})
                              for pl in plans), **extra)
    if changed and module._diff:
        result["diff"] = dict(before=_state_lines(plans, "before"), after=_state_lines(plans, "after"),
                              before_header="repository", after_header="repository",
                              prepared="".join(pl.diff for pl in plans))
    module.exit_json(**result)


def main():
    run_module()


if __name__ == "__main__":
    main()
