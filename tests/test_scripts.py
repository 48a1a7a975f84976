# mypy: disable-error-code="no-untyped-call"
"""Event handler scripts (spec §5.3): spec parsing, environment, stdin, query
responses, per-handler ordering and independence, the slow-script warning,
the queue bound, and a side-by-side check against a real ``serf agent``.

Every test runs real ``/bin/sh`` processes on the real reactor; scripts write
into ``self.mktemp()`` directories and the tests poll with deadlines (no
fixed sleeps).  A script that must stay busy waits for a "release" file the
test creates, so nothing depends on how fast the machine is.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
from typing import Any, Callable, Mapping

from twisted.internet import reactor as _reactor
from twisted.internet import utils
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.internet.testing import EventLoggingObserver
from twisted.trial import unittest

from flyteserf.agent.scripts import (
    MAX_OUTPUT,
    OutputRing,
    ScriptEventSink,
    ScriptHandler,
    ScriptInvoker,
    ScriptResult,
    event_stdin,
    parse_handler_spec,
    script_environment,
    tag_env_name,
)
from flyteserf.serf.events import EventType, Member, MemberEvent, UserEvent
from flyteserf.serf.query import IncomingQuery
from flyteserf.testing.serf_binary import find_serf_binary, start_serf_agent
from flyteserf.wire.serf_messages import QueryResponse as QueryResponseMessage

reactor: Any = _reactor
DEADLINE = 30.0


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


async def poll(check: Callable[[], Any], what: str, deadline: float = DEADLINE, interval: float = 0.02) -> Any:
    """Call *check* until it returns something truthy; fail after *deadline* seconds."""
    end = reactor.seconds() + deadline
    while True:
        result = check()
        if isinstance(result, Deferred):
            result = await result
        if result:
            return result
        if reactor.seconds() > end:
            raise AssertionError(f"not within {deadline:g} s: {what}")
        await sleep(interval)


def write_script(directory: str, name: str, body: str) -> str:
    """An executable ``#!/bin/sh`` script in *directory*; returns its quoted path."""
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return shlex.quote(path)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def exists(path: str) -> bool:
    return os.path.exists(path)


def parse_env0(raw: bytes) -> dict[str, str]:
    env = {}
    for entry in raw.split(b"\0"):
        if entry:
            key, _, value = entry.decode("utf-8", "surrogateescape").partition("=")
            env[key] = value
    return env


def serf_vars(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("SERF_")}


def member_event(etype: EventType, *members: Member) -> MemberEvent:
    return MemberEvent(etype, members)


def user(name: str, payload: bytes = b"", ltime: int = 1) -> UserEvent:
    return UserEvent(ltime=ltime, name=name, payload=payload, coalesce=False)


class RecordingQuery:
    """Duck-typed like IncomingQuery, with no size limit: records what it is sent."""

    type = EventType.QUERY

    def __init__(self, name: str, payload: bytes = b"", ltime: int = 7) -> None:
        self.name = name
        self.payload = payload
        self.ltime = ltime
        self.responses: list[bytes] = []

    def respond(self, payload: bytes) -> None:
        self.responses.append(payload)

    def __str__(self) -> str:
        return f"query: {self.name}"


class FakeResponder:
    """What a real :class:`IncomingQuery` needs from Serf (limit 1024 bytes)."""

    node_name = "me"
    query_response_size_limit = 1024

    def __init__(self) -> None:
        self.sent: list[QueryResponseMessage] = []

    def seconds(self) -> float:
        return float(reactor.seconds())

    def send_query_response(self, query: IncomingQuery, raw: bytes, message: QueryResponseMessage) -> None:
        self.sent.append(message)


def incoming_query(name: str, payload: bytes, responder: FakeResponder, ltime: int = 9) -> IncomingQuery:
    return IncomingQuery(
        ltime=ltime,
        name=name,
        payload=payload,
        id=1234,
        addr=b"\x7f\x00\x00\x01",
        port=7946,
        source_node="origin",
        relay_factor=0,
        deadline=reactor.seconds() + 60,
        responder=responder,
    )


class LogCapture:
    """twisted.logger events, from the global publisher, for one test."""

    def __init__(self, testcase: unittest.TestCase) -> None:
        self.observer = EventLoggingObserver.createWithCleanup(testcase, globalLogPublisher)

    def texts(self, level: LogLevel | None = None) -> list[str]:
        return [
            formatEvent(event)
            for event in self.observer
            if level is None or event.get("log_level") == level
        ]

    def matching(self, text: str, level: LogLevel | None = None) -> list[str]:
        return [line for line in self.texts(level) if text in line]


# -- spec parsing ------------------------------------------------------------------------


class SpecTests(unittest.SynchronousTestCase):
    def test_script_alone_is_every_event(self) -> None:
        handler = parse_handler_spec("/usr/local/bin/handle.sh")
        self.assertEqual(handler.script, "/usr/local/bin/handle.sh")
        self.assertEqual(handler.filter_text, "")
        self.assertEqual(str(handler.filter), "*")
        self.assertEqual(handler.describe(), "Event '*' invoking '/usr/local/bin/handle.sh'")
        for event in (member_event(EventType.MEMBER_REAP), user("x"), RecordingQuery("q")):
            self.assertTrue(handler.matches(event))

    def test_filter_and_script(self) -> None:
        handler = parse_handler_spec("user:deploy,member-join=run.sh arg")
        self.assertEqual(handler.script, "run.sh arg")
        self.assertEqual(handler.filter_text, "user:deploy,member-join")
        self.assertEqual(str(handler), "user:deploy,member-join=run.sh arg")
        self.assertTrue(handler.matches(user("deploy")))
        self.assertFalse(handler.matches(user("other")))
        self.assertTrue(handler.matches(member_event(EventType.MEMBER_JOIN)))
        self.assertFalse(handler.matches(member_event(EventType.MEMBER_LEAVE)))
        self.assertFalse(handler.matches(RecordingQuery("deploy")))

    def test_query_filters(self) -> None:
        self.assertTrue(parse_handler_spec("query:uptime=x").matches(RecordingQuery("uptime")))
        self.assertFalse(parse_handler_spec("query:uptime=x").matches(RecordingQuery("load")))
        # "query:" with no name is every query, as in Serf.
        self.assertTrue(parse_handler_spec("query:=x").matches(RecordingQuery("load")))

    def test_script_with_equals_needs_a_filter(self) -> None:
        # Serf splits at the first "=", whatever is before it.
        handler = parse_handler_spec("*=FOO=1 run.sh")
        self.assertEqual((str(handler.filter), handler.script), ("*", "FOO=1 run.sh"))
        handler = parse_handler_spec("=FOO=1 run.sh")
        self.assertEqual((str(handler.filter), handler.script), ("*", "FOO=1 run.sh"))
        self.assertEqual(handler.spec, "=FOO=1 run.sh")
        handler = parse_handler_spec("user:a=b=c")
        self.assertEqual((str(handler.filter), handler.script), ("user:a", "b=c"))

    def test_empty_script(self) -> None:
        handler = parse_handler_spec("member-join=")
        self.assertEqual(handler.script, "")

    def test_errors_use_serfs_text(self) -> None:
        cases = {
            "echo a=b": "Invalid event script: Event 'echo a' invoking 'b'",
            "FOO=1 run.sh": "Invalid event script: Event 'FOO' invoking '1 run.sh'",
            "user:foo,bogus:x=echo hi": "Invalid event script: Event 'bogus:x' invoking 'echo hi'",
            "user,=x": "Invalid event script: Event '' invoking 'x'",
            "user, query=x": "Invalid event script: Event ' query' invoking 'x'",
            "member-join:a=x": "Invalid event script: Event 'member-join:a' invoking 'x'",
            "Member-Join=x": "Invalid event script: Event 'Member-Join' invoking 'x'",
        }
        for spec, message in cases.items():
            with self.assertRaises(ValueError) as caught:
                parse_handler_spec(spec)
            self.assertEqual(str(caught.exception), message, spec)

    def test_update_rejects_a_bad_spec_and_keeps_the_old_handlers(self) -> None:
        sink = ScriptEventSink(reactor, ["user=a.sh"], "me", dict)
        with self.assertRaises(ValueError):
            sink.update(["member-join=b.sh", "nope=c.sh"])
        self.assertEqual([h.spec for h in sink.handlers], ["user=a.sh"])
        sink.update([parse_handler_spec("member-join=b.sh"), "query=c.sh"])
        self.assertEqual([h.spec for h in sink.handlers], ["member-join=b.sh", "query=c.sh"])


class SpecAgainstSerfTests(unittest.TestCase):
    """The real agent refuses the same specs with the same words."""

    async def test_same_error_as_serf(self) -> None:
        binary = find_serf_binary()
        if binary is None:
            raise unittest.SkipTest("no serf binary")
        for spec in ("echo a=b", "user:foo,bogus:x=echo hi", "user,=x"):
            out, err, code = await utils.getProcessOutputAndValue(
                binary,
                ["agent", "-node=x", "-bind=127.0.0.1:0", "-rpc-addr=127.0.0.1:0", f"-event-handler={spec}"],
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                reactor=reactor,
            )
            self.assertEqual(code, 1, spec)
            with self.assertRaises(ValueError) as caught:
                parse_handler_spec(spec)
            self.assertIn(str(caught.exception), (out + err).decode(), spec)


# -- pure parts ----------------------------------------------------------------------------


class FormatTests(unittest.SynchronousTestCase):
    def test_tag_env_names(self) -> None:
        self.assertEqual(tag_env_name("role"), "ROLE")
        self.assertEqual(tag_env_name("we-ird.tag"), "WE_IRD_TAG")
        self.assertEqual(tag_env_name("dc 1/a"), "DC_1_A")
        self.assertEqual(tag_env_name("été"), "_T_")
        # Go upper-cases rune by rune: "ß" stays one rune, then becomes "_".
        self.assertEqual(tag_env_name("straße"), "STRA_E")

    def test_member_stdin(self) -> None:
        event = member_event(
            EventType.MEMBER_JOIN,
            Member("a", "127.0.0.1", 7946, {"role": "web"}),
            Member("b\tc\nd", "10.0.0.2", 7946, {"role": "db\tx", "dc": "e\nf"}),
            Member("bare", "::1", 7946, {}),
        )
        self.assertEqual(
            event_stdin(event),
            b"a\t127.0.0.1\tweb\trole=web\n"
            b"b\\tc\\nd\t10.0.0.2\tdb\\tx\trole=db\\tx,dc=e\\nf\n"
            b"bare\t::1\t\t\n",
        )

    def test_payload_stdin(self) -> None:
        self.assertEqual(event_stdin(user("e", b"hello")), b"hello\n")
        self.assertEqual(event_stdin(user("e", b"hello\n")), b"hello\n")
        self.assertEqual(event_stdin(user("e", b"a\n\n")), b"a\n\n")
        self.assertEqual(event_stdin(user("e", b"")), b"")
        self.assertEqual(event_stdin(user("e", b"\xff\x00")), b"\xff\x00\n")
        self.assertEqual(event_stdin(RecordingQuery("q", b"p")), b"p\n")
        self.assertEqual(event_stdin(RecordingQuery("q", b"")), b"")

    def test_environment(self) -> None:
        base = {"PATH": "/bin", "SERF_EVENT": "stale"}
        tags = {"role": "web", "we-ird.tag": "v,1"}
        env = script_environment(user("deploy", b"x", ltime=42), "n1", tags, base)
        self.assertEqual(
            env,
            {
                "PATH": "/bin",
                "SERF_EVENT": "user",
                "SERF_SELF_NAME": "n1",
                "SERF_SELF_ROLE": "web",
                "SERF_TAG_ROLE": "web",
                "SERF_TAG_WE_IRD_TAG": "v,1",
                "SERF_USER_EVENT": "deploy",
                "SERF_USER_LTIME": "42",
            },
        )
        env = script_environment(RecordingQuery("up", ltime=3), "n1", {}, {})
        self.assertEqual(
            env,
            {
                "SERF_EVENT": "query",
                "SERF_SELF_NAME": "n1",
                "SERF_SELF_ROLE": "",
                "SERF_QUERY_NAME": "up",
                "SERF_QUERY_LTIME": "3",
            },
        )

    def test_output_ring_keeps_the_tail(self) -> None:
        ring = OutputRing(8)
        ring.write(b"0123")
        ring.write(b"456789")
        ring.write(b"ab")
        self.assertEqual(ring.getvalue(), b"456789ab")
        self.assertEqual(ring.total_written, 12)
        self.assertTrue(ring.truncated)


# -- real processes ----------------------------------------------------------------------


class InvokerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.logs = LogCapture(self)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def dump_script(self) -> str:
        """Writes its SERF_ environment (NUL-separated) and stdin, then says "done"."""
        return write_script(
            self.dir,
            "dump.sh",
            f'cat > {self.dir}/stdin\nenv -0 > {self.dir}/env.tmp\nmv {self.dir}/env.tmp {self.dir}/env\necho done\n',
        )

    async def run_dump(self, event: object, tags: Mapping[str, str], environ: Mapping[str, str] | None = None) -> tuple[ScriptResult, dict[str, str], bytes]:
        invoker = ScriptInvoker(reactor, environ=environ)
        result = await invoker.invoke(self.dump_script(), event, "node-1", tags)
        return result, parse_env0(read(self.path("env"))), read(self.path("stdin"))

    async def test_member_event(self) -> None:
        event = member_event(
            EventType.MEMBER_UPDATE,
            Member("a", "127.0.0.1", 7946, {"role": "web", "x": "1"}),
            Member("b\tc", "10.0.0.2", 7946, {"role": "d\nb"}),
        )
        tags = {"role": "lb", "dc-name": "east", "weird.tag": "a b"}
        result, env, stdin = await self.run_dump(event, tags, environ={"PATH": os.environ["PATH"], "KEEP": "me"})
        self.assertEqual(result.exit_code, 0)
        self.assertEqual(result.output, b"done\n")
        self.assertEqual(env["KEEP"], "me")
        self.assertEqual(
            serf_vars(env),
            {
                "SERF_EVENT": "member-update",
                "SERF_SELF_NAME": "node-1",
                "SERF_SELF_ROLE": "lb",
                "SERF_TAG_ROLE": "lb",
                "SERF_TAG_DC_NAME": "east",
                "SERF_TAG_WEIRD_TAG": "a b",
            },
        )
        self.assertEqual(stdin, b"a\t127.0.0.1\tweb\trole=web,x=1\nb\\tc\t10.0.0.2\td\\nb\trole=d\\nb\n")

    async def test_user_event_inherits_the_environment(self) -> None:
        result, env, stdin = await self.run_dump(user("deploy", b"v1.2", ltime=17), {})
        self.assertEqual(env.get("PATH"), os.environ["PATH"])
        self.assertEqual(
            serf_vars(env),
            {
                "SERF_EVENT": "user",
                "SERF_SELF_NAME": "node-1",
                "SERF_SELF_ROLE": "",
                "SERF_USER_EVENT": "deploy",
                "SERF_USER_LTIME": "17",
            },
        )
        self.assertEqual(stdin, b"v1.2\n")

    async def test_empty_payload_writes_nothing(self) -> None:
        _, _, stdin = await self.run_dump(user("e", b""), {})
        self.assertEqual(stdin, b"")

    async def test_query_event(self) -> None:
        query = RecordingQuery("uptime", b"line\n", ltime=5)
        result, env, stdin = await self.run_dump(query, {"role": "web"})
        self.assertEqual(
            serf_vars(env),
            {
                "SERF_EVENT": "query",
                "SERF_SELF_NAME": "node-1",
                "SERF_SELF_ROLE": "web",
                "SERF_TAG_ROLE": "web",
                "SERF_QUERY_NAME": "uptime",
                "SERF_QUERY_LTIME": "5",
            },
        )
        self.assertEqual(stdin, b"line\n")
        self.assertEqual(query.responses, [b"done\n"])
        self.assertTrue(result.responded)

    async def test_large_stdin_does_not_block(self) -> None:
        payload = os.urandom(512 * 1024).replace(b"\n", b"x") + b"\n"
        script = write_script(self.dir, "count.sh", "wc -c\n")
        query = RecordingQuery("q", payload)
        result = await ScriptInvoker(reactor).invoke(script, query, "n", {})
        self.assertEqual(int(result.output.strip()), len(payload))

    async def test_script_that_ignores_stdin(self) -> None:
        result = await ScriptInvoker(reactor).invoke("exit 0", user("e", b"x" * 300_000), "n", {})
        self.assertEqual(result.exit_code, 0)

    async def test_stdout_and_stderr_share_one_pipe(self) -> None:
        query = RecordingQuery("q")
        script = "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done; echo \"0=$0\""
        result = await ScriptInvoker(reactor).invoke(script, query, "n", {})
        expected = b"".join(b"out%d\nerr%d\n" % (i, i) for i in range(1, 6)) + b"0=/bin/sh\n"
        self.assertEqual(result.output, expected)
        self.assertEqual(query.responses, [expected])

    async def test_query_response_keeps_the_last_8k(self) -> None:
        query = RecordingQuery("q")
        # 10000 lines of 10 bytes: 100000 bytes in all.
        script = "i=0; while [ $i -lt 10000 ]; do printf '%09d\\n' $i; i=$((i+1)); done"
        result = await ScriptInvoker(reactor).invoke(script, query, "n", {})
        expected = b"".join(b"%09d\n" % i for i in range(10000))[-MAX_OUTPUT:]
        self.assertEqual(len(query.responses), 1)
        self.assertEqual(query.responses[0], expected)
        self.assertEqual(result.output_size, 100000)
        self.assertTrue(self.logs.matching("generated 100000 bytes of output, truncated to 8192", LogLevel.warn))

    async def test_no_response_on_failure_or_silence(self) -> None:
        query = RecordingQuery("q")
        failed = await ScriptInvoker(reactor).invoke("echo partial; exit 3", query, "n", {})
        self.assertEqual(failed.exit_code, 3)
        self.assertEqual(failed.error, "exit status 3")
        self.assertFalse(failed.responded)
        silent = await ScriptInvoker(reactor).invoke("true", query, "n", {})
        self.assertEqual(silent.exit_code, 0)
        self.assertEqual(query.responses, [])
        errors = self.logs.matching("Error invoking script 'echo partial; exit 3'", LogLevel.error)
        self.assertEqual(len(errors), 1)
        self.assertIn("exit status 3", errors[0])
        self.assertIn("query: q", errors[0])

    async def test_real_query_response(self) -> None:
        responder = FakeResponder()
        query = incoming_query("hello", b"", responder)
        result = await ScriptInvoker(reactor).invoke("printf hi", query, "n", {})
        self.assertTrue(result.responded)
        self.assertEqual([m.payload for m in responder.sent], [b"hi"])

    async def test_response_too_large_is_logged(self) -> None:
        responder = FakeResponder()
        query = incoming_query("big", b"", responder)
        result = await ScriptInvoker(reactor).invoke("head -c 2000 /dev/zero", query, "n", {})
        self.assertEqual(result.exit_code, 0)
        self.assertFalse(result.responded)
        self.assertEqual(result.response_error, "response exceeds limit of 1024 bytes")
        self.assertEqual(responder.sent, [])
        warned = self.logs.matching("Failed to respond to query 'query: big'", LogLevel.warn)
        self.assertEqual(len(warned), 1)
        self.assertIn("response exceeds limit of 1024 bytes", warned[0])

    async def test_killed_script(self) -> None:
        result = await ScriptInvoker(reactor).invoke("kill -9 $$", user("e"), "n", {})
        self.assertIsNone(result.exit_code)
        self.assertEqual(result.signal, 9)
        self.assertEqual(result.error, "signal: SIGKILL")

    async def test_script_that_cannot_start_is_logged_not_raised(self) -> None:
        # A NUL cannot go into an environment variable.
        result = await ScriptInvoker(reactor).invoke("true", user("e"), "n", {"bad": "a\0b"})
        self.assertIsNotNone(result.error)
        self.assertIsNone(result.exit_code)
        self.assertTrue(self.logs.matching("Error invoking script 'true' for event user-event: e", LogLevel.error))

    async def test_unknown_event_is_logged_not_raised(self) -> None:
        result = await ScriptInvoker(reactor).invoke("true", object(), "n", {})
        self.assertIn("Unknown event type", result.error or "")

    async def test_slow_script_warning(self) -> None:
        release = self.path("release")
        script = f"while [ ! -e {release} ]; do sleep 0.02; done"
        running = ScriptInvoker(reactor).invoke(script, user("slowpoke"), "n", {})
        try:
            warned = await poll(lambda: self.logs.matching("slow, execution exceeding 1s", LogLevel.warn), "slow warning")
        finally:
            open(release, "w").close()
        result = await running
        self.assertEqual(result.exit_code, 0)  # warned, never killed
        self.assertGreaterEqual(result.duration, 1.0)
        self.assertEqual(len(warned), 1)
        self.assertIn(f"Script '{script}'", warned[0])

    async def test_quick_script_no_warning(self) -> None:
        await ScriptInvoker(reactor).invoke("true", user("e"), "n", {})
        self.assertEqual(self.logs.matching("slow"), [])


class SinkTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.logs = LogCapture(self)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def lines(self, name: str) -> list[str]:
        if not exists(self.path(name)):
            return []
        return read(self.path(name)).decode().splitlines()

    def wait_for_release(self, name: str) -> str:
        return f"while [ ! -e {self.path(name)} ]; do sleep 0.02; done"

    def release(self, name: str) -> None:
        open(self.path(name), "w").close()

    def sink(self, specs: list[str], tags: Callable[[], Mapping[str, str]] = dict, **kwargs: Any) -> ScriptEventSink:
        sink = ScriptEventSink(reactor, specs, "me", tags, **kwargs)
        self.addCleanup(self.release_all)
        return sink

    def release_all(self) -> None:
        for name in ("release", "release-a", "release-b"):
            self.release(name)

    async def test_burst_runs_in_order_one_at_a_time(self) -> None:
        log, lock = self.path("order"), self.path("lock")
        script = write_script(
            self.dir,
            "ordered.sh",
            f'mkdir {lock} 2>/dev/null || echo OVERLAP >> {log}\n'
            f'sleep 0.01\n'
            f'echo "$SERF_USER_EVENT" >> {log}\n'
            f'rmdir {lock}\n',
        )
        sink = self.sink([f"user={script}"])
        for i in range(50):
            sink.handle(user(f"e{i}", ltime=i + 1))
        await sink.when_idle()
        self.assertEqual(self.lines("order"), [f"e{i}" for i in range(50)])
        self.assertEqual(sink.dropped, 0)

    async def test_slow_handler_does_not_delay_another(self) -> None:
        slow = f"{self.wait_for_release('release')}; echo slow-done >> {self.path('slow')}"
        fast = f"echo $SERF_USER_EVENT >> {self.path('fast')}"
        sink = self.sink([f"user={slow}", f"user={fast}"])
        for i in range(3):
            sink.handle(user(f"e{i}"))  # returns at once: the slow script waits for "release"
        await poll(lambda: self.lines("fast") == ["e0", "e1", "e2"], "fast handler ran all three")
        self.assertEqual(self.lines("slow"), [])  # the slow one is still on its first event
        self.release("release")
        await sink.when_idle()
        self.assertEqual(self.lines("slow"), ["slow-done"] * 3)

    async def test_only_matching_handlers_run(self) -> None:
        sink = self.sink(
            [
                f"member-join=echo join >> {self.path('out')}",
                f"user:deploy=echo deploy >> {self.path('out')}",
                f"query=echo query >> {self.path('out')}",
                f"user,*=echo twice-in-serf >> {self.path('all')}",
            ]
        )
        sink.handle(member_event(EventType.MEMBER_LEAVE, Member("x", "127.0.0.1", 1)))
        sink.handle(user("other"))
        sink.handle(user("deploy"))
        await sink.when_idle()
        self.assertEqual(self.lines("out"), ["deploy"])
        # One run per event and handler (Serf would run "user,*" twice for a user event).
        self.assertEqual(self.lines("all"), ["twice-in-serf"] * 3)

    async def test_tags_are_read_when_the_event_arrives(self) -> None:
        tags = {"role": "web"}
        script = f"echo $SERF_SELF_ROLE >> {self.path('roles')}"
        sink = self.sink([f"user={self.wait_for_release('release')}; {script}"], tags=lambda: tags)
        sink.handle(user("one"))
        tags = {"role": "db"}
        sink.handle(user("two"))
        self.release("release")
        await sink.when_idle()
        self.assertEqual(self.lines("roles"), ["web", "db"])

    async def test_queue_bound_drops_the_oldest(self) -> None:
        script = f"{self.wait_for_release('release')}; echo $SERF_USER_EVENT >> {self.path('ran')}"
        sink = self.sink([f"user={script}"], queue_limit=3)
        for i in range(10):
            sink.handle(user(f"e{i}"))
        # e0 is running; e1..e6 were pushed out by e7..e9.
        self.assertEqual(sink.dropped, 6)
        warnings = self.logs.matching("is 3 events behind: dropped the oldest", LogLevel.warn)
        self.assertEqual(len(warnings), 6)
        self.assertIn("(user-event: e1); 1 dropped so far", warnings[0])
        self.assertIn("(user-event: e6); 6 dropped so far", warnings[-1])
        self.release("release")
        await sink.when_idle()
        self.assertEqual(self.lines("ran"), ["e0", "e7", "e8", "e9"])

    async def test_failures_are_logged_and_the_queue_goes_on(self) -> None:
        sink = self.sink([f"user=test $SERF_USER_EVENT != bad && echo $SERF_USER_EVENT >> {self.path('ran')}"])
        for name in ("a", "bad", "c"):
            sink.handle(user(name))
        await sink.when_idle()
        self.assertEqual(self.lines("ran"), ["a", "c"])
        errors = self.logs.matching("Error invoking script", LogLevel.error)
        self.assertEqual(len(errors), 1)
        self.assertIn("user-event: bad", errors[0])
        self.assertIn("exit status 1", errors[0])

    async def test_handle_never_raises(self) -> None:
        def broken_tags() -> Mapping[str, str]:
            raise RuntimeError("no tags today")

        sink = self.sink(["user=true"], tags=broken_tags)
        sink.handle(user("e"))
        sink(user("e"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        await sink.when_idle()

    async def test_update_keeps_queues_and_drains_removed_handlers(self) -> None:
        keep = f"echo keep-$SERF_USER_EVENT >> {self.path('ran')}"
        gone = f"{self.wait_for_release('release')}; echo gone-$SERF_USER_EVENT >> {self.path('gone')}"
        sink = self.sink([f"user={keep}", f"user={gone}"])
        sink.handle(user("1"))
        sink.handle(user("2"))
        new = f"echo new-$SERF_USER_EVENT >> {self.path('ran')}"
        sink.update([f"user={keep}", f"user={new}"])
        self.assertEqual([h.script for h in sink.handlers], [keep, new])
        sink.handle(user("3"))
        await poll(lambda: "new-3" in self.lines("ran"), "new handler ran")
        self.release("release")
        await sink.when_idle()
        self.assertEqual(sorted(self.lines("ran")), ["keep-1", "keep-2", "keep-3", "new-3"])
        # The removed handler still ran what it had, and nothing after the update.
        self.assertEqual(self.lines("gone"), ["gone-1", "gone-2"])

    async def test_query_answered_through_the_sink(self) -> None:
        responder = FakeResponder()
        sink = self.sink(["query:ping=echo pong-from-$SERF_SELF_NAME"])
        sink.handle(incoming_query("ping", b"", responder))
        await sink.when_idle()
        self.assertEqual([m.payload for m in responder.sent], [b"pong-from-me\n"])

    def test_handlers_and_event_sink_shape(self) -> None:
        sink = ScriptEventSink(reactor, ["a.sh", "user=b.sh"], "me", dict)
        self.assertEqual([type(h) for h in sink.handlers], [ScriptHandler, ScriptHandler])
        self.assertEqual(sink.queue_limit, 1024)
        with self.assertRaises(ValueError):
            ScriptEventSink(reactor, [], "me", dict, queue_limit=0)


# -- side by side with the real agent --------------------------------------------------------


DUMP = r"""case "$SERF_EVENT" in
  user) tag="user-$SERF_USER_EVENT" ;;
  query) tag="query-$SERF_QUERY_NAME" ;;
  *) tag="$SERF_EVENT" ;;
esac
cat > "{dir}/$tag.stdin"
env -0 > "{dir}/$tag.env.tmp"
echo "out $tag"
echo "err $SERF_SELF_ROLE" >&2
echo "end"
mv "{dir}/$tag.env.tmp" "{dir}/$tag.env"
"""


class AgainstSerfAgentTests(unittest.TestCase):
    """Our invoker, given the events a real agent gave its script, gives ours the same bytes."""

    TAGS = {"role": "web", "we-ird.tag": "v,1", "tab": "a\tb"}

    def setUp(self) -> None:
        self.go_dir = os.path.abspath(self.mktemp())
        self.py_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.go_dir)
        os.makedirs(self.py_dir)

    def dump(self, directory: str) -> str:
        return write_script(directory, "dump.sh", DUMP.format(dir=directory))

    def outputs(self, directory: str, tag: str) -> Callable[[], tuple[dict[str, str], bytes] | None]:
        def check() -> tuple[dict[str, str], bytes] | None:
            env = os.path.join(directory, tag + ".env")
            if not exists(env):
                return None
            return serf_vars(parse_env0(read(env))), read(os.path.join(directory, tag + ".stdin"))

        return check

    async def test_same_environment_stdin_and_response(self) -> None:
        extra = [f"-event-handler={self.dump(self.go_dir)}"]
        for key, value in self.TAGS.items():
            extra += ["-tag", f"{key}={value}"]
        agent = await start_serf_agent(self, reactor, node="script-go", extra_args=extra)
        invoker = ScriptInvoker(reactor)
        ours = self.dump(self.py_dir)

        async def compare(tag: str, event: object) -> tuple[bytes, bytes]:
            go_env, go_stdin = await poll(self.outputs(self.go_dir, tag), f"the agent's script for {tag}")
            result = await invoker.invoke(ours, event, agent.node, self.TAGS)
            self.assertEqual(result.exit_code, 0)
            py_env, py_stdin = self.outputs(self.py_dir, tag)() or ({}, b"")
            self.assertEqual(py_env, go_env, tag)
            return go_stdin, py_stdin

        # member-join for the agent itself.
        me = Member(agent.node, agent.host, agent.bind_port, dict(self.TAGS))
        go_stdin, py_stdin = await compare("member-join", member_event(EventType.MEMBER_JOIN, me))
        # Tags come in Go's random map order: compare the pieces.
        go_fields, py_fields = go_stdin.rstrip(b"\n").split(b"\t"), py_stdin.rstrip(b"\n").split(b"\t")
        self.assertEqual(go_fields[:3], py_fields[:3])
        self.assertEqual(sorted(go_fields[3].split(b",")), sorted(py_fields[3].split(b",")))
        self.assertEqual(go_stdin.count(b"\n"), 1)
        self.assertEqual(go_fields[3].count(b"\\t"), 1)  # the tab in a tag is escaped

        # User events: payload with and without a newline, and empty.
        for name, payload in (("plain", b"hello"), ("nl", b"two\nlines\n"), ("empty", b"")):
            code, out, err = await agent.serf_cli("event", "-coalesce=false", name, payload.decode())
            self.assertEqual(code, 0, err)
            go_env, _ = await poll(self.outputs(self.go_dir, f"user-{name}"), f"user event {name}")
            event = user(name, payload, ltime=int(go_env["SERF_USER_LTIME"]))
            go_stdin, py_stdin = await compare(f"user-{name}", event)
            self.assertEqual(py_stdin, go_stdin)

        # A query: same environment and stdin, and the same response bytes.
        code, out, err = await agent.serf_cli("query", "-format=json", "-timeout=5s", "uptime", "payload")
        self.assertEqual(code, 0, err)
        go_response = json.loads(out)["Responses"][agent.node]
        go_env, _ = await poll(self.outputs(self.go_dir, "query-uptime"), "query")
        query = RecordingQuery("uptime", b"payload", ltime=int(go_env["SERF_QUERY_LTIME"]))
        go_stdin, py_stdin = await compare("query-uptime", query)
        self.assertEqual(py_stdin, go_stdin)
        self.assertEqual(query.responses, [go_response.encode()])
        self.assertEqual(go_response, "out query-uptime\nerr web\nend\n")
