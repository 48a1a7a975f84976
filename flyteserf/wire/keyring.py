"""The encryption keyring and Serf's keyring file (spec §2.6, §3.13).

A :class:`Keyring` is an ordered list of AES keys whose first entry, the
primary, seals everything we send; every key is tried, in order, on what we
receive. That is what lets ``serf keys -install/-use/-remove`` rotate a key
across a live cluster. The operations keep memberlist's semantics and error
texts (``keyring.go``) because those texts travel back to the ``serf`` CLI in
key-query responses.

The keyring file (``-keyring-file``) is a JSON array of standard, padded
base64 keys, primary first. Serf rewrites it after every successful key
query; we do the same, but atomically and always with mode 0600.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from collections.abc import Iterable

from flyteserf.wire import crypto

__all__ = [
    "Keyring",
    "KeyringError",
    "check_key",
    "decode_base64",
    "decode_key",
    "encode_key",
    "load_keyring_file",
    "render_keyring_file",
    "save_keyring_file",
]

_KEY_SIZES = (16, 24, 32)
_KEY_SIZE_ERROR = "key size must be 16, 24 or 32 bytes"
_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_DECODE: dict[int, int] = {c: i for i, c in enumerate(_B64_ALPHABET)}
_PAD = ord("=")
_NEWLINES = (ord("\n"), ord("\r"))


class KeyringError(Exception):
    """A key or keyring operation was refused; the message is for the user.

    Where Serf has a text for the same failure, the message uses it, since
    the ``serf`` CLI shows these texts verbatim.
    """


def check_key(key: bytes) -> bytes:
    """Return *key* as :class:`bytes` if it is an AES-128/192/256 key.

    Same rule and text as memberlist's ``ValidateKey``.
    """
    if len(key) not in _KEY_SIZES:
        raise KeyringError(_KEY_SIZE_ERROR)
    return bytes(key)


def _corrupt(offset: int) -> KeyringError:
    """Go's ``base64.CorruptInputError`` text, so users see the agent's message."""
    return KeyringError(f"illegal base64 data at input byte {offset}")


def decode_base64(text: str) -> bytes:
    """Decode *text* exactly as Go's ``base64.StdEncoding.DecodeString`` does.

    Python's decoder disagrees with Go at the edges (Go skips ``\\r`` and
    ``\\n`` anywhere, accepts non-zero trailing bits, and reports the byte
    offset of the first problem), and keys arrive from files and the CLI that
    the Go agent accepts, so this is a port of Go 1.19's ``decodeQuantum``.
    Offsets count UTF-8 bytes, as Go's do.
    """
    src = text.encode("utf-8", "surrogatepass")
    n = len(src)
    out = bytearray()
    si = 0
    while si < n:
        quantum = [0, 0, 0, 0]
        filled = 4
        end = False
        j = 0
        while j < 4:
            if si == n:
                if j == 0:
                    return bytes(out)
                # A padded encoding must end on a whole 4-character quantum.
                raise _corrupt(si - j)
            char = src[si]
            si += 1
            value = _B64_DECODE.get(char)
            if value is not None:
                quantum[j] = value
                j += 1
                continue
            if char in _NEWLINES:
                continue
            if char != _PAD or j < 2:
                raise _corrupt(si - 1)
            if j == 2:
                # "==" expected; the first "=" is already consumed.
                while si < n and src[si] in _NEWLINES:
                    si += 1
                if si == n:
                    raise _corrupt(n)
                if src[si] != _PAD:
                    raise _corrupt(si - 1)
                si += 1
            while si < n and src[si] in _NEWLINES:
                si += 1
            if si < n:
                raise _corrupt(si)  # trailing garbage after the padding
            filled = j
            end = True
            break
        value = quantum[0] << 18 | quantum[1] << 12 | quantum[2] << 6 | quantum[3]
        out += value.to_bytes(3, "big")[: filled - 1]
        if end:
            break
    return bytes(out)


def decode_key(b64: str) -> bytes:
    """Parse a key as ``serf keys -install`` and the keyring file write it."""
    return check_key(decode_base64(b64))


def encode_key(key: bytes) -> str:
    """Render *key* as standard padded base64, the form every Serf tool shows."""
    return base64.b64encode(bytes(key)).decode("ascii")


class Keyring:
    """Ordered AES keys; index 0 is the primary.

    An empty keyring means encryption is disabled, so ``bool(keyring)`` is
    exactly memberlist's ``EncryptionEnabled()``. Test for ``None`` with
    ``is None``, never with truthiness, or an empty ring reads as no ring.

    Mutation keeps memberlist's rules: adding an installed key or removing
    an absent one does nothing, so repeated key queries are idempotent.
    """

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[bytes] = (), primary: bytes | None = None) -> None:
        """Install *primary* (default: the first of *keys*) then the rest of *keys*.

        Duplicates are dropped, as ``memberlist.NewKeyring`` does.
        """
        self._keys: list[bytes] = []
        if primary is not None:
            self.add_key(primary)
        for key in keys:
            self.add_key(key)

    @property
    def keys(self) -> tuple[bytes, ...]:
        """Every key, primary first: the order decryption tries them in."""
        return tuple(self._keys)

    @property
    def primary_key(self) -> bytes | None:
        """The key we encrypt with, or ``None`` when encryption is off."""
        return self._keys[0] if self._keys else None

    def __len__(self) -> int:
        return len(self._keys)

    def __bool__(self) -> bool:
        """True when encryption is enabled, i.e. at least one key is installed."""
        return bool(self._keys)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, (bytes, bytearray, memoryview)) and bytes(key) in self._keys

    def __repr__(self) -> str:
        # Never show key material: reprs end up in logs and tracebacks.
        return f"<Keyring with {len(self._keys)} key(s)>"

    def add_key(self, key: bytes) -> None:
        """Install *key* after the existing ones; it becomes primary only in an empty ring."""
        key = check_key(key)
        if key not in self._keys:
            self._keys.append(key)

    def use_key(self, key: bytes) -> None:
        """Make an installed *key* the primary, keeping the others' order."""
        key = bytes(key)
        if key not in self._keys:
            raise KeyringError("Requested key is not in the keyring")
        self._keys.remove(key)
        self._keys.insert(0, key)

    def remove_key(self, key: bytes) -> None:
        """Uninstall *key*; the primary must be replaced with :meth:`use_key` first."""
        key = bytes(key)
        if self._keys and key == self._keys[0]:
            raise KeyringError("Removing the primary key is not allowed")
        if key in self._keys:
            self._keys.remove(key)

    def encrypt(self, plaintext: bytes, aad: bytes = b"", *, version: int = 1) -> bytes:
        """Seal *plaintext* with the primary key (a random nonce every time)."""
        primary = self.primary_key
        if primary is None:
            raise KeyringError("Cannot encrypt: the keyring is empty, encryption is not enabled")
        return crypto.encrypt(primary, plaintext, aad, version=version)

    def decrypt(self, blob: bytes, aad: bytes = b"") -> bytes:
        """Open *blob* with the first installed key that authenticates it.

        Raises :class:`~flyteserf.wire.errors.DecodeError` when none does.
        """
        return crypto.decrypt_with_keys(self._keys, blob, aad)

    def encrypt_stream(self, plaintext: bytes, *, version: int = 1) -> bytes:
        """Frame *plaintext* as an encrypted TCP stream sealed with the primary key."""
        primary = self.primary_key
        if primary is None:
            raise KeyringError("Cannot encrypt: the keyring is empty, encryption is not enabled")
        return crypto.encrypt_stream(primary, plaintext, version=version)

    def decrypt_stream(self, header: bytes, blob: bytes) -> bytes:
        """Open an encrypted TCP stream body whose 5-byte *header* was read first."""
        return crypto.decrypt_stream(self._keys, header, blob)


def _json_kind(value: object) -> str:
    """Name a decoded JSON value's type the way a user writing JSON would."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def load_keyring_file(path: str) -> Keyring:
    """Read a Serf keyring file; its first key becomes the primary.

    Checks run in the Go agent's order (``loadKeyringFile``): read, parse
    JSON, decode every key's base64, refuse an empty list, then check sizes.
    JSON ``null`` counts as an empty list, as it does for Go.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise KeyringError(f"Keyring file {path} does not exist") from None
    except OSError as exc:
        raise KeyringError(f"Failed to read keyring file {path}: {exc.strerror or exc}") from exc
    try:
        document: object = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise KeyringError(
            f"Failed to decode keyring file {path}: not valid JSON ({exc})"
        ) from None
    if document is None:
        document = []
    if not isinstance(document, list):
        raise KeyringError(
            f"Failed to decode keyring file {path}: expected a JSON array of base64 keys, "
            f"found {_json_kind(document)}"
        )
    decoded: list[bytes] = []
    for number, entry in enumerate(document, start=1):
        if not isinstance(entry, str):
            raise KeyringError(
                f"Failed to decode keyring file {path}: key #{number} is "
                f"{_json_kind(entry)}, expected a base64 string"
            )
        try:
            decoded.append(decode_base64(entry))
        except KeyringError as exc:
            raise KeyringError(
                f"Failed to decode key from keyring file {path} (key #{number}): {exc}"
            ) from None
    if not decoded:
        raise KeyringError(f"Keyring file contains no keys: {path}")
    for number, key in enumerate(decoded, start=1):
        if len(key) not in _KEY_SIZES:
            raise KeyringError(
                f"Failed to restore keyring from {path} (key #{number} is {len(key)} bytes): "
                f"{_KEY_SIZE_ERROR}"
            )
    return Keyring(decoded)


def render_keyring_file(keyring: Keyring) -> bytes:
    """Return the file bytes the Go agent writes for *keyring*.

    Serf's ``writeKeyringFile`` (serf/serf.go) writes the output of
    ``json.MarshalIndent(keys, "", "  ")`` with ``ioutil.WriteFile``:
    ``[`` newline, each key quoted on its own line indented by two spaces
    and separated by ``,``, then ``]`` with **no trailing newline**.
    Python's ``json.dumps(..., indent=2)`` produces the same bytes for a list
    of base64 strings (none of their characters need escaping).
    """
    return json.dumps([encode_key(key) for key in keyring.keys], indent=2).encode("ascii")


def save_keyring_file(path: str, keyring: Keyring) -> None:
    """Write *keyring* to *path* so a restart (ours or Go's) restores it.

    Unlike Go's ``ioutil.WriteFile`` (which truncates in place, and keeps the
    old mode of an existing file), the new contents go to a 0600 temporary
    file in the same directory, are fsynced and renamed over the target, so
    a crash never leaves a half-written keyring and the file is always
    0600. A symlinked *path* is resolved so the link itself survives.
    An empty keyring is refused: the file could not be loaded again.
    """
    if not keyring:
        raise KeyringError(
            f"Refusing to write an empty keyring to {path}: the file could not be loaded again"
        )
    data = render_keyring_file(keyring)
    target = os.path.realpath(path)
    directory = os.path.dirname(target)
    temporary: str | None = None
    try:
        fd, temporary = tempfile.mkstemp(
            prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=directory
        )
        with os.fdopen(fd, "wb") as handle:
            # mkstemp already uses 0600, but only as masked by the umask.
            os.fchmod(handle.fileno(), 0o600)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
        temporary = None
    except OSError as exc:
        raise KeyringError(f"Failed to write keyring file {path}: {exc.strerror or exc}") from exc
    finally:
        if temporary is not None:
            try:
                os.unlink(temporary)
            except OSError:
                pass
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Persist the rename itself; best effort, as some filesystems refuse it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
