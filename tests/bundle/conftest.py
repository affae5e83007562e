"""Bundle test helpers, re-exported for the modules that import them from here (the fixtures keys,
factory and trust are in tests/conftest.py; the helpers in tests/gpg.py and tests/bundle/factory.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from tests.bundle.factory import BLOCK, BundleFactory, airlock_cmd, make_tree, payload
from tests.gpg import PAST, Keys
from tests.support import tree_state

__all__ = ["BLOCK", "PAST", "BundleFactory", "Keys", "Run", "airlock_cmd", "make_tree", "payload", "snapshot"]

snapshot = tree_state  # the one snapshot helper (tests/support.py)

Run = Callable[..., subprocess.CompletedProcess[str]]


def __getattr__(name: str) -> object:
    """Fixtures that moved to tests/conftest.py, under their old import path for modules not moved
    yet (a module that imports one registers it again for itself: drop the import instead)."""
    if name in ("keys", "factory", "trust"):
        import tests.conftest

        return getattr(tests.conftest, name)
    raise AttributeError(name)
