"""AES-GCM sealing of memberlist packets and streams (spec §2.6).

memberlist 0.2.2 (``security.go``) encrypts a whole UDP datagram, or the whole
payload of a TCP stream, into one blob::

    [version:1][nonce:12][ciphertext || tag:16]

* version 1 (what serf sends) seals the plaintext as is: 29 bytes overhead;
* version 0 (old peers) first PKCS#7-pads the plaintext to a multiple of 16
  (a full block when already aligned): up to 45 bytes overhead.

UDP blobs have no additional authenticated data. A TCP stream is framed as
``[0x0a][len:u32be][blob]`` and the 5 header bytes are the AAD, so a peer
cannot tamper with the length without failing authentication.

Everything that comes from the network and is wrong (too short, unknown
version, failed authentication, bad padding, oversized stream) raises
:class:`~flyteserf.wire.errors.DecodeError` and nothing else, so callers drop
bad packets with one ``except``. Mistakes of our own (a key of the wrong size,
an unknown version to send) raise :class:`ValueError`, because they are bugs
or configuration errors rather than hostile input.

The error texts reuse memberlist's wording where it has one ("Payload is too
small to decrypt: N", "Unsupported encryption version N"), so logs read like
the Go agent's.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from flyteserf.wire.errors import DecodeError

__all__ = [
    "BLOCK_SIZE",
    "ENCRYPT_OVERHEAD_V0",
    "ENCRYPT_OVERHEAD_V1",
    "MAX_ENCRYPTION_VERSION",
    "MAX_STREAM_STATE",
    "NONCE_SIZE",
    "STREAM_ENCRYPT_TYPE",
    "STREAM_HEADER_SIZE",
    "TAG_SIZE",
    "check_key_size",
    "decrypt",
    "decrypt_stream",
    "decrypt_with_keys",
    "encrypt",
    "encrypt_stream",
    "encrypted_length",
    "stream_header_length",
]

#: GCM nonce length; memberlist draws a fresh random one for every blob.
NONCE_SIZE = 12
#: GCM authentication tag length.
TAG_SIZE = 16
#: AES block size, the PKCS#7 padding unit of version 0.
BLOCK_SIZE = 16
#: Bytes a version 1 blob adds to its plaintext: version + nonce + tag.
ENCRYPT_OVERHEAD_V1 = 1 + NONCE_SIZE + TAG_SIZE  # 29
#: Largest number of bytes a version 0 blob adds: version + nonce + pad + tag.
ENCRYPT_OVERHEAD_V0 = 1 + NONCE_SIZE + BLOCK_SIZE + TAG_SIZE  # 45
#: The newest blob version memberlist 0.2.2 understands.
MAX_ENCRYPTION_VERSION = 1
#: memberlist's ``maxPushStateBytes``: a stream announcing more is refused
#: before anything is read, so a peer cannot make us buffer gigabytes.
MAX_STREAM_STATE = 20 * 1024 * 1024
#: memberlist's ``encryptMsg`` type byte, the first byte of an encrypted stream.
STREAM_ENCRYPT_TYPE = 10
#: ``[0x0a][len:u32be]``, also the stream's additional authenticated data.
STREAM_HEADER_SIZE = 5

_KEY_SIZES = (16, 24, 32)
_KEY_SIZE_ERROR = "key size must be 16, 24 or 32 bytes"
_U32 = struct.Struct(">I")


def check_key_size(key: bytes) -> None:
    """Refuse a key that is not AES-128/192/256, with memberlist's text.

    A bad key here is our own configuration, not network input, so this is a
    :class:`ValueError` and never a :class:`DecodeError`.
    """
    if len(key) not in _KEY_SIZES:
        raise ValueError(_KEY_SIZE_ERROR)


def encrypted_length(version: int, size: int) -> int:
    """Return the blob length for a *size*-byte plaintext (``encryptedLength``).

    The stream header announces this length before the blob is produced.
    """
    if version >= 1:
        return ENCRYPT_OVERHEAD_V1 + size
    padding = BLOCK_SIZE - size % BLOCK_SIZE
    return 1 + NONCE_SIZE + size + padding + TAG_SIZE


def encrypt(
    key: bytes,
    plaintext: bytes,
    aad: bytes = b"",
    *,
    version: int = 1,
    nonce: bytes | None = None,
) -> bytes:
    """Seal *plaintext* into ``[version][nonce][ciphertext||tag]``.

    *nonce* exists so tests can reproduce captured wire bytes; production
    code must leave it ``None`` (a random nonce) because reusing a GCM nonce
    under one key breaks both secrecy and authenticity.
    """
    check_key_size(key)
    if version not in (0, 1):
        raise ValueError(f"unsupported encryption version {version}: use 0 or 1")
    if nonce is None:
        nonce = os.urandom(NONCE_SIZE)
    elif len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
    message = bytes(plaintext)
    if version == 0:
        pad = BLOCK_SIZE - len(message) % BLOCK_SIZE
        message += bytes((pad,)) * pad
    sealed = AESGCM(bytes(key)).encrypt(bytes(nonce), message, bytes(aad))
    return bytes((version,)) + bytes(nonce) + sealed


def _check_blob(blob: bytes) -> int:
    """Validate the version byte and minimum length; return the version.

    Done once before trying any key, as memberlist's ``decryptPayload`` does.
    """
    if not blob:
        raise DecodeError("Cannot decrypt empty payload")
    version = blob[0]
    if version > MAX_ENCRYPTION_VERSION:
        raise DecodeError(f"Unsupported encryption version {version}")
    if len(blob) < encrypted_length(version, 0):
        raise DecodeError(f"Payload is too small to decrypt: {len(blob)}")
    return version


def _open(key: bytes, blob: bytes, aad: bytes) -> bytes | None:
    """Return the GCM plaintext, or ``None`` when *key* does not authenticate."""
    try:
        return AESGCM(key).decrypt(blob[1 : 1 + NONCE_SIZE], blob[1 + NONCE_SIZE :], aad)
    except InvalidTag:
        return None


def _unpad(plain: bytes) -> bytes:
    """Strip and check version 0's PKCS#7 padding.

    memberlist trusts the last byte blindly (and would panic on a bad one);
    we check every pad byte so a malformed but authentic blob is a clean
    :class:`DecodeError`.
    """
    pad = plain[-1] if plain else 0
    if not 1 <= pad <= BLOCK_SIZE or pad > len(plain):
        raise DecodeError(f"invalid PKCS#7 padding: last byte is {pad}, must be 1..{BLOCK_SIZE}")
    if plain[-pad:] != bytes((pad,)) * pad:
        raise DecodeError(f"invalid PKCS#7 padding: the last {pad} bytes are not all {pad}")
    return plain[:-pad]


def decrypt(key: bytes, blob: bytes, aad: bytes = b"") -> bytes:
    """Open a version 0 or 1 blob sealed with *key*.

    Raises :class:`DecodeError` for anything wrong with *blob*.
    """
    return decrypt_with_keys((key,), blob, aad)


def decrypt_with_keys(keys: Sequence[bytes], blob: bytes, aad: bytes = b"") -> bytes:
    """Open *blob* with the first of *keys* that authenticates it.

    Keys are tried in ring order (primary first), as memberlist does, so a
    cluster keeps talking while a new key is rolled out.
    """
    for key in keys:
        check_key_size(key)
    blob = bytes(blob)
    aad = bytes(aad)
    version = _check_blob(blob)
    for key in keys:
        plain = _open(bytes(key), blob, aad)
        if plain is not None:
            return _unpad(plain) if version == 0 else plain
    if not keys:
        raise DecodeError("no installed key could decrypt the message: no keys are installed")
    raise DecodeError(f"no installed key could decrypt the message (tried {len(keys)} key(s))")


def encrypt_stream(
    key: bytes, plaintext: bytes, *, version: int = 1, nonce: bytes | None = None
) -> bytes:
    """Frame *plaintext* as an encrypted TCP stream: ``0a + u32be(len) + blob``.

    The header is computed first because it is the blob's AAD
    (``encryptLocalState``). *nonce* is for tests only, as in :func:`encrypt`.
    """
    length = encrypted_length(version, len(plaintext))
    header = bytes((STREAM_ENCRYPT_TYPE,)) + _U32.pack(length)
    return header + encrypt(key, plaintext, header, version=version, nonce=nonce)


def stream_header_length(header: bytes) -> int:
    """Validate the 5-byte stream header and return the blob length it announces.

    A stream reader calls this before buffering the body, so an oversized
    announcement is refused without reading it (``decryptRemoteState``).
    """
    if len(header) != STREAM_HEADER_SIZE:
        raise DecodeError(
            f"encrypted stream header must be {STREAM_HEADER_SIZE} bytes, got {len(header)}"
        )
    if header[0] != STREAM_ENCRYPT_TYPE:
        raise DecodeError(
            f"encrypted stream must start with type {STREAM_ENCRYPT_TYPE}, got {header[0]}"
        )
    (length,) = _U32.unpack(bytes(header[1:]))
    if length > MAX_STREAM_STATE:
        raise DecodeError(
            f"remote state is larger than the limit: the stream announces {length} bytes, "
            f"at most {MAX_STREAM_STATE} are accepted"
        )
    return int(length)


def decrypt_stream(keys: Sequence[bytes], header: bytes, blob: bytes) -> bytes:
    """Open the body of an encrypted TCP stream, authenticating its header.

    *blob* must be exactly the number of bytes *header* announced.
    """
    length = stream_header_length(header)
    if len(blob) != length:
        raise DecodeError(
            f"encrypted stream body is {len(blob)} bytes but its header announced {length}"
        )
    return decrypt_with_keys(keys, blob, aad=header)
