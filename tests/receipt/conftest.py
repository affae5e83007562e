"""Receipt fixtures: the real-gpg keys of tests/bundle and the three small model versions (with their
deltas) of tests/repo."""

from tests.bundle.conftest import keys
from tests.repo.conftest import versions

__all__ = ["keys", "versions"]
