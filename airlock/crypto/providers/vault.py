"""HashiCorp Vault / OpenBao transit provider (hvac): the KEK never leaves Vault; data keys are
wrapped with ``transit/encrypt/<key>`` and unwrapped with ``transit/decrypt/<key>``. Rotating the
transit key inside Vault plus ``rewrap`` moves data keys to the newest key version without Vault
ever returning the plaintext data key.

Config: ``url`` (https; ``http://`` only to a loopback address with ``allow_insecure_http: true``,
for tests: plain HTTP carries the token and every data key in clear), ``mount`` (default
``transit``), ``token_file`` or ``token_env``, optional ``ca_cert`` (path) and ``timeout``
(seconds, default 10).
"""

from __future__ import annotations

import base64
from typing import Any

from airlock.crypto.errors import KeyProviderError, WrongKeyError
from airlock.crypto.providers.base import KeyProvider, ProviderStatus, read_secret
from airlock.crypto.providers.keyfile import check_key_id

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def check_url(name: str, url: str, allow_http: bool) -> None:
    """https only: the token and the data keys travel in the request bodies."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and allow_http and (parts.hostname or "") in LOOPBACK_HOSTS:
        return
    if parts.scheme == "http":
        raise KeyProviderError(f"{name}: refusing Vault URL {url}: http:// sends the token and data keys in "
                               "clear; use https:// (allow_insecure_http: true is accepted only for a "
                               "loopback test server)")
    raise KeyProviderError(f"{name}: Vault URL {url} must start with https://")


class VaultTransitProvider(KeyProvider):
    kind = "vault"

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        super().__init__(name)
        if not config.get("url"):
            raise KeyProviderError(f"{name}: vault provider needs 'url'")
        self.url = str(config["url"])
        check_url(name, self.url, config.get("allow_insecure_http") is True)
        self.mount = str(config.get("mount") or "transit")
        self.timeout = int(config.get("timeout") or 10)
        self.verify: bool | str = str(config["ca_cert"]) if config.get("ca_cert") else True
        self._config = config

    def _client(self) -> Any:
        import hvac

        token = read_secret(self._config, "token", self.name)
        return hvac.Client(url=self.url, token=token, timeout=self.timeout, verify=self.verify)

    def _call(self, what: str, key_id: str, fn: Any) -> Any:
        import hvac.exceptions as hx
        import requests

        try:
            return fn()
        except hx.VaultDown as exc:
            raise KeyProviderError(
                f"{self.name}: Vault at {self.url} is sealed or down; unseal it and retry"
            ) from exc
        except hx.Forbidden as exc:
            raise KeyProviderError(
                f"{self.name}: Vault token may not {what} with transit key {key_id!r}"
            ) from exc
        except hx.InvalidPath as exc:
            raise KeyProviderError(
                f"{self.name}: no transit key {key_id!r} under mount {self.mount!r}"
            ) from exc
        except hx.InvalidRequest as exc:
            if what in ("decrypt", "rewrap"):
                raise WrongKeyError(
                    f"{self.name}: transit key {key_id!r} does not unwrap this data key"
                ) from exc
            raise KeyProviderError(f"{self.name}: Vault refused {what}: {exc}") from exc
        except hx.VaultError as exc:
            raise KeyProviderError(f"{self.name}: Vault error during {what}: {type(exc).__name__}") from exc
        except requests.RequestException as exc:
            raise KeyProviderError(
                f"{self.name}: cannot reach Vault at {self.url} ({type(exc).__name__})"
            ) from exc

    def wrap(self, key_id: str, data_key: bytes) -> bytes:
        client = self._client()
        resp = self._call(
            "encrypt",
            key_id,
            lambda: client.secrets.transit.encrypt_data(
                name=check_key_id(key_id, self.name),
                plaintext=base64.b64encode(data_key).decode(),
                mount_point=self.mount,
            ),
        )
        return str(resp["data"]["ciphertext"]).encode()

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        client = self._client()
        resp = self._call(
            "decrypt",
            key_id,
            lambda: client.secrets.transit.decrypt_data(
                name=check_key_id(key_id, self.name),
                ciphertext=wrapped.decode("ascii", "replace"),
                mount_point=self.mount,
            ),
        )
        return base64.b64decode(resp["data"]["plaintext"])

    def rewrap(self, key_id: str, wrapped: bytes) -> bytes | None:
        client = self._client()
        resp = self._call(
            "rewrap",
            key_id,
            lambda: client.secrets.transit.rewrap_data(
                name=check_key_id(key_id, self.name),
                ciphertext=wrapped.decode("ascii", "replace"),
                mount_point=self.mount,
            ),
        )
        return str(resp["data"]["ciphertext"]).encode()

    def retire_old_versions(self, key_id: str) -> int | None:
        client = self._client()
        name = check_key_id(key_id, self.name)
        info = self._call("read", key_id,
                          lambda: client.secrets.transit.read_key(name=name, mount_point=self.mount))
        latest = int(info["data"]["latest_version"])
        self._call("configure", key_id, lambda: client.secrets.transit.update_key_configuration(
            name=name, min_decryption_version=latest, mount_point=self.mount))
        return latest

    def generate(self, key_id: str) -> None:
        import hvac.exceptions as hx

        client = self._client()
        name = check_key_id(key_id, self.name)
        try:
            self._call(
                "read", key_id, lambda: client.secrets.transit.read_key(name=name, mount_point=self.mount)
            )
        except KeyProviderError as exc:
            if not isinstance(exc.__cause__, hx.InvalidPath):
                raise
        else:
            raise KeyProviderError(f"{self.name}: transit key {key_id!r} already exists")
        self._call(
            "create",
            key_id,
            lambda: client.secrets.transit.create_key(
                name=name, key_type="aes256-gcm96", exportable=False, mount_point=self.mount
            ),
        )

    def check(self) -> ProviderStatus:
        try:
            client = self._client()
            status = self._call("read seal status", "-", lambda: client.sys.read_seal_status())
            if status.get("sealed"):
                return ProviderStatus(self.name, self.kind, False, f"Vault at {self.url} is sealed")
            listed = self._call("list", "-", lambda: client.secrets.transit.list_keys(mount_point=self.mount))
        except KeyProviderError as exc:
            return ProviderStatus(self.name, self.kind, False, str(exc))
        keys = sorted(listed.get("data", {}).get("keys", [])) if isinstance(listed, dict) else []
        return ProviderStatus(self.name, self.kind, True, f"Vault transit at {self.url}/{self.mount}", keys)
