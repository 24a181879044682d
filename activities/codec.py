"""Payload encryption with Vault Transit: regulated data stays out of Temporal history.

Envelope encryption. Vault Transit mints a data key (`transit/datakey/plaintext/<key>`): the
plaintext key encrypts payloads here with AES-256-GCM, the wrapped key (`vault:vN:...`) travels in
each payload's metadata and only Vault can unwrap it again (`transit/decrypt/<key>`). One data key
serves many payloads for a short while, so the hot path makes no Vault call; rotating the Transit
key (`transit/keys/<key>/rotate`) changes the version new data keys are wrapped with, and old
wrapped keys still unwrap, so old histories stay readable.

Who may read is who may unwrap: the worker with its AppRole, an operator or auditor with their own
token, the codec server with the caller's token. Search attributes are never encoded by Temporal
and must never carry regulated data.

hvac is synchronous: Vault calls run in a thread (`asyncio.to_thread`) when the codec is awaited,
and only on a cache miss; the `*_sync` methods are for synchronous callers (the audit timeline).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import hvac
import hvac.exceptions
import requests
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.api.history.v1 import HistoryEvent
from temporalio.converter import PayloadCodec
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from lockgate import vaultio
from lockgate.activities.vault import RETRYABLE
from lockgate.errors import UserError

__all__ = [
    "ENCODING",
    "WITHHELD",
    "DataKey",
    "OfflineTransit",
    "PayloadKeyError",
    "PayloadKeyForbidden",
    "PayloadKeyUnavailable",
    "TransitCodec",
    "VaultTransit",
    "decode_events",
    "encrypted_data_keys",
    "encrypted_key_names",
    "is_encrypted",
    "restore_failure",
]

log = logging.getLogger("lockgate.codec")

ENCODING = b"binary/encrypted"
META_KEY = "encryption-key-id"  # the Transit key's name
META_VERSION = "encryption-key-version"  # the Transit key version that wrapped the data key
META_DATA_KEY = "encryption-data-key"  # the wrapped data key, `vault:vN:...`
META_CIPHER = "encryption-cipher"
CIPHER = b"AES256-GCM"
_NONCE = 12
# Binds ciphertexts to this format; a payload moved into another context fails to open.
_AAD = b"lockgate.payload.v1"

# Vault blips are retried briefly here; past that the caller fails (a worker task is retried by
# Temporal, a CLI command exits 2 with one line).
_transit_call = retry(
    retry=retry_if_exception_type(RETRYABLE),
    wait=wait_exponential(multiplier=0.1, max=1),
    stop=stop_after_delay(5),
    reraise=True,
)


# What a person who may not decrypt is told: reading payloads is a role (lockgate.bootstrap's
# PAYLOAD_READER_GROUPS hold the reader policy in the dev stack; README "Production identity").
WITHHELD = "payload withheld: requires group auditors, operators or an approver group"


class PayloadKeyError(UserError):
    """A payload cannot be encrypted or decrypted (the CLI prints it on one line, exit 2)."""


class PayloadKeyForbidden(PayloadKeyError):
    """Vault refused this identity the Transit key (or the token is invalid or expired)."""


class PayloadKeyUnavailable(PayloadKeyError):
    """Vault did not answer."""


class VaultTransit:
    """The Transit engine as one identity sees it: the worker's AppRole or a person's token.

    Args:
        client: returns a logged-in hvac client; called for every request, so a broker that logs in
            again when its token expires can be passed as `lambda: broker.client`.
        mount: where the Transit engine is mounted.
    """

    def __init__(self, client: Callable[[], hvac.Client], mount: str = "transit") -> None:
        self._client = client
        self.mount = mount

    @classmethod
    def with_token(
        cls, addr: str, token: str, *, session: requests.Session | None = None, timeout: int = 5
    ) -> VaultTransit:
        client = vaultio.client(addr, token, timeout=timeout, session=session)
        return cls(lambda: client)

    def _call(self, what: str, fn: Callable[[hvac.Client], Any]) -> Any:
        try:
            return _transit_call(fn)(self._client())
        except hvac.exceptions.Forbidden as err:
            if "/decrypt/" in what:
                raise PayloadKeyForbidden(f"{WITHHELD} (Vault refused {what} to this token)") from err
            raise PayloadKeyForbidden(f"Vault refused {what}: this token may not use it (or is invalid)") from err
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.InvalidPath) as err:
            raise PayloadKeyError(f"Vault could not {what}: {err}") from err
        except RETRYABLE as err:
            raise PayloadKeyUnavailable(f"Vault did not answer to {what}: {type(err).__name__}") from err

    def datakey(self, key: str) -> DataKey:
        """A fresh 256-bit data key: plaintext for this process, wrapped for the payloads."""
        resp = self._call(
            f"transit/datakey/plaintext/{key}",
            lambda c: c.adapter.post(f"/v1/{self.mount}/datakey/plaintext/{key}", json={"bits": 256}),
        )
        data = resp["data"]
        return DataKey(
            name=key,
            version=int(data["key_version"]),
            plaintext=base64.b64decode(data["plaintext"]),
            wrapped=str(data["ciphertext"]),
        )

    def unwrap(self, key: str, wrapped: str) -> bytes:
        """The plaintext of a wrapped data key."""
        resp = self._call(
            f"transit/decrypt/{key}",
            lambda c: c.adapter.post(f"/v1/{self.mount}/decrypt/{key}", json={"ciphertext": wrapped}),
        )
        return base64.b64decode(resp["data"]["plaintext"])

    def allowed(self, paths: Iterable[str]) -> bool:
        """Whether this token may `update` every one of `paths` (mount-relative, e.g. `decrypt/k`)."""
        full = [f"{self.mount}/{p}" for p in paths]
        resp = self._call(
            "sys/capabilities-self", lambda c: c.adapter.post("/v1/sys/capabilities-self", json={"paths": full})
        )
        caps = resp.get("data", resp) if isinstance(resp, dict) else {}
        return all({"update", "root"} & set(caps.get(p) or []) for p in full)


class OfflineTransit(VaultTransit):
    """Transit for decoding only, with no Vault: the data keys an auditor was given (sealed for
    their own key in an evidence bundle, lockgate.auditkeys), by wrapped form."""

    def __init__(self, keys: dict[str, bytes]) -> None:
        super().__init__(self._no_vault)
        self._keys = dict(keys)

    @staticmethod
    def _no_vault() -> hvac.Client:
        raise PayloadKeyUnavailable("offline: no Vault to ask")

    def datakey(self, key: str) -> DataKey:
        raise PayloadKeyError("offline: nothing can be encrypted")

    def unwrap(self, key: str, wrapped: str) -> bytes:
        try:
            return self._keys[wrapped]
        except KeyError:
            raise PayloadKeyError(f"offline: no data key for a payload encrypted under {key}") from None


@dataclass
class DataKey:
    """One data key. `plaintext` never leaves this process; `wrapped` goes into every payload."""

    name: str
    version: int
    plaintext: bytes = field(repr=False)
    wrapped: str
    minted: float = field(default_factory=time.monotonic)
    uses: int = 0

    def __post_init__(self) -> None:
        self.aead = AESGCM(self.plaintext)


def is_encrypted(payload: Payload) -> bool:
    return payload.metadata.get("encoding") == ENCODING


def encrypted_key_names(payloads: Iterable[Payload]) -> set[str]:
    """The Transit key names the encrypted payloads among `payloads` name."""
    return {p.metadata[META_KEY].decode() for p in payloads if is_encrypted(p) and META_KEY in p.metadata}


class TransitCodec(PayloadCodec):
    """A temporalio `PayloadCodec` that encrypts every payload under Vault Transit data keys.

    Args:
        transit: the Transit engine as this process's identity sees it.
        key: the Transit key new payloads are encrypted under; None for a codec that only decodes.
        data_key_ttl: seconds after which a new data key is fetched, in the background: the current
            one keeps serving meanwhile, so a slow or stopped Vault does not stall encoding.
        data_key_max_age: seconds after which a data key encrypts nothing more (encoding then
            waits for Vault).
        data_key_uses: payloads one data key encrypts at most (random 96-bit nonces stay far below
            the collision bound).
        unwrap_cache: how many unwrapped data keys decoding keeps.
        unwrap_ttl: seconds an unwrapped data key is kept (a worker replaying recent runs needs no
            Vault call for them).
    """

    def __init__(
        self,
        transit: VaultTransit,
        key: str | None,
        *,
        data_key_ttl: float = 60.0,
        data_key_max_age: float = 3600.0,
        data_key_uses: int = 100_000,
        unwrap_cache: int = 256,
        unwrap_ttl: float = 3600.0,
    ) -> None:
        self.transit = transit
        self.key = key
        self._ttl, self._max_age, self._max_uses = data_key_ttl, data_key_max_age, data_key_uses
        self._refreshing = False
        self._next_refresh = 0.0
        self._cache_size, self._unwrap_ttl = unwrap_cache, unwrap_ttl
        # Threading locks, not asyncio ones: the sync methods run outside any event loop, and no
        # lock is ever held across an await.
        self._lock = threading.Lock()
        self._mint_lock = threading.Lock()
        self._current: DataKey | None = None
        self._unwrapped: OrderedDict[str, tuple[float, AESGCM]] = OrderedDict()

    def check_access(self, *, decrypt: bool = True) -> None:
        """Raises PayloadKeyForbidden unless this identity may decrypt payloads of `key` (with
        `decrypt=False`: may encrypt them, all a person starting a run or signing an act needs)."""
        if not self.key:
            return
        what = f"decrypt/{self.key}" if decrypt else f"datakey/plaintext/{self.key}"
        path = f"{self.transit.mount}/{what}"
        try:
            allowed = self.transit.allowed([what])
        except PayloadKeyForbidden:
            raise PayloadKeyForbidden(
                f"Vault does not accept this token (invalid or expired); lockgate payloads need one allowed {path}"
            ) from None
        if not allowed and decrypt:
            raise PayloadKeyForbidden(f"{WITHHELD} (this Vault token may not use {path})")
        if not allowed:
            raise PayloadKeyForbidden(
                f"this Vault token may not encrypt lockgate payloads ({path}); "
                "use one with that capability (policy lockgate-payload-encrypt)"
            )

    # -- encode ------------------------------------------------------------------------------------
    def _claim(self, n: int) -> DataKey | None:
        """The current data key with `n` uses claimed, or None when a new one must be minted first.
        A key past its TTL (or most of its uses) still serves while a new one is fetched."""
        refresh = False
        with self._lock:
            k = self._current
            now = time.monotonic()
            if k is None or k.uses + n > self._max_uses or now - k.minted > self._max_age:
                return None
            k.uses += n
            if (now - k.minted > self._ttl or k.uses > self._max_uses * 0.8) and not self._refreshing:
                refresh = self._refreshing = now >= self._next_refresh
        if refresh:
            threading.Thread(target=self._refresh, name="lockgate-data-key", daemon=True).start()
        return k

    def _install(self, fresh: DataKey) -> None:
        with self._lock:
            self._current = fresh
            # This process made it: decoding its own payloads needs no unwrap call.
            self._remember(fresh.wrapped, fresh.aead)

    def _refresh(self) -> None:
        try:
            assert self.key is not None
            self._install(self.transit.datakey(self.key))
        except PayloadKeyError as err:
            log.warning("payload data key not renewed, the current one keeps serving: %s", err)
            self._next_refresh = time.monotonic() + 5
        finally:
            self._refreshing = False

    def _mint(self, n: int) -> DataKey:
        with self._mint_lock:
            k = self._claim(n)  # another caller may have minted while this one waited
            if k is not None:
                return k
            assert self.key is not None
            fresh = self.transit.datakey(self.key)
            fresh.uses = n
            self._install(fresh)
            return fresh

    def _seal(self, payload: Payload, k: DataKey) -> Payload:
        nonce = os.urandom(_NONCE)
        sealed = k.aead.encrypt(nonce, payload.SerializeToString(), _AAD)
        return Payload(
            metadata={
                "encoding": ENCODING,
                META_CIPHER: CIPHER,
                META_KEY: k.name.encode(),
                META_VERSION: str(k.version).encode(),
                META_DATA_KEY: k.wrapped.encode(),
            },
            data=nonce + sealed,
        )

    def _to_seal(self, payloads: Sequence[Payload]) -> int:
        return sum(1 for p in payloads if not is_encrypted(p))

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        n = self._to_seal(payloads)
        if self.key is None or n == 0:
            return list(payloads)
        k = self._claim(n) or await asyncio.to_thread(self._mint, n)
        return [p if is_encrypted(p) else self._seal(p, k) for p in payloads]

    # -- decode ------------------------------------------------------------------------------------
    def _remember(self, wrapped: str, aead: AESGCM) -> None:
        self._unwrapped[wrapped] = (time.monotonic(), aead)
        self._unwrapped.move_to_end(wrapped)
        while len(self._unwrapped) > self._cache_size:
            self._unwrapped.popitem(last=False)

    def _cached(self, payloads: Sequence[Payload]) -> tuple[dict[str, AESGCM], set[tuple[str, str]]]:
        """The unwrapped keys these payloads need that are cached, and the (key, wrapped) missing."""
        hits: dict[str, AESGCM] = {}
        missing: set[tuple[str, str]] = set()
        now = time.monotonic()
        with self._lock:
            for p in payloads:
                if not is_encrypted(p):
                    continue
                wrapped = p.metadata[META_DATA_KEY].decode()
                if wrapped in hits:
                    continue
                entry = self._unwrapped.get(wrapped)
                if entry is not None and now - entry[0] <= self._unwrap_ttl:
                    self._unwrapped.move_to_end(wrapped)
                    hits[wrapped] = entry[1]
                else:
                    missing.add((p.metadata[META_KEY].decode(), wrapped))
        return hits, missing

    def _unwrap_all(self, missing: set[tuple[str, str]]) -> dict[str, AESGCM]:
        out = {wrapped: AESGCM(self.transit.unwrap(name, wrapped)) for name, wrapped in sorted(missing)}
        with self._lock:
            for wrapped, aead in out.items():
                self._remember(wrapped, aead)
        return out

    @staticmethod
    def _open(payload: Payload, keys: dict[str, AESGCM]) -> Payload:
        if not is_encrypted(payload):
            return payload
        if payload.metadata.get(META_CIPHER) != CIPHER:
            raise PayloadKeyError(f"unknown payload cipher {payload.metadata.get(META_CIPHER)!r}")
        data = payload.data
        try:
            plain = keys[payload.metadata[META_DATA_KEY].decode()].decrypt(data[:_NONCE], data[_NONCE:], _AAD)
        except InvalidTag:
            raise PayloadKeyError("an encrypted payload failed authentication (altered or corrupt)") from None
        out = Payload()
        out.ParseFromString(plain)
        return out

    def decode_sync(self, payloads: Sequence[Payload]) -> list[Payload]:
        """`decode` for synchronous callers (may call Vault on this thread)."""
        keys, missing = self._cached(payloads)
        if missing:
            keys.update(self._unwrap_all(missing))
        return [self._open(p, keys) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        keys, missing = self._cached(payloads)
        if missing:
            keys.update(await asyncio.to_thread(self._unwrap_all, missing))
        return [self._open(p, keys) for p in payloads]


# -- whole histories -------------------------------------------------------------------------------
# Temporal never runs search attributes through a codec, and lockgate leaves headers alone too.
_SKIP = {"temporal.api.common.v1.SearchAttributes", "temporal.api.common.v1.Header"}
_PAYLOAD = Payload.DESCRIPTOR.full_name
_FAILURE = "temporal.api.failure.v1.Failure"


def _walk(msg: Any, payloads: list[Payload], failures: list[Any]) -> None:
    """Collects every Payload (by reference, to overwrite in place) and every Failure in `msg`."""
    if msg.DESCRIPTOR.full_name == _FAILURE:
        failures.append(msg)
    for fd, value in msg.ListFields():
        kind = fd.message_type
        if kind is None or kind.full_name in _SKIP:
            continue
        if kind.GetOptions().map_entry:
            kind = kind.fields_by_name["value"].message_type
            if kind is None or kind.full_name in _SKIP:
                continue
            items: Iterable[Any] = value.values()
        else:
            repeated = fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED
            items = value if repeated else (value,)
        for item in items:
            if kind.full_name == _PAYLOAD:
                payloads.append(item)
            else:
                _walk(item, payloads, failures)


def encrypted_data_keys(events: Iterable[HistoryEvent]) -> set[tuple[str, str]]:
    """(Transit key name, wrapped data key) of every encrypted payload in `events`."""
    out: set[tuple[str, str]] = set()
    for event in events:
        payloads: list[Payload] = []
        _walk(event, payloads, [])
        for p in payloads:
            if is_encrypted(p):
                name = p.metadata[META_KEY].decode() if META_KEY in p.metadata else "?"
                out.add((name, p.metadata[META_DATA_KEY].decode() if META_DATA_KEY in p.metadata else ""))
    return out


def decode_events(events: Iterable[HistoryEvent], codec: TransitCodec) -> list[HistoryEvent]:
    """Copies of `events` with every encrypted payload decrypted and every failure's message and
    stack trace back in place: a history that reads without Vault. It holds whatever regulated data
    the run handled, so it is as sensitive as that data."""
    copies, payloads, failures = [], [], []
    for event in events:
        copy = HistoryEvent()
        copy.CopyFrom(event)
        _walk(copy, payloads, failures)
        copies.append(copy)
    encrypted = [p for p in payloads if is_encrypted(p)]
    for slot, plain in zip(encrypted, codec.decode_sync(encrypted), strict=True):
        slot.CopyFrom(plain)
    for failure in failures:
        restore_failure(failure)
    return copies


def restore_failure(failure: Any) -> None:
    """Moves a decoded failure's encoded message and stack trace back into the failure itself."""
    if not failure.HasField("encoded_attributes") or is_encrypted(failure.encoded_attributes):
        return
    try:
        attrs = json.loads(failure.encoded_attributes.data)
    except ValueError:
        return
    if isinstance(attrs, dict) and isinstance(attrs.get("message"), str):
        failure.message = attrs["message"]
        failure.stack_trace = str(attrs.get("stack_trace") or "")
        failure.ClearField("encoded_attributes")
