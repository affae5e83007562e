#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Airlock maintainers
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: airlock_bundle
short_description: Verify a signed Airlock bundle and stage it on the target
version_added: "0.1.0"
description:
  - Verifies the GPG signature of the bundle's C(MANIFEST.json) against pinned signer fingerprints
    and every payload's size and SHA-256 (per block), then copies it into a staging directory on the
    target, hashing while copying, so that only the staged, verified copy is used afterwards (no
    time-of-check/time-of-use window when the source is a USB stick).
  - Staging resumes and repairs by block; a bundle already staged completely is reported unchanged,
    and so is a bundle already installed (its signed manifest kept in the repository, every model
    version present); it is not staged again (RV(installed)).
  - Runs the engine's stage step (C(airlock.installer.stage_for_install)); the completed stage is
    marked so that M(airlock.appliance.airlock_model) reopens it without copying or hashing it again
    and removes it once installed.
  - In check mode the source is verified in place and nothing is written; RV(path) is then the
    source, so a following M(airlock.appliance.airlock_model) task can plan against it.
  - Refuses a bundle for another appliance profile (O(compatible)) and a bundle whose sequence is
    lower than the one installed in the repository at O(root) unless it is a signed rollback.
  - O(owner) and O(group) are used only to open the repository; staging files stay root-owned.
options:
  src:
    description: The bundle directory on the target (for example a mounted USB stick).
    type: path
    required: true
  dest:
    description:
      - The staging directory to create. Defaults to
        C(<root>/model_repo/update_packages/staged/<bundle directory name>).
    type: path
  trust:
    description: Pinned primary-key fingerprints of the accepted signers (fail closed on any other).
    type: list
    elements: str
    required: true
  compatible:
    description:
      - The profile the bundle must match. Default is the appliance's recorded profile
        (C(/etc/airlock/appliance.yaml)); a value given must agree with it.
    type: str
extends_documentation_fragment:
  - airlock.appliance.airlock
  - airlock.appliance.airlock.trust
author:
  - Airlock maintainers (@airlock)
attributes:
  check_mode:
    support: full
    description: Plans and verifies only; nothing is written.
  diff_mode:
    support: none
    description: No diff; the staged copy is verified byte for byte instead.
"""

EXAMPLES = r"""
- name: Verify and stage the bundle from the USB stick
  airlock.appliance.airlock_bundle:
    src: /media/usb/airlock-2026-11
    root: /srv/airlock
    trust: ["0123456789ABCDEF0123456789ABCDEF01234567"]
    keyring: /etc/airlock/trusted.gpg
    compatible: appliance-x86-cpu
  register: staged

- name: Only check the stick (writes nothing)
  airlock.appliance.airlock_bundle:
    src: /media/usb/airlock-2026-11
    root: /srv/airlock
    trust: ["0123456789ABCDEF0123456789ABCDEF01234567"]
    keyring: /etc/airlock/trusted.gpg
  check_mode: true
"""

RETURN = r"""
path:
  description: The staged bundle directory (the source itself in check mode).
  returned: success
  type: str
  sample: /srv/airlock/model_repo/update_packages/staged/airlock-2026-11
bundle_id:
  description: The bundle id from the signed manifest.
  returned: success
  type: str
  sample: site-a-2026-11
kind:
  description: C(full) or C(delta).
  returned: success
  type: str
  sample: delta
sequence:
  description: The bundle's monotonic sequence number.
  returned: success
  type: int
  sample: 12
signer:
  description: Primary fingerprint of the key that signed the manifest.
  returned: success
  type: str
  sample: 0123456789ABCDEF0123456789ABCDEF01234567
models:
  description: The models the bundle carries.
  returned: success
  type: list
  elements: dict
  sample: [{"name": "minilm", "version": "1.1.0", "kind": "delta", "from_version": "1.0.0"}]
staged_path:
  description: The staging directory (also in check mode, where nothing is written).
  returned: success
  type: str
  sample: /srv/airlock/model_repo/update_packages/staged/airlock-2026-11
installed:
  description: True when this very bundle is installed already, so nothing was staged.
  returned: success and not check mode
  type: bool
  sample: false
counters:
  description: What staging copied and reused (absent in check mode and when RV(installed)).
  returned: changed
  type: dict
  sample: {"files_copied": 3, "bytes_copied": 1048576, "files_reused": 0}
airlock_error:
  description: The engine error (class, rule, path, message, exit code).
  returned: failure
  type: dict
  sample: {"error": "SignatureError", "rule": "signature", "path": "MANIFEST.json.asc"}
"""

import os
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.airlock.appliance.plugins.module_utils.airlock_common import (
    AirlockError,
    fail_airlock,
    make_trust,
    open_repository,
    repo_argument_spec,
    require_airlock,
    trust_argument_spec,
)


def _summary(manifest, signer):
    return dict(bundle_id=manifest.bundle_id, kind=manifest.kind, sequence=manifest.sequence,
                compatible=manifest.compatible, rollback=manifest.rollback,
                signer=signer.primary_fingerprint,
                models=[dict(name=m.name, version=m.version, kind=m.kind, from_version=m.from_version)
                        for m in manifest.models])


def run_module():
    spec = dict(src=dict(type="path", required=True), dest=dict(type="path"),
                compatible=dict(type="str"), **repo_argument_spec(), **trust_argument_spec())
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    require_airlock(module)
    from airlock.bundle import verify_bundle
    from airlock.bundle.verify import extra_files
    from airlock.installer import locate, stage_for_install

    p = module.params
    src = p["src"]
    repo = open_repository(module)
    try:
        trust = make_trust(module)
        dest = str(locate(Path(src), repo, stage=p["dest"] and Path(p["dest"]))[1])  # the repository's layout
        if module.check_mode:
            report = verify_bundle(Path(src), trust, compatible=p["compatible"],
                                   installed_sequence=repo.installed_sequence())
            module.exit_json(changed=not os.path.isdir(dest), path=src, staged_path=dest,
                             extra_files=report.extra_files, **_summary(report.manifest, report.signer))
        result = stage_for_install(Path(src), repo, trust, stage=Path(dest), compatible=p["compatible"])
        summary = dict(_summary(result.manifest, result.signed.signer),
                       extra_files=extra_files(Path(src), result.manifest) if os.path.isdir(src) else [])
        if result.staged is None:  # this very bundle is installed already: nothing to stage
            module.exit_json(changed=False, path=str(result.stage), staged_path=str(result.stage),
                             installed=True, **summary)
        c = result.staged.counters
        module.exit_json(changed=not result.reused, path=str(result.stage), staged_path=str(result.stage),
                         installed=False,
                         counters=dict(files_copied=c.files_copied, files_reused=c.files_reused,
                                       blocks_copied=c.blocks_copied, blocks_reused=c.blocks_reused,
                                       bytes_copied=c.bytes_copied, bytes_reused=c.bytes_reused),
                         **summary)
    except AirlockError as exc:
        module.fail_json(msg=str(exc), airlock_error=exc.as_dict())
    except OSError as exc:
        fail_airlock(module, exc)
    finally:
        repo.close()


def main():
    run_module()


if __name__ == "__main__":
    main()
