# mypy: disable-error-code="no-untyped-call"
"""Serf's event filter grammar (spec §5.3), shared by event handlers and RPC ``stream``."""

from __future__ import annotations

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from flyteserf.agent.filters import (
    EVENT_KINDS,
    EventFilter,
    FilterClause,
    handler_key,
    handler_keys,
    parse_event_filters,
)
from flyteserf.serf.events import EventType, Member, MemberEvent, UserEvent

MEMBER_TYPES = [t for t in EventType if t.value.startswith("member-")]


class FakeQuery:
    """Duck-typed like IncomingQuery: a ``type`` and a ``name``."""

    type = EventType.QUERY

    def __init__(self, name: str) -> None:
        self.name = name


def member_event(etype: EventType) -> MemberEvent:
    return MemberEvent(etype, (Member("a", "127.0.0.1", 7946),))


def user(name: str) -> UserEvent:
    return UserEvent(ltime=1, name=name, payload=b"", coalesce=False)


class ParseTests(SynchronousTestCase):
    def test_empty_is_star(self) -> None:
        f = parse_event_filters("")
        self.assertEqual(f.clauses, (FilterClause("*"),))
        self.assertEqual(str(f), "*")

    def test_every_kind(self) -> None:
        for kind in EVENT_KINDS:
            self.assertEqual(parse_event_filters(kind).clauses, (FilterClause(kind),))

    def test_named(self) -> None:
        f = parse_event_filters("user:deploy,query:load,member-join")
        self.assertEqual(
            f.clauses,
            (FilterClause("user", "deploy"), FilterClause("query", "load"), FilterClause("member-join")),
        )
        self.assertEqual(str(f), "user:deploy,query:load,member-join")

    def test_empty_name_is_any_name(self) -> None:
        self.assertEqual(parse_event_filters("user:").clauses, (FilterClause("user"),))
        self.assertEqual(str(parse_event_filters("query:")), "query")

    def test_name_keeps_colons(self) -> None:
        self.assertEqual(parse_event_filters("user:a:b").clauses, (FilterClause("user", "a:b"),))

    def test_invalid(self) -> None:
        for bad in ["bogus", "member-join,", ",", " user", "user ,query", "member-join:x", "*:x", "USER", "members"]:
            with self.assertRaises(ValueError) as ctx:
                parse_event_filters(bad)
            self.assertTrue(str(ctx.exception).startswith("Invalid event filter: "), str(ctx.exception))

    def test_clause_validation(self) -> None:
        self.assertRaises(ValueError, FilterClause, "nope")
        self.assertRaises(ValueError, FilterClause, "member-join", "x")
        self.assertRaises(ValueError, EventFilter, [])

    @given(st.lists(st.sampled_from(["member-join", "member-leave", "member-failed", "member-update",
                                     "member-reap", "user", "query", "*", "user:x", "query:y:z"]), min_size=1))
    def test_canonical_round_trip(self, parts: list[str]) -> None:
        f = parse_event_filters(",".join(parts))
        self.assertEqual(parse_event_filters(str(f)), f)


class MatchTests(SynchronousTestCase):
    def test_star_matches_everything(self) -> None:
        f = parse_event_filters("*")
        for t in MEMBER_TYPES:
            self.assertTrue(f.matches(member_event(t)))
        self.assertTrue(f.matches(user("x")))
        self.assertTrue(f.matches(FakeQuery("q")))

    def test_member_kinds(self) -> None:
        for t in MEMBER_TYPES:
            f = parse_event_filters(t.value)
            for other in MEMBER_TYPES:
                self.assertEqual(f.matches(member_event(other)), other is t)
            self.assertFalse(f.matches(user("x")))
            self.assertFalse(f.matches(FakeQuery("x")))

    def test_user(self) -> None:
        self.assertTrue(parse_event_filters("user").matches(user("deploy")))
        self.assertTrue(parse_event_filters("user:deploy").matches(user("deploy")))
        self.assertFalse(parse_event_filters("user:deploy").matches(user("deploy2")))
        self.assertFalse(parse_event_filters("user:deploy").matches(FakeQuery("deploy")))
        self.assertFalse(parse_event_filters("user").matches(member_event(EventType.MEMBER_JOIN)))

    def test_query(self) -> None:
        self.assertTrue(parse_event_filters("query").matches(FakeQuery("load")))
        self.assertTrue(parse_event_filters("query:load").matches(FakeQuery("load")))
        self.assertFalse(parse_event_filters("query:load").matches(FakeQuery("other")))
        self.assertFalse(parse_event_filters("query").matches(user("load")))

    def test_any_clause(self) -> None:
        f = parse_event_filters("member-join,user:deploy")
        self.assertTrue(f.matches(member_event(EventType.MEMBER_JOIN)))
        self.assertTrue(f.matches(user("deploy")))
        self.assertFalse(f.matches(user("other")))
        self.assertFalse(f.matches(member_event(EventType.MEMBER_LEAVE)))

    def test_string_type_and_untyped(self) -> None:
        class Plain:
            type = "user"
            name = "deploy"

        self.assertTrue(parse_event_filters("user:deploy").matches(Plain()))
        self.assertFalse(parse_event_filters("user").matches(object()))
        self.assertTrue(parse_event_filters("*").matches(object()))


class HandlerKeyTests(SynchronousTestCase):
    def test_keys(self) -> None:
        self.assertEqual(handler_key(parse_event_filters("")), "*:")
        self.assertEqual(handler_key(parse_event_filters("user:deploy")), "user:deploy")
        self.assertEqual(handler_key(parse_event_filters("user")), "user:")
        self.assertEqual(handler_key(FilterClause("member-join")), "member-join:")
        self.assertEqual(handler_keys(parse_event_filters("member-join,query:q")), ["member-join:", "query:q"])
        self.assertRaises(ValueError, handler_key, parse_event_filters("member-join,user"))
