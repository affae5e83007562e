# -*- coding: utf-8 -*-
# Copyright: Airlock maintainers
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Shared plumbing of the Airlock modules: the guarded engine import, common options, errors.

The modules are thin: every behaviour lives in the ``airlock`` engine (docs/ansible.md, "Modules"). On a
target they run with the Python of Airlock's venv (``ansible_python_interpreter``)."""

from __future__ import annotations

import os
import traceback

try:
    from airlock.crypto.harden import harden_process
    from airlock.errors import AirlockError
    from airlock.repo import Repository
    HAS_AIRLOCK = True
    AIRLOCK_IMPORT_ERROR = None
    # every module may unwrap data keys (encrypted versions): no core file, not dumpable (issue 21)
    harden_process()
except ImportError:
    HAS_AIRLOCK = False
    AIRLOCK_IMPORT_ERROR = traceback.format_exc()

    class AirlockError(Exception):  # type: ignore[no-redef]
        """Stand-in so ``except AirlockError`` stays valid when the engine is missing."""

from ansible.module_utils.basic import missing_required_lib

__all__ = ["AIRLOCK_IMPORT_ERROR", "HAS_AIRLOCK", "AirlockError", "fail_airlock", "keys_argument_spec",
           "make_trust", "open_repository", "repo_argument_spec", "require_airlock", "trust_argument_spec"]

FAULT_ENV = "AIRLOCK_FAULT"


def require_airlock(module):
    """Fail cleanly (naming the missing library) when the engine is not importable."""
    if not HAS_AIRLOCK:
        module.fail_json(msg=missing_required_lib("airlock", url="pip install --no-index --find-links "
                                                  "<bundle>/wheelhouse airlock"),
                         exception=AIRLOCK_IMPORT_ERROR)


def repo_argument_spec():
    return dict(
        root=dict(type="path", required=True),
        owner=dict(type="str"),
        group=dict(type="str"),
        lock_timeout=dict(type="float", default=600.0),
    )


def keys_argument_spec():
    """Options of the modules that read or write encrypted model versions."""
    return dict(keys_config=dict(type="path"))


def trust_argument_spec():
    return dict(
        trust=dict(type="list", elements="str", required=True),
        keyring=dict(type="path"),
        gnupghome=dict(type="path"),
    )


def open_repository(module):
    """The repository, with the key providers of O(keys_config) (or the default config when it
    exists) for encrypted versions."""
    from airlock.crypto.providers import load_registry

    p = module.params
    try:
        keys = load_registry(p.get("keys_config"), required=bool(p.get("encrypt")))
    except AirlockError as exc:
        fail_airlock(module, exc)
    return Repository(p["root"], owner=p.get("owner"), group=p.get("group"), lock_timeout=p["lock_timeout"],
                      keys=keys)


def make_trust(module):
    from airlock.bundle import Trust

    p = module.params
    return Trust(fingerprints=p["trust"], gnupghome=p.get("gnupghome"), keyring=p.get("keyring"))


def fail_airlock(module, exc, **extra):
    """An engine error as a module failure: the one-line message plus its rule, path and exit code.
    OS errors go through the engine's one mapping (``airlock.errors.from_exception``: stick pulled,
    no space, permission, unsupported on this file system), so a module says what the CLI says."""
    if HAS_AIRLOCK and not hasattr(exc, "as_dict"):
        from airlock.errors import from_exception

        exc = from_exception(exc)
    info = exc.as_dict() if hasattr(exc, "as_dict") else {"message": str(exc)}
    module.fail_json(msg=str(exc), airlock_error=info, **extra)


def fault_from_env():
    """The injected fault (tests only) currently in effect, for the module's own result."""
    return os.environ.get(FAULT_ENV)
