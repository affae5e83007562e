"""Key providers and the registry that maps a provider name (as recorded in a key slot) to one.

The registry is built from a YAML/JSON config file (``--config``, ``$AIRLOCK_KEYS_CONFIG`` or
``/etc/airlock/keys.yaml``)::

    providers:
      hsm:   {type: pkcs11, module: /usr/lib/softhsm/libsofthsm2.so, token_label: airlock,
              pin_file: /etc/airlock/hsm.pin}
      vault: {type: vault, url: https://vault.local:8200, mount: transit,
              token_file: /etc/airlock/vault.token}
      dev:   {type: keyfile, dir: /etc/airlock/dev-keys, allow_development_keyfile: true}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from airlock import settings
from airlock.crypto.errors import KeyProviderError
from airlock.crypto.providers.base import KeyProvider, ProviderStatus, check_private
from airlock.crypto.providers.keyfile import KeyFileProvider
from airlock.crypto.providers.pkcs11 import Pkcs11Provider
from airlock.crypto.providers.vault import VaultTransitProvider

__all__ = ["KeyProvider", "KeyRef", "ProviderRegistry", "ProviderStatus", "default_config_path",
           "load_registry"]

KINDS: dict[str, Any] = {  # type name -> provider class taking (name, config)
    "pkcs11": Pkcs11Provider,
    "vault": VaultTransitProvider,
    "keyfile": KeyFileProvider,
}


def default_config_path() -> Path:
    return settings.keys_config()


def load_registry(path: Path | str | None = None, *, required: bool = False) -> ProviderRegistry | None:
    """The key providers a repository needs for encrypted versions: from ``path`` when named, else
    from the default config when it exists or when keys are ``required`` (encrypting); otherwise
    None. Shared by the CLI and the Ansible modules."""
    if path is not None or required or default_config_path().exists():
        return ProviderRegistry.load(Path(path) if path is not None else None)
    return None


@dataclass(frozen=True)
class KeyRef:
    """``provider:key_id``, e.g. ``hsm:models-kek-2026``."""

    provider: str
    key_id: str

    @classmethod
    def parse(cls, text: str) -> KeyRef:
        provider, sep, key_id = text.partition(":")
        if not sep or not provider or not key_id:
            raise KeyProviderError(f"key reference {text!r} must look like PROVIDER:KEY_ID")
        return cls(provider, key_id)

    def __str__(self) -> str:
        return f"{self.provider}:{self.key_id}"


class ProviderRegistry:
    """Named providers from a config; instances are created lazily and cached."""

    def __init__(self, config: dict[str, Any], source: str | None = None) -> None:
        providers = config.get("providers") if isinstance(config, dict) else None
        if not isinstance(providers, dict) or not providers:
            raise KeyProviderError("key provider config has no 'providers' mapping", path=source)
        self._config: dict[str, dict[str, Any]] = providers
        self._cache: dict[str, KeyProvider] = {}
        self.source = source

    @classmethod
    def load(cls, path: Path | None = None) -> ProviderRegistry:
        path = path or default_config_path()
        if path.exists():
            # it names the PKCS#11 library to load and the Vault URL: nobody else may edit it
            check_private(path, "key provider config", secret=False)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise KeyProviderError(
                f"cannot read key provider config ({exc.strerror})", path=str(path)
            ) from exc
        except yaml.YAMLError as exc:
            raise KeyProviderError(f"key provider config is not valid YAML: {exc}", path=str(path)) from exc
        return cls(data or {}, str(path))

    @classmethod
    def of(cls, *providers: KeyProvider) -> ProviderRegistry:
        """A registry over already-built providers (API callers, tests)."""
        reg = cls({"providers": {p.name: {"type": p.kind} for p in providers}})
        reg._cache.update({p.name: p for p in providers})
        return reg

    def names(self) -> list[str]:
        return sorted(self._config)

    def get(self, name: str) -> KeyProvider:
        if name in self._cache:
            return self._cache[name]
        conf = self._config.get(name)
        if not isinstance(conf, dict):
            raise KeyProviderError(
                f"no key provider named {name!r} in the config (known: {', '.join(self.names())})",
                path=self.source,
            )
        kind = str(conf.get("type", ""))
        if kind not in KINDS:
            raise KeyProviderError(
                f"provider {name!r} has unknown type {kind!r} (one of {', '.join(sorted(KINDS))})",
                path=self.source,
            )
        provider = KINDS[kind](name, conf)
        self._cache[name] = provider
        return provider
