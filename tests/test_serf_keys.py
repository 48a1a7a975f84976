# mypy: disable-error-code="no-untyped-call"
"""Key rotation across a cluster through internal queries (spec §3.8, §3.13)."""

from __future__ import annotations

import json
import os

from twisted.python.failure import Failure
from twisted.trial import unittest

from flyteserf.serf.keymanager import KeyQueryError, KeyResponse
from flyteserf.serf.query import QueryParam
from flyteserf.wire.keyring import Keyring, encode_key, load_keyring_file, save_keyring_file
from flyteserf.wire.serf_messages import KeyRequest, KeyResponse as KeyResponseMessage
from tests.test_serf_cluster import SerfCluster

K1 = bytes(range(16))
K2 = bytes(range(16, 32))
K3 = bytes(range(32, 64))
NAMES = ("n0", "n1", "n2", "n3", "n4")


def key_error(f: Failure) -> KeyQueryError:
    assert isinstance(f.value, KeyQueryError), f
    return f.value


class KeyRotationTests(unittest.TestCase):
    def setUp(self) -> None:
        self.c = SerfCluster(self)
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        for i, name in enumerate(NAMES):
            path = os.path.join(self.dir, f"{name}.keyring")
            save_keyring_file(path, Keyring([K1]))
            self.c.add(name, keyring=load_keyring_file(path), keyring_file=path)
        for name in NAMES[1:]:
            self.c.result(self.c.nodes[name].join([self.c.ips["n0"]]))
        self.c.until(lambda: self.c.converged())
        self.km = self.c.nodes["n0"].key_manager()

    def keyrings(self) -> list[tuple[bytes, ...]]:
        return [n.keyring.keys for n in self.c.nodes.values()]  # type: ignore[union-attr]

    def files(self) -> list[list[str]]:
        out = []
        for name in NAMES:
            with open(os.path.join(self.dir, f"{name}.keyring")) as f:
                out.append(json.load(f))
        return out

    def test_full_rotation(self) -> None:
        start = self.c.now()
        r = self.c.result(self.km.install_key(encode_key(K2)))
        # Everyone answered, so it ended well before the 3.2 s deadline.
        self.assertLess(self.c.now() - start, 3.0)
        self.assertEqual((r.num_nodes, r.num_resp, r.num_err, r.messages), (5, 5, 0, {}))
        self.assertEqual(self.keyrings(), [(K1, K2)] * 5)
        self.assertEqual(self.files(), [[encode_key(K1), encode_key(K2)]] * 5)

        listed = self.c.result(self.km.list_keys())
        self.assertEqual(listed.keys, {encode_key(K1): 5, encode_key(K2): 5})
        self.assertEqual(listed.primary_keys, {encode_key(K1): 5})

        self.c.result(self.km.use_key(encode_key(K2)))
        self.assertEqual(self.keyrings(), [(K2, K1)] * 5)
        self.assertEqual(self.files(), [[encode_key(K2), encode_key(K1)]] * 5)
        # The cluster still talks: gossip is now sealed with K2.
        self.c.nodes["n3"].user_event("after-use", b"", coalesce=False)
        self.c.until(lambda: all(any(e.name == "after-use" for e in self.c.user_events(n)) for n in NAMES))

        self.c.result(self.km.remove_key(encode_key(K1)))
        self.assertEqual(self.keyrings(), [(K2,)] * 5)
        self.assertEqual(self.files(), [[encode_key(K2)]] * 5)
        self.c.nodes["n1"].user_event("after-remove", b"", coalesce=False)
        self.c.until(lambda: all(any(e.name == "after-remove" for e in self.c.user_events(n)) for n in NAMES))
        self.assertTrue(self.c.converged())
        # Internal queries never reach the event sink.
        self.assertEqual([q.name for n in NAMES for q in self.c.queries(n)], [])

    def test_failures_reported_per_node(self) -> None:
        f = self.c.failure(self.km.remove_key(encode_key(K1)))
        err = f.value
        self.assertIsInstance(err, KeyQueryError)
        self.assertEqual(str(err), "5/5 nodes reported failure")
        assert isinstance(err, KeyQueryError)
        self.assertEqual(err.response.messages, {n: "Removing the primary key is not allowed" for n in NAMES})
        f = self.c.failure(self.km.use_key(encode_key(K3)))
        self.assertEqual(key_error(f).response.messages["n2"], "Requested key is not in the keyring")
        f = self.c.failure(self.km.install_key(encode_key(b"short")))
        self.assertEqual(key_error(f).response.messages["n4"], "key size must be 16, 24 or 32 bytes")

    def test_bad_base64(self) -> None:
        f = self.c.failure(self.km.install_key("not base64!"))
        self.assertEqual(str(f.value), "illegal base64 data at input byte 3")
        self.assertEqual(key_error(f).response, KeyResponse())

    def test_missing_node_reports_partial_success(self) -> None:
        self.c.kill("n4")
        f = self.c.failure(self.km.list_keys())
        self.assertEqual(str(f.value), "4/5 nodes reported success")

    def test_list_response_truncated_to_fit(self) -> None:
        node = self.c.nodes["n1"]
        assert node.keyring is not None
        for i in range(60):
            node.keyring.add_key(bytes([i]) * 32)
        f = self.c.result(self.c.nodes["n0"].query("_serf_list-keys", KeyRequest().encode(), QueryParam()).when_done())
        payload = next(x.payload for x in f.responses if x.from_ == "n1")
        response = KeyResponseMessage.unpack(payload[1:])
        self.assertTrue(response.result)
        self.assertLess(len(response.keys), 61)
        self.assertEqual(response.message, f"truncated key list response, showing first {len(response.keys)} of 61 keys")


class NoEncryptionTests(unittest.TestCase):
    def test_key_queries_without_keyring(self) -> None:
        c = SerfCluster(self)
        a, b = c.cluster("a", "b")
        f = c.failure(a.key_manager().install_key(encode_key(K1)))
        self.assertEqual(str(f.value), "2/2 nodes reported failure")
        self.assertEqual(key_error(f).response.messages, {"a": "No keyring to modify (encryption not enabled)", "b": "No keyring to modify (encryption not enabled)"})
        f = c.failure(a.key_manager().list_keys())
        self.assertEqual(set(key_error(f).response.messages.values()), {"Keyring is empty (encryption not enabled)"})
        self.assertEqual(a.stats()["encrypted"], "false")

    def test_internal_query_names(self) -> None:
        c = SerfCluster(self)
        (a,) = c.cluster("a")
        r = a.query("_serf_ping", b"", QueryParam(request_ack=True))
        c.result(r.when_done())
        self.assertEqual((r.acks, r.responses), (["a"], []))
        self.assertEqual(c.queries("a"), [])
