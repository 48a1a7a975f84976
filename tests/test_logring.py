# mypy: disable-error-code="no-untyped-call"
"""The agent's log ring, replayed and streamed by ``serf monitor`` (spec §4.2)."""

from __future__ import annotations

import re

from twisted.logger import ILogObserver, Logger
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from flyteserf.agent.logring import LEVELS, LogRing, parse_level

LINE = re.compile(r"^\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2} \[(TRACE|DEBUG|INFO|WARN|ERR)\] [^:]+: .*$")


def logger(ring: LogRing, namespace: str = "flyteserf.serf.serf") -> Logger:
    return Logger(namespace=namespace, observer=ring)


class LogRingTests(SynchronousTestCase):
    def test_interface(self) -> None:
        self.assertTrue(verifyObject(ILogObserver, LogRing()))

    def test_format(self) -> None:
        ring = LogRing()
        logger(ring).info("EventMemberJoin: {name} {addr}", name="a", addr="127.0.0.1")
        [line] = ring.lines()
        self.assertRegex(line, LINE)
        self.assertTrue(line.endswith("[INFO] serf.serf: EventMemberJoin: a 127.0.0.1"), line)
        self.assertFalse(line.endswith("\n"))

    def test_levels_map(self) -> None:
        ring = LogRing()
        log = logger(ring, "x")
        log.debug("d")
        log.info("i")
        log.warn("w")
        log.error("e")
        log.critical("c")
        log.debug("t", serf_level="trace")
        levels = [re.search(r"\[(\w+)\]", line).group(1) for line in ring.lines()]  # type: ignore[union-attr]
        self.assertEqual(levels, ["DEBUG", "INFO", "WARN", "ERR", "ERR", "TRACE"])

    def test_one_line(self) -> None:
        ring = LogRing()
        logger(ring).info("1 error occurred:\n\t* Failed to join x\n\n")
        [line] = ring.lines()
        self.assertNotIn("\n", line)
        self.assertTrue(line.endswith("1 error occurred: * Failed to join x"), line)

    def test_failure_is_one_line(self) -> None:
        ring = LogRing()
        try:
            raise RuntimeError("boom\nagain")
        except RuntimeError:
            logger(ring).failure("handler failed")
        [line] = ring.lines()
        self.assertIn("[ERR]", line)
        self.assertTrue(line.endswith("handler failed: RuntimeError: boom again"), line)

    def test_ring_keeps_last_512(self) -> None:
        ring = LogRing()
        log = logger(ring, "x")
        for i in range(600):
            log.info("line {i}", i=i)
        lines = ring.lines()
        self.assertEqual(len(lines), 512)
        self.assertTrue(lines[0].endswith("line 88"))
        self.assertTrue(lines[-1].endswith("line 599"))

    def test_subscribe_replays_then_streams(self) -> None:
        ring = LogRing(size=4)
        log = logger(ring, "x")
        for i in range(6):
            (log.debug if i % 2 else log.info)("line {i}", i=i)
        got: list[str] = []
        unsubscribe = ring.subscribe("info", got.append)
        self.assertEqual([g.rsplit(" ", 1)[1] for g in got], ["2", "4"])
        log.info("new")
        log.debug("hidden")
        log.error("bad")
        self.assertEqual(len(got), 4)
        self.assertTrue(got[2].endswith("x: new") and got[3].endswith("x: bad"))
        unsubscribe()
        unsubscribe()
        log.error("after")
        self.assertEqual(len(got), 4)
        self.assertEqual(ring.subscriber_count, 0)

    def test_levels(self) -> None:
        for level in LEVELS:
            self.assertEqual(parse_level(level.lower()), level)
        with self.assertRaises(ValueError) as ctx:
            LogRing().subscribe("verbose", print)
        self.assertEqual(str(ctx.exception), "Unknown log level: VERBOSE")
        self.assertRaises(ValueError, LogRing, 0)

    def test_min_level(self) -> None:
        ring = LogRing(min_level="warn")
        log = logger(ring, "x")
        log.info("no")
        log.warn("yes")
        self.assertEqual(len(ring), 1)

    def test_raising_subscriber_is_dropped(self) -> None:
        ring = LogRing()
        log = logger(ring, "x")

        def bad(line: str) -> None:
            raise ValueError(line)

        ring.subscribe("trace", bad)
        log.info("one")  # must not raise
        self.assertEqual(ring.subscriber_count, 0)

    def test_reentrant_subscriber(self) -> None:
        """A subscriber that logs (the RPC server dropping a slow client) does not break the ring."""
        ring = LogRing()
        log = logger(ring, "x")
        log.info("before")
        seen: list[str] = []

        def noisy(line: str) -> None:
            seen.append(line)
            if len(seen) < 3:
                log.info("echo {n}", n=len(seen))

        ring.subscribe("info", noisy)
        self.assertEqual(len(seen), 3)
        self.assertEqual(len(ring), 3)

    def test_add_preformatted(self) -> None:
        ring = LogRing()
        ring.add("warn", "2024/01/01 00:00:00 [WARN] agent: x\n")
        self.assertEqual(ring.lines("WARN"), ["2024/01/01 00:00:00 [WARN] agent: x"])
