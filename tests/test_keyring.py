"""Tests for :mod:`flyteserf.wire.keyring`: key parsing, the ring, the keyring file.

The error texts are Serf's own where Serf has one, because the ``serf`` CLI
prints what a key query answers; those assertions are exact on purpose.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from flyteserf.wire.crypto import decrypt, encrypt
from flyteserf.wire.errors import DecodeError
from flyteserf.wire.keyring import (
    Keyring,
    KeyringError,
    check_key,
    decode_base64,
    decode_key,
    encode_key,
    load_keyring_file,
    render_keyring_file,
    save_keyring_file,
)

K1 = bytes(range(0x00, 0x10))
K2 = bytes(range(0x10, 0x20))
K3 = bytes(range(0x20, 0x40))
K24 = bytes(range(0x40, 0x58))
K1_B64 = "AAECAwQFBgcICQoLDA0ODw=="
K2_B64 = "EBESExQVFhcYGRobHB0eHw=="
K3_B64 = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="

# §6.3: nack sealed with K3, join intent sealed with K1.
NACK_WIRE = bytes.fromhex(
    "01745dd928048ce50354631f5cf223a18c3848280a5abf088526195f7cd5bc3164bc38a19039"
)
NACK_PLAIN = bytes.fromhex("0b81a55365714e6f16")
JOIN_WIRE = bytes.fromhex(
    "017f71f54e7cd777bc4499f863f2f3a6a03707476d92892bacebbadb8ce507a9fd3c7e"
    "0138e35a2dd82374ef234c295e45a909"
)
JOIN_PLAIN = bytes.fromhex("0c139aa55a080182a54c54696d6501a44e6f6465a162")

KEY_SIZE_ERROR = "key size must be 16, 24 or 32 bytes"


class KeyParsingTests(unittest.TestCase):
    """Keys as the CLI and the keyring file spell them: standard padded base64."""

    def test_check_key(self) -> None:
        for key in (K1, K24, K3):
            self.assertEqual(check_key(key), key)
        # Bytes-like keys are accepted at runtime and stored as bytes.
        self.assertEqual(check_key(bytearray(K1)), K1)  # type: ignore[arg-type]
        self.assertIsInstance(check_key(bytearray(K1)), bytes)  # type: ignore[arg-type]
        for size in (0, 1, 15, 17, 23, 25, 31, 33, 64):
            exc = self.assertRaises(KeyringError, check_key, b"k" * size)
            self.assertEqual(str(exc), KEY_SIZE_ERROR)

    def test_decode_key(self) -> None:
        self.assertEqual(decode_key(K1_B64), K1)
        self.assertEqual(decode_key(K2_B64), K2)
        self.assertEqual(decode_key(K3_B64), K3)
        self.assertEqual(decode_key(encode_key(K24)), K24)

    def test_encode_key(self) -> None:
        self.assertEqual(encode_key(K1), K1_B64)
        self.assertEqual(encode_key(K3), K3_B64)

    def test_decode_key_size(self) -> None:
        too_short = base64.b64encode(b"k" * 15).decode()
        too_long = base64.b64encode(b"k" * 33).decode()
        for text in ("", "AAAA", too_short, too_long):
            exc = self.assertRaises(KeyringError, decode_key, text)
            self.assertEqual(str(exc), KEY_SIZE_ERROR)

    def test_go_offsets(self) -> None:
        """Each bad input reports the byte offset Go's StdEncoding.DecodeString reports."""
        cases = {
            "AAECAwQFBgcICQoLDA0ODw": 20,  # missing padding: the start of the partial quantum
            "AAECAwQFBgcICQoLDA0ODw=": 23,  # one "=" of two: the end of the input
            "AAECAwQFBgcICQoLDA0ODw=x": 22,  # second pad char wrong: the first "="
            "AAECAwQFBgcICQoLDA0ODw==A": 24,  # trailing garbage after the padding
            "AAECAwQFBgcICQoLDA0ODw==\nA": 25,  # newlines skipped before the garbage
            "AAEC!wQFBgcICQoLDA0ODw==": 4,  # first character outside the alphabet
            "AAECAwQFBgcICQoLDA0OD-==": 21,  # URL-safe alphabet is not accepted
            "AAECAwQFBgcICQoLDA0ODw== ": 24,  # spaces are not skipped
            " AAECAwQFBgcICQoLDA0ODw==": 0,
            "=AAA": 0,  # padding at the start of a quantum
            "A===": 1,  # padding after one character
            "AA==AA==": 4,  # data after the padding
            "AAAA====": 4,
            "AAAA=": 4,  # Python's strict mode accepts this; Go does not
            "A": 0,
            "AAA": 0,  # Go reports si - j: the start of the short quantum
            "AAAAA": 4,
            "AAAA\nA": 5,  # newlines do not count toward the quantum, but do shift si
            "é": 0,
            "AAé=": 2,
        }
        for text, offset in cases.items():
            exc = self.assertRaises(KeyringError, decode_base64, text)
            self.assertEqual(str(exc), f"illegal base64 data at input byte {offset}", repr(text))
            exc = self.assertRaises(KeyringError, decode_key, text)
            self.assertEqual(str(exc), f"illegal base64 data at input byte {offset}", repr(text))

    def test_go_leniency(self) -> None:
        """What Go's non-strict decoder accepts: CR/LF anywhere, non-zero trailing bits."""
        self.assertEqual(decode_base64(""), b"")
        self.assertEqual(decode_key(K1_B64 + "\n"), K1)
        self.assertEqual(decode_key(K1_B64 + "\r\n\r\n"), K1)
        self.assertEqual(decode_key("AAEC\nAwQF\r\nBgcICQoLDA0ODw=\n="), K1)
        self.assertEqual(decode_key("\n" + K1_B64), K1)
        self.assertEqual(decode_base64("AB=="), b"\x00")
        self.assertEqual(decode_base64("AAB="), b"\x00\x00")
        self.assertEqual(decode_base64("\n"), b"")

    @given(st.binary(max_size=64))
    def test_base64_round_trip(self, raw: bytes) -> None:
        self.assertEqual(decode_base64(base64.b64encode(raw).decode("ascii")), raw)

    @given(st.text(alphabet="AB+/=\n\r-_ é", max_size=30) | st.text(max_size=30))
    def test_base64_agrees_with_strict_python(self, text: str) -> None:
        """Go's decoder is Python's strict one once CR/LF are removed; only KeyringError escapes.

        The one difference: Python's strict mode accepts stray "=" after a
        complete quantum ("AAAA="); Go reports it at the first "=".
        """
        try:
            ours: bytes | None = decode_base64(text)
        except KeyringError as exc:
            self.assertRegex(str(exc), r"^illegal base64 data at input byte \d+$")
            ours = None
        stripped = text.replace("\n", "").replace("\r", "")
        try:
            strict: bytes | None = binascii.a2b_base64(stripped.encode("utf-8"), strict_mode=True)
        except (binascii.Error, ValueError):
            strict = None
        if ours is None and strict is not None:
            self.assertTrue(stripped.endswith("="))
            self.assertEqual(len(stripped.rstrip("=")) % 4, 0)
        else:
            self.assertEqual(ours, strict)


class KeyringTests(unittest.TestCase):
    """The ring's order and memberlist's rules for install, use and remove."""

    def test_empty(self) -> None:
        ring = Keyring()
        self.assertEqual(len(ring), 0)
        self.assertFalse(ring)
        self.assertIsNone(ring.primary_key)
        self.assertEqual(ring.keys, ())

    def test_non_empty_is_true(self) -> None:
        self.assertTrue(Keyring([K1]))

    def test_first_key_is_primary(self) -> None:
        ring = Keyring([K1, K2])
        self.assertEqual(ring.primary_key, K1)
        self.assertEqual(ring.keys, (K1, K2))
        self.assertEqual(len(ring), 2)

    def test_explicit_primary(self) -> None:
        ring = Keyring([K1, K2, K3], primary=K2)
        self.assertEqual(ring.keys, (K2, K1, K3))
        self.assertEqual(Keyring(primary=K3).keys, (K3,))

    def test_duplicates_dropped(self) -> None:
        self.assertEqual(Keyring([K1, K2, K1, K2]).keys, (K1, K2))

    def test_constructor_validates(self) -> None:
        exc = self.assertRaises(KeyringError, Keyring, [K1, b"short"])
        self.assertEqual(str(exc), KEY_SIZE_ERROR)
        self.assertRaises(KeyringError, Keyring, [], b"short")

    def test_keys_is_a_snapshot(self) -> None:
        ring = Keyring([K1])
        keys = ring.keys
        ring.add_key(K2)
        self.assertEqual(keys, (K1,))
        self.assertIsInstance(ring.keys, tuple)

    def test_add_key(self) -> None:
        ring = Keyring()
        ring.add_key(K1)
        self.assertEqual(ring.primary_key, K1)
        ring.add_key(K2)
        ring.add_key(K3)
        self.assertEqual(ring.keys, (K1, K2, K3))
        ring.add_key(K2)  # already installed: no-op
        self.assertEqual(ring.keys, (K1, K2, K3))
        ring.add_key(bytearray(K24))  # type: ignore[arg-type]
        self.assertEqual(ring.keys, (K1, K2, K3, K24))
        self.assertIsInstance(ring.keys[3], bytes)

    def test_add_key_validates(self) -> None:
        ring = Keyring([K1])
        exc = self.assertRaises(KeyringError, ring.add_key, b"x" * 20)
        self.assertEqual(str(exc), KEY_SIZE_ERROR)
        self.assertEqual(ring.keys, (K1,))

    def test_use_key(self) -> None:
        ring = Keyring([K1, K2, K3])
        ring.use_key(K3)
        self.assertEqual(ring.keys, (K3, K1, K2))
        ring.use_key(K2)
        self.assertEqual(ring.keys, (K2, K3, K1))
        ring.use_key(K2)
        self.assertEqual(ring.keys, (K2, K3, K1))

    def test_use_absent_key(self) -> None:
        ring = Keyring([K1])
        exc = self.assertRaises(KeyringError, ring.use_key, K2)
        self.assertEqual(str(exc), "Requested key is not in the keyring")
        exc = self.assertRaises(KeyringError, Keyring().use_key, K2)
        self.assertEqual(str(exc), "Requested key is not in the keyring")
        self.assertEqual(ring.keys, (K1,))

    def test_remove_key(self) -> None:
        ring = Keyring([K1, K2, K3])
        ring.remove_key(K2)
        self.assertEqual(ring.keys, (K1, K3))
        ring.remove_key(K2)  # absent: no-op
        self.assertEqual(ring.keys, (K1, K3))
        ring.remove_key(b"not even a valid key")
        self.assertEqual(ring.keys, (K1, K3))
        Keyring().remove_key(K1)

    def test_remove_primary(self) -> None:
        ring = Keyring([K1, K2])
        exc = self.assertRaises(KeyringError, ring.remove_key, K1)
        self.assertEqual(str(exc), "Removing the primary key is not allowed")
        self.assertEqual(ring.keys, (K1, K2))
        ring.use_key(K2)
        ring.remove_key(K1)
        self.assertEqual(ring.keys, (K2,))

    def test_contains(self) -> None:
        ring = Keyring([K1])
        self.assertIn(K1, ring)
        self.assertIn(bytearray(K1), ring)
        self.assertNotIn(K2, ring)
        self.assertNotIn("AAECAwQFBgcICQoLDA0ODw==", ring)

    def test_repr_hides_keys(self) -> None:
        text = repr(Keyring([K1, K2]))
        self.assertIn("2", text)
        self.assertNotIn(K1_B64, text)
        self.assertNotIn(K1.hex(), text)
        self.assertNotIn(repr(K1), text)

    def test_decrypt_tries_every_key(self) -> None:
        ring = Keyring([K1, K2, K3])
        self.assertEqual(ring.decrypt(NACK_WIRE), NACK_PLAIN)
        self.assertEqual(ring.decrypt(JOIN_WIRE), JOIN_PLAIN)
        self.assertRaises(DecodeError, Keyring([K2]).decrypt, NACK_WIRE)

    def test_decrypt_empty_ring(self) -> None:
        self.assertRaises(DecodeError, Keyring().decrypt, JOIN_WIRE)

    def test_encrypt_uses_primary(self) -> None:
        ring = Keyring([K2, K1])
        blob = ring.encrypt(b"hello", b"aad")
        self.assertEqual(decrypt(K2, blob, b"aad"), b"hello")
        self.assertRaises(DecodeError, decrypt, K1, blob, b"aad")
        ring.use_key(K1)
        blob = ring.encrypt(b"hello")
        self.assertEqual(decrypt(K1, blob), b"hello")
        self.assertEqual(ring.decrypt(blob), b"hello")

    def test_encrypt_version_zero(self) -> None:
        ring = Keyring([K1])
        blob = ring.encrypt(b"old", version=0)
        self.assertEqual(blob[0], 0)
        self.assertEqual(ring.decrypt(blob), b"old")

    def test_encrypt_empty_ring(self) -> None:
        exc = self.assertRaises(KeyringError, Keyring().encrypt, b"x")
        self.assertIn("encryption is not enabled", str(exc))
        self.assertRaises(KeyringError, Keyring().encrypt_stream, b"x")

    def test_stream(self) -> None:
        ring = Keyring([K3, K1])
        framed = ring.encrypt_stream(b"\x06state")
        self.assertEqual(ring.decrypt_stream(framed[:5], framed[5:]), b"\x06state")
        self.assertEqual(Keyring([K1, K3]).decrypt_stream(framed[:5], framed[5:]), b"\x06state")
        self.assertRaises(DecodeError, Keyring([K1]).decrypt_stream, framed[:5], framed[5:])

    def test_interop_with_crypto(self) -> None:
        blob = encrypt(K24, b"x")
        self.assertEqual(Keyring([K1, K24]).decrypt(blob), b"x")


class KeyringFileTests(unittest.TestCase):
    """``-keyring-file``: a JSON array of base64 keys, primary first, mode 0600."""

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "keyring.json")

    def write(self, data: bytes | str) -> None:
        """Put raw bytes in the keyring file, as an operator would."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        with open(self.path, "wb") as handle:
            handle.write(data)

    def read(self) -> bytes:
        with open(self.path, "rb") as handle:
            return handle.read()

    def assertLoadError(self, expected: str) -> KeyringError:
        """Loading fails with a one-line message naming the file and containing *expected*."""
        exc: KeyringError = self.assertRaises(KeyringError, load_keyring_file, self.path)
        message = str(exc)
        self.assertIn(expected, message)
        self.assertIn(self.path, message)
        self.assertNotIn("\n", message)
        return exc

    def test_load_spec_example(self) -> None:
        self.write('["AAECAwQFBgcICQoLDA0ODw==", "EBESExQVFhcYGRobHB0eHw=="]')
        ring = load_keyring_file(self.path)
        self.assertEqual(ring.keys, (K1, K2))
        self.assertEqual(ring.primary_key, K1)

    def test_load_drops_duplicates(self) -> None:
        self.write(json.dumps([K2_B64, K1_B64, K2_B64]))
        self.assertEqual(load_keyring_file(self.path).keys, (K2, K1))

    def test_exact_bytes(self) -> None:
        """Byte for byte Go's json.MarshalIndent(keys, "", "  "): no trailing newline."""
        save_keyring_file(self.path, Keyring([K1, K2, K3]))
        self.assertEqual(
            self.read(),
            b'[\n  "AAECAwQFBgcICQoLDA0ODw==",\n  "EBESExQVFhcYGRobHB0eHw==",\n'
            b'  "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="\n]',
        )
        save_keyring_file(self.path, Keyring([K1]))
        self.assertEqual(self.read(), b'[\n  "AAECAwQFBgcICQoLDA0ODw=="\n]')
        self.assertEqual(render_keyring_file(Keyring([K2])), b'[\n  "EBESExQVFhcYGRobHB0eHw=="\n]')

    def test_round_trip_in_ring_order(self) -> None:
        ring = Keyring([K1, K2, K3, K24])
        ring.use_key(K3)
        save_keyring_file(self.path, ring)
        loaded = load_keyring_file(self.path)
        self.assertEqual(loaded.keys, (K3, K1, K2, K24))
        self.assertEqual(loaded.primary_key, K3)

    def test_mode_0600(self) -> None:
        old = os.umask(0)
        try:
            save_keyring_file(self.path, Keyring([K1]))
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_mode_0600_despite_strict_umask(self) -> None:
        old = os.umask(0o777)
        try:
            save_keyring_file(self.path, Keyring([K1]))
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_existing_file_becomes_0600(self) -> None:
        self.write("[]")
        os.chmod(self.path, 0o644)
        save_keyring_file(self.path, Keyring([K1]))
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual(load_keyring_file(self.path).keys, (K1,))

    def test_atomic_replace_leaves_no_temporary(self) -> None:
        self.write("[]")
        inode = os.stat(self.path).st_ino
        save_keyring_file(self.path, Keyring([K1, K2]))
        self.assertEqual(os.listdir(self.directory), ["keyring.json"])
        # A new file was renamed into place rather than the old one rewritten.
        self.assertNotEqual(os.stat(self.path).st_ino, inode)

    def test_symlink_kept(self) -> None:
        real = os.path.join(self.directory, "real.json")
        link = os.path.join(self.directory, "link.json")
        save_keyring_file(real, Keyring([K1]))
        os.symlink("real.json", link)  # relative to the link's own directory
        save_keyring_file(link, Keyring([K2, K1]))
        self.assertTrue(os.path.islink(link))
        self.assertEqual(load_keyring_file(real).keys, (K2, K1))

    def test_save_empty_refused(self) -> None:
        exc = self.assertRaises(KeyringError, save_keyring_file, self.path, Keyring())
        self.assertIn(self.path, str(exc))
        self.assertFalse(os.path.exists(self.path))

    def test_save_into_missing_directory(self) -> None:
        path = os.path.join(self.directory, "missing", "keyring.json")
        exc = self.assertRaises(KeyringError, save_keyring_file, path, Keyring([K1]))
        self.assertIn("Failed to write keyring file", str(exc))
        self.assertIn(path, str(exc))
        self.assertNotIn("\n", str(exc))

    def test_failed_save_cleans_up(self) -> None:
        """If the rename fails the temporary file is removed and the old file kept."""
        os.makedirs(self.path)  # a directory where the file should be: replace fails
        exc = self.assertRaises(KeyringError, save_keyring_file, self.path, Keyring([K1]))
        self.assertIn("Failed to write keyring file", str(exc))
        self.assertEqual(os.listdir(self.directory), ["keyring.json"])

    def test_missing_file(self) -> None:
        self.assertLoadError("does not exist")

    def test_unreadable_file(self) -> None:
        os.makedirs(self.path)
        self.assertLoadError("Failed to read keyring file")

    def test_permission_denied(self) -> None:
        if os.geteuid() == 0:
            raise unittest.SkipTest("root can read a mode 000 file")
        self.write("[]")
        os.chmod(self.path, 0)
        self.assertLoadError("Failed to read keyring file")

    def test_not_json(self) -> None:
        for data in ("", "not json", "[", "['AAECAwQFBgcICQoLDA0ODw==']", '["a",]'):
            self.write(data)
            self.assertLoadError("Failed to decode keyring file")

    def test_not_utf8(self) -> None:
        self.write(b'["\xff\xfe"]')
        self.assertLoadError("Failed to decode keyring file")

    def test_deeply_nested(self) -> None:
        self.write("[" * 100000 + "]" * 100000)
        self.assertLoadError("Failed to decode keyring file")

    def test_not_a_list(self) -> None:
        for data, kind in (
            ('{"keys": []}', "an object"),
            (json.dumps(K1_B64), "a string"),
            ("42", "a number"),
            ("true", "a boolean"),
        ):
            self.write(data)
            self.assertLoadError(f"expected a JSON array of base64 keys, found {kind}")

    def test_not_strings(self) -> None:
        for data, kind in (
            (f'["{K1_B64}", 42]', "key #2 is a number"),
            ("[null]", "key #1 is null"),
            (f'[["{K1_B64}"]]', "key #1 is an array"),
            (f'[{{"key": "{K1_B64}"}}]', "key #1 is an object"),
        ):
            self.write(data)
            self.assertLoadError(kind)

    def test_no_keys(self) -> None:
        for data in ("[]", " [ ] \n", "null"):
            self.write(data)
            self.assertLoadError("Keyring file contains no keys")

    def test_bad_base64(self) -> None:
        self.write(json.dumps([K1_B64, "AAE!AwQFBgcICQoLDA0ODw=="]))
        exc = self.assertLoadError("illegal base64 data at input byte 3")
        self.assertIn("key #2", str(exc))
        self.assertIn("Failed to decode key from keyring", str(exc))

    def test_bad_base64_before_size(self) -> None:
        """Go decodes every key before checking any size, so base64 errors win."""
        self.write(json.dumps(["AAAA", "AAECAwQFBgcICQoLDA0ODw="]))
        self.assertLoadError("illegal base64 data at input byte 23")

    def test_bad_size(self) -> None:
        self.write(json.dumps([K1_B64, base64.b64encode(b"k" * 20).decode()]))
        exc = self.assertLoadError(KEY_SIZE_ERROR)
        self.assertIn("key #2", str(exc))
        self.assertIn("20 bytes", str(exc))

    def test_empty_string_key(self) -> None:
        self.write('[""]')
        self.assertLoadError(KEY_SIZE_ERROR)

    def test_newlines_in_key_accepted(self) -> None:
        """Go's decoder skips CR/LF, so the agent accepts them; so do we."""
        self.write(json.dumps([K1_B64 + "\n"]))
        self.assertEqual(load_keyring_file(self.path).keys, (K1,))

    @given(st.binary(max_size=80) | st.text(max_size=80).map(lambda t: t.encode("utf-8")))
    def test_garbage_file(self, data: bytes) -> None:
        """Whatever the file holds, loading returns a keyring or raises KeyringError."""
        self.write(data)
        try:
            ring = load_keyring_file(self.path)
        except KeyringError as exc:
            self.assertNotIn("\n", str(exc))
        else:
            self.assertTrue(ring)

    @given(st.lists(st.sampled_from([K1, K2, K3, K24]), min_size=1, max_size=6))
    def test_round_trip_property(self, keys: list[bytes]) -> None:
        ring = Keyring(keys)
        save_keyring_file(self.path, ring)
        self.assertEqual(load_keyring_file(self.path).keys, ring.keys)
        self.assertEqual(json.loads(self.read()), [encode_key(key) for key in ring.keys])
