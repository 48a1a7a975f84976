# mypy: disable-error-code="no-untyped-call"
"""Queries in virtual time: timeouts, acks, responses, relays, filters, respond errors (spec §3.7)."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from flyteserf.serf.errors import RespondError, SerfError
from flyteserf.serf.events import Event
from flyteserf.serf.query import IncomingQuery, NodeResponse, QueryParam, should_process
from flyteserf.serf.serf import Serf
from flyteserf.wire.messages import ip_to_wire
from flyteserf.wire.serf_messages import (
    Query,
    QueryResponse as QueryResponseMessage,
    RelayHeader,
    UDPAddr,
    decode_relay,
    encode_node_filter,
    encode_relay,
    encode_tag_filter,
)
from tests.test_serf_cluster import PORT, SerfCluster, ip, record_queued, record_sent


def answer_with(node: Serf, payload: bytes | None = None) -> list[IncomingQuery]:
    """Make *node* answer every query with *payload* (default: its name)."""
    seen: list[IncomingQuery] = []
    previous = node.on_event

    def handle(event: Event) -> None:
        if isinstance(event, IncomingQuery):
            seen.append(event)
            event.respond(node.node_name.encode() if payload is None else payload)
        if previous is not None:
            previous(event)

    node.on_event = handle
    return seen


class DefaultTimeoutTests(unittest.TestCase):
    def test_formula(self) -> None:
        c = SerfCluster(self)
        nodes = c.cluster("a", "b", "d")
        # 0.2 s × 16 × ceil(log10(3 + 1)) = 3.2 s
        self.assertAlmostEqual(nodes[0].default_query_timeout(), 3.2)
        for i in range(7):
            c.add(f"n{i}")
            c.result(c.nodes[f"n{i}"].join([ip(0)]))
        c.until(lambda: nodes[0].num_members() == 10)
        # n = 10: ceil(log10(11)) = 2
        self.assertAlmostEqual(nodes[0].default_query_timeout(), 6.4)

    def test_query_closes_at_timeout(self) -> None:
        c = SerfCluster(self)
        a, b = c.cluster("a", "b")
        r = a.query("q", b"")
        self.assertAlmostEqual(r.timeout, 0.2 * 16 * 1)
        done: list[Any] = []
        r.when_done().addCallback(done.append)
        c.run(3.19)
        self.assertEqual(done, [])
        c.run(0.02)
        self.assertEqual(done, [r])
        self.assertNotIn(r.ltime, a._query_responses)
        # Answers after the end are ignored.
        self.assertFalse(r.add_response("late", b""))

    def test_wire_timeout_in_nanoseconds(self) -> None:
        c = SerfCluster(self)
        a, b = c.cluster("a", "b")
        sent = record_queued(a)
        a.query("q", b"", QueryParam(timeout=1.5))
        query = Query.unpack(sent[-1][1:])
        self.assertEqual(query.timeout, 1_500_000_000)
        self.assertEqual((query.addr, query.port, query.source_node), (ip_to_wire(ip(0)), PORT, "a"))
        self.assertLess(query.id, 2**31)


class AckResponseTests(unittest.TestCase):
    def setUp(self) -> None:
        self.c = SerfCluster(self)
        self.nodes = self.c.cluster("a", "b", "d", "e")
        for node in self.nodes:
            answer_with(node)

    def test_acks_and_responses_from_everyone(self) -> None:
        a = self.nodes[0]
        r = a.query("who", b"?", QueryParam(request_ack=True))
        acks: list[str] = []
        responses: list[NodeResponse] = []
        r.on_ack(acks.append)
        r.on_response(responses.append)
        self.c.result(r.when_done())
        self.assertEqual(sorted(acks), ["a", "b", "d", "e"])
        self.assertEqual(sorted((x.from_, x.payload) for x in responses), [(n, n.encode()) for n in "abde"])
        # Everyone (the origin too) saw the query exactly once.
        for name in "abde":
            self.assertEqual([(q.name, q.payload) for q in self.c.queries(name)], [("who", b"?")])

    def test_listener_gets_earlier_arrivals(self) -> None:
        a = self.nodes[0]
        r = a.query("who", b"", QueryParam(request_ack=True))
        self.c.result(r.when_done())
        late: list[str] = []
        r.on_ack(late.append)
        self.assertEqual(sorted(late), ["a", "b", "d", "e"])

    def test_no_acks_unless_requested(self) -> None:
        a = self.nodes[0]
        r = a.query("who", b"")
        self.c.result(r.when_done())
        self.assertEqual(r.acks, [])
        self.assertEqual(len(r.responses), 4)

    def test_early_completion(self) -> None:
        a = self.nodes[0]
        r = a.query("who", b"", QueryParam(finish_when_all_responded=True, timeout=30))
        start = self.c.now()
        self.c.result(r.when_done())
        self.assertLess(self.c.now() - start, 2.0)
        self.assertEqual(len(r.responses), 4)

    def test_duplicate_answers_ignored(self) -> None:
        a = self.nodes[0]
        r = a.query("who", b"", QueryParam(request_ack=True))
        self.c.result(r.when_done())
        self.assertFalse(r.closed and r.add_ack("b"))
        msg = QueryResponseMessage(ltime=r.ltime, id=r.id, from_="b", payload=b"again")
        r2 = a.query("who2", b"", QueryParam(timeout=10))
        a.handle_message(QueryResponseMessage(ltime=r2.ltime, id=r2.id, from_="zz", payload=b"1").encode())
        a.handle_message(QueryResponseMessage(ltime=r2.ltime, id=r2.id, from_="zz", payload=b"2").encode())
        # Wrong ID or an unknown LTime: ignored.
        a.handle_message(QueryResponseMessage(ltime=r2.ltime, id=r2.id ^ 1, from_="yy", payload=b"").encode())
        a.handle_message(msg.encode())
        self.assertEqual([(x.from_, x.payload) for x in r2.responses if x.from_ in ("zz", "yy")], [("zz", b"1")])

    def test_no_broadcast_flag(self) -> None:
        a, b = self.nodes[:2]
        q = Query(ltime=50, id=9, addr=ip_to_wire(ip(0)), port=PORT, source_node="a", name="nb", flags=2, timeout=10**9)
        b.handle_message(q.encode())
        self.assertEqual(b.queues.queries.num_queued(), 0)
        self.assertEqual([x.name for x in self.c.queries("b")], ["nb"])

    def test_feature_not_supported_below_protocol_4(self) -> None:
        c = SerfCluster(self)
        old = c.add("old", protocol=3)
        with self.assertRaises(SerfError) as e:
            old.query("q", b"")
        self.assertEqual(str(e.exception), "Feature not supported")

    def test_query_size_limit(self) -> None:
        with self.assertRaises(SerfError) as e:
            self.nodes[0].query("q", b"x" * 1000)
        self.assertEqual(str(e.exception), "query exceeds limit of 1024 bytes")


class RelayTests(unittest.TestCase):
    def test_relayed_copies_reach_the_origin_and_are_deduplicated(self) -> None:
        c = SerfCluster(self)
        nodes = c.cluster("a", "b", "d", "e", "f")
        outboxes = []
        for node in nodes:
            answer_with(node)
            outboxes.append(record_sent(node))
        a = nodes[0]
        r = a.query("who", b"", QueryParam(request_ack=True, relay_factor=2))
        c.result(r.when_done())
        self.assertEqual(sorted(r.acks), list("abdef"))
        self.assertEqual(sorted(x.from_ for x in r.responses), list("abdef"))
        relayed = [p for outbox in outboxes for p in outbox if p[0] == 9]
        # Each of 5 nodes relays its ack and its response through 2 others.
        self.assertEqual(len(relayed), 5 * 2 * 2)
        header, rest = decode_relay(relayed[0])
        self.assertEqual((header.dest_addr.ip, header.dest_addr.port, header.dest_name), (ip_to_wire(ip(0)), PORT, "a"))
        self.assertEqual(rest[0], 5)

    def test_no_relay_in_tiny_cluster(self) -> None:
        """Relaying needs at least relay_factor + 1 members."""
        c = SerfCluster(self)
        a, b = c.cluster("a", "b")
        sent = record_sent(b)
        answer_with(b)
        c.result(a.query("q", b"", QueryParam(request_ack=True, relay_factor=2)).when_done())
        self.assertEqual([p[0] for p in sent], [5, 5])

    def test_relay_message_forwarded(self) -> None:
        """A type-9 message: the bytes from the 05 on go to DestAddr as they are."""
        c = SerfCluster(self)
        a, b, d = c.cluster("a", "b", "d")
        r = a.query("q", b"", QueryParam(timeout=10))
        inner = QueryResponseMessage(ltime=r.ltime, id=r.id, from_="faraway", payload=b"via relay")
        relay = encode_relay(RelayHeader(dest_addr=UDPAddr(ip=ip_to_wire(ip(0)), port=PORT), dest_name="a"), inner)
        d.handle_message(relay)
        c.run(0.1)
        self.assertIn(NodeResponse("faraway", b"via relay"), r.responses)
        # Relays are never re-gossiped.
        self.assertEqual(d.queues.queries.num_queued(), 0)


class FilterTests(unittest.TestCase):
    def setUp(self) -> None:
        self.c = SerfCluster(self)
        self.c.add("web1", tags={"role": "web", "dc": "east"})
        self.c.add("web2", tags={"role": "frontend-web", "dc": "west"})
        self.c.add("db1", tags={"role": "db"})
        for name in ("web2", "db1"):
            self.c.result(self.c.nodes[name].join([ip(0)]))
        self.c.until(lambda: self.c.converged())
        for node in self.c.nodes.values():
            answer_with(node)

    def ask(self, params: QueryParam) -> tuple[list[str], list[str]]:
        r = self.c.nodes["db1"].query("q", b"", params)
        self.c.result(r.when_done())
        return sorted(r.acks), sorted(x.from_ for x in r.responses)

    def test_node_filter(self) -> None:
        self.assertEqual(self.ask(QueryParam(filter_nodes=("web1", "db1"), request_ack=True)), (["db1", "web1"], ["db1", "web1"]))

    def test_tag_regex_is_unanchored(self) -> None:
        self.assertEqual(self.ask(QueryParam(filter_tags={"role": "web"}, request_ack=True))[1], ["web1", "web2"])
        self.assertEqual(self.ask(QueryParam(filter_tags={"role": "^web$"}))[1], ["web1"])

    def test_filters_are_anded(self) -> None:
        self.assertEqual(self.ask(QueryParam(filter_tags={"role": "web", "dc": "we"}))[1], ["web2"])
        self.assertEqual(self.ask(QueryParam(filter_tags={"role": "web"}, filter_nodes=("web1",)))[1], ["web1"])

    def test_missing_tag_is_empty_string(self) -> None:
        self.assertEqual(self.ask(QueryParam(filter_tags={"dc": "^$"}))[1], ["db1"])

    def test_invalid_regex_means_do_not_process(self) -> None:
        acks, responses = self.ask(QueryParam(filter_tags={"role": "(unclosed"}, request_ack=True))
        self.assertEqual((acks, responses), ([], []))
        # ... but the query still spread: everyone saw it (and dropped it).
        self.assertTrue(all(n.query_clock.time() >= 2 for n in self.c.nodes.values()))

    def test_should_process_unit(self) -> None:
        tags = {"role": "web"}
        self.assertTrue(should_process([], "n", tags))
        self.assertTrue(should_process([encode_node_filter(["x", "n"])], "n", tags))
        self.assertFalse(should_process([encode_node_filter(["x"])], "n", tags))
        self.assertTrue(should_process([encode_tag_filter("role", "w.b")], "n", tags))
        self.assertFalse(should_process([encode_tag_filter("role", "[")], "n", tags))
        self.assertFalse(should_process([b"\x05"], "n", tags))  # unknown filter type
        self.assertFalse(should_process([b"\x00\xc1"], "n", tags))  # undecodable
        # RE2 syntax, as Go's regexp: no backreferences.
        self.assertFalse(should_process([encode_tag_filter("role", r"(w)\1")], "n", tags))


class RespondTests(unittest.TestCase):
    def setUp(self) -> None:
        self.c = SerfCluster(self)
        self.a, self.b = self.c.cluster("a", "b")

    def incoming(self, timeout: float = 10.0) -> tuple[Any, IncomingQuery]:
        r = self.a.query("q", b"", QueryParam(timeout=timeout))
        self.c.until(lambda: self.c.queries("b"))
        return r, self.c.queries("b")[-1]

    def test_respond_once(self) -> None:
        r, q = self.incoming()
        self.assertTrue(q.pending())
        q.respond(b"one")
        self.assertFalse(q.pending())
        with self.assertRaises(RespondError) as e:
            q.respond(b"two")
        self.assertEqual(str(e.exception), "response already sent")
        self.c.run(0.1)
        self.assertEqual([(x.from_, x.payload) for x in r.responses], [("b", b"one")])

    def test_past_deadline(self) -> None:
        r, q = self.incoming(timeout=1.0)
        self.c.run(1.5)
        self.assertFalse(q.pending())
        with self.assertRaises(RespondError) as e:
            q.respond(b"late")
        self.assertEqual(str(e.exception), "response is past the deadline")

    def test_too_large(self) -> None:
        r, q = self.incoming()
        with self.assertRaises(RespondError) as e:
            q.respond(b"x" * 1024)
        self.assertEqual(str(e.exception), "response exceeds limit of 1024 bytes")
        q.respond(b"x" * 900)  # still allowed after a refused attempt

    def test_origin_answers_its_own_query(self) -> None:
        answer_with(self.a)
        r = self.a.query("q", b"")
        self.c.result(r.when_done())
        self.assertEqual([x.from_ for x in r.responses], ["a"])


class QueryParamTests(unittest.SynchronousTestCase):
    def test_filters_encoding(self) -> None:
        params = QueryParam(filter_nodes=["a"], filter_tags={"role": "web"})
        self.assertEqual(params.filter_nodes, ("a",))
        self.assertEqual(params.encode_filters(), (bytes.fromhex("0091a161"), encode_tag_filter("role", "web")))
        self.assertEqual(QueryParam().encode_filters(), ())

    def test_bounds(self) -> None:
        with self.assertRaises(ValueError):
            QueryParam(relay_factor=256)
        with self.assertRaises(ValueError):
            QueryParam(timeout=-1)
