# -*- coding: utf-8 -*-
# Copyright: Airlock maintainers
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations


class ModuleDocFragment:
    """The options every Airlock module shares, documented once (the argument specs they document
    are in module_utils/airlock_common.py: repo_argument_spec, trust_argument_spec, keys_argument_spec)."""

    # airlock.appliance.airlock: the model repository (repo_argument_spec)
    DOCUMENTATION = r"""
options:
  root:
    description: Root of the model repository on the target.
    type: path
    required: true
  owner:
    description:
      - Owner of the repository's version files. New files get it and the compliance check expects
        it (only when the module runs as root).
    type: str
  group:
    description: Group of the repository's version files (like O(owner)).
    type: str
  lock_timeout:
    description: Seconds to wait for the repository lock.
    type: float
    default: 600.0
requirements:
  - airlock (the engine, installed from the bundle's wheelhouse by the airlock_runtime role)
"""

    # airlock.appliance.airlock.trust: who may sign a bundle (trust_argument_spec)
    TRUST = r"""
options:
  trust:
    description:
      - Pinned primary-key fingerprints of the accepted signers (fail closed on any other).
    type: list
    elements: str
  keyring:
    description: Public keyring file holding the trusted keys (imported into a throwaway GnuPG home).
    type: path
  gnupghome:
    description: An existing GnuPG home holding the trusted public keys (used when O(keyring) is unset).
    type: path
requirements:
  - gpg
"""

    # airlock.appliance.airlock.keys: versions encrypted at rest (keys_argument_spec)
    KEYS = r"""
options:
  keys_config:
    description:
      - Key provider config for versions stored encrypted at rest (docs/security.md). Default
        C(/etc/airlock/keys.yaml) (or C($AIRLOCK_KEYS_CONFIG)) when that file exists. PINs and
        tokens live in files it names, never in this option.
    type: path
"""
