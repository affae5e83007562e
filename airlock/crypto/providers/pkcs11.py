"""PKCS#11 provider (an HSM; SoftHSM2 in tests): the KEK is a non-extractable AES-256 key on a token,
identified by its label; data keys are wrapped with CKM_AES_KEY_WRAP (RFC 3394) inside the HSM.

Config: ``module`` (path of the PKCS#11 library), ``token_label``, ``pin_file`` or ``pin_env``.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from airlock.crypto.errors import KeyProviderError, WrongKeyError
from airlock.crypto.providers.base import KeyProvider, ProviderStatus, read_secret
from airlock.crypto.providers.keyfile import check_key_id

DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
_LOCK = threading.Lock()


class Pkcs11Provider(KeyProvider):
    kind = "pkcs11"

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        super().__init__(name)
        self.module = str(config.get("module") or DEFAULT_MODULE)
        if not config.get("token_label"):
            raise KeyProviderError(f"{name}: pkcs11 provider needs 'token_label'")
        self.token_label = str(config["token_label"])
        self._config = config

    def _lib(self) -> Any:
        try:
            import pkcs11
        except ImportError as exc:  # pragma: no cover - dependency of the package
            raise KeyProviderError(f"{self.name}: python-pkcs11 is not installed") from exc
        if not os.path.exists(self.module):
            raise KeyProviderError(f"{self.name}: PKCS#11 module not found", path=self.module)
        try:
            return pkcs11.lib(self.module)
        except pkcs11.PKCS11Error as exc:
            raise KeyProviderError(
                f"{self.name}: cannot load PKCS#11 module ({type(exc).__name__})", path=self.module
            ) from exc

    def _token(self, lib: Any) -> Any:
        """The token by label; re-reads the module's slots once (a token created, removed or a
        config changed since the module was loaded)."""
        import pkcs11

        for attempt in (0, 1):
            try:
                return lib.get_token(token_label=self.token_label)
            except pkcs11.PKCS11Error as exc:
                if attempt == 0:
                    with contextlib.suppress(pkcs11.PKCS11Error):
                        lib.reinitialize()
                    continue
                raise KeyProviderError(
                    f"{self.name}: HSM token {self.token_label!r} not present ({type(exc).__name__})"
                ) from exc
        raise AssertionError("unreachable")

    @contextmanager
    def _session(self, rw: bool = False) -> Iterator[Any]:
        import pkcs11

        pin = read_secret(self._config, "pin", self.name)
        with _LOCK:
            lib = self._lib()
            token = self._token(lib)
            try:
                session = token.open(rw=rw, user_pin=pin)
            except pkcs11.PinIncorrect as exc:
                raise KeyProviderError(f"{self.name}: HSM login refused (wrong PIN)") from exc
            except pkcs11.PKCS11Error as exc:
                raise KeyProviderError(
                    f"{self.name}: cannot open HSM session ({type(exc).__name__})"
                ) from exc
            try:
                yield session
            finally:
                session.close()

    def _find(self, session: Any, key_id: str) -> list[Any]:
        from pkcs11 import Attribute, KeyType, ObjectClass

        return list(
            session.get_objects(
                {
                    Attribute.LABEL: check_key_id(key_id, self.name),
                    Attribute.CLASS: ObjectClass.SECRET_KEY,
                    Attribute.KEY_TYPE: KeyType.AES,
                }
            )
        )

    def _kek(self, session: Any, key_id: str) -> Any:
        found = self._find(session, key_id)
        if not found:
            raise KeyProviderError(
                f"{self.name}: no AES key labelled {key_id!r} on token {self.token_label!r}"
            )
        if len(found) > 1:
            raise KeyProviderError(
                f"{self.name}: {len(found)} keys labelled {key_id!r}; labels must be unique"
            )
        kek = found[0]
        self._check_attributes(kek, key_id)
        return kek

    def _check_attributes(self, kek: Any, key_id: str) -> None:
        """A KEK must stay inside the HSM and be able to do both halves of the job: refused when it
        is extractable or not sensitive (its value could be read out), or lacks CKA_WRAP/CKA_UNWRAP
        (data wrapped under it could never be opened again)."""
        import pkcs11
        from pkcs11 import Attribute

        want = {Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: True, Attribute.WRAP: True,
                Attribute.UNWRAP: True}
        for attr, value in want.items():
            try:
                have = bool(kek[attr])
            except pkcs11.PKCS11Error as exc:
                raise KeyProviderError(
                    f"{self.name}: cannot read {attr.name} of HSM key {key_id!r} ({type(exc).__name__})"
                ) from exc
            if have != value:
                raise KeyProviderError(
                    f"{self.name}: HSM key {key_id!r} has CKA_{attr.name}={have}; a key-encryption key "
                    "must be non-extractable, sensitive, and allowed to wrap and unwrap; refusing it"
                )

    def wrap(self, key_id: str, data_key: bytes) -> bytes:
        import pkcs11
        from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

        with self._session() as session:
            kek = self._kek(session, key_id)
            try:
                obj = session.create_object(
                    {
                        Attribute.CLASS: ObjectClass.SECRET_KEY,
                        Attribute.KEY_TYPE: KeyType.AES,
                        Attribute.VALUE: bytes(data_key),
                        Attribute.TOKEN: False,
                        Attribute.EXTRACTABLE: True,
                        Attribute.SENSITIVE: False,
                    }
                )
                try:
                    return bytes(kek.wrap_key(obj, mechanism=Mechanism.AES_KEY_WRAP))
                finally:
                    obj.destroy()
            except pkcs11.PKCS11Error as exc:
                raise KeyProviderError(
                    f"{self.name}: HSM refused to wrap under key {key_id!r} ({type(exc).__name__})"
                ) from exc

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        import pkcs11
        from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

        with self._session() as session:
            kek = self._kek(session, key_id)
            try:
                obj = kek.unwrap_key(
                    ObjectClass.SECRET_KEY,
                    KeyType.AES,
                    wrapped,
                    mechanism=Mechanism.AES_KEY_WRAP,
                    template={
                        Attribute.EXTRACTABLE: True,
                        Attribute.SENSITIVE: False,
                        Attribute.TOKEN: False,
                    },
                )
            except pkcs11.PKCS11Error as exc:
                raise WrongKeyError(f"{self.name}: HSM key {key_id!r} does not unwrap this data key") from exc
            try:
                return bytes(obj[Attribute.VALUE])
            except pkcs11.PKCS11Error as exc:
                raise KeyProviderError(
                    f"{self.name}: cannot read the unwrapped data key ({type(exc).__name__})"
                ) from exc
            finally:
                obj.destroy()

    def generate(self, key_id: str) -> None:
        from pkcs11 import Attribute, KeyType

        with self._session(rw=True) as session:
            if self._find(session, key_id):
                raise KeyProviderError(f"{self.name}: key {key_id!r} already exists on the token")
            session.generate_key(
                KeyType.AES,
                256,
                label=key_id,
                store=True,
                template={
                    Attribute.EXTRACTABLE: False,
                    Attribute.SENSITIVE: True,
                    Attribute.WRAP: True,
                    Attribute.UNWRAP: True,
                    Attribute.ENCRYPT: False,
                    Attribute.DECRYPT: False,
                },
            )

    def check(self) -> ProviderStatus:
        from pkcs11 import Attribute, ObjectClass

        try:
            with self._session() as session:
                keys = sorted(
                    str(o[Attribute.LABEL])
                    for o in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY})
                )
        except KeyProviderError as exc:
            return ProviderStatus(self.name, self.kind, False, str(exc))
        return ProviderStatus(
            self.name, self.kind, True, f"token {self.token_label!r} via {self.module}", keys
        )
