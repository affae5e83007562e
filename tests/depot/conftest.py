"""The bundle tests' real gpg keys and bundle factory (throwaway GNUPGHOME, split payloads)."""

from tests.bundle.conftest import factory, keys, trust  # noqa: F401  (fixtures)
