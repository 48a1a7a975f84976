"""The agent's ring of recent log lines, for ``serf monitor`` (spec §4.2 ``monitor``).

:class:`LogRing` is a :class:`twisted.logger.ILogObserver`: add it to the
log publisher and it keeps the last *size* (Serf: 512) events, each rendered
as one Serf-like line with no trailing newline::

    2024/05/01 12:00:00 [INFO] serf.serf: EventMemberJoin: a 127.0.0.1

(local time, as Go's ``log.LstdFlags``; the namespace loses its
``flyteserf.`` prefix).  :meth:`LogRing.subscribe` replays the stored lines at
or above a level, then streams new ones, which is what the ``monitor`` RPC
command does.

Levels are Serf's: ``TRACE < DEBUG < INFO < WARN < ERR``.  Twisted's levels
map to them as debug → DEBUG, info → INFO, warn → WARN, error and critical →
ERR; an event may carry ``serf_level="TRACE"`` (or any Serf level) to
override that, Twisted having no trace level.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable

import attrs
from twisted.logger import ILogObserver, LogLevel, formatEvent
from zope.interface import implementer

__all__ = ["LEVELS", "LogLine", "LogRing", "parse_level"]

#: Serf's log levels, lowest first.
LEVELS: tuple[str, ...] = ("TRACE", "DEBUG", "INFO", "WARN", "ERR")
_RANK = {name: rank for rank, name in enumerate(LEVELS)}
_FROM_TWISTED = {
    LogLevel.debug: "DEBUG",
    LogLevel.info: "INFO",
    LogLevel.warn: "WARN",
    LogLevel.error: "ERR",
    LogLevel.critical: "ERR",
}
_PREFIX = "flyteserf."


def parse_level(level: str) -> str:
    """Serf's level name for *level* (case-insensitive); ``ValueError("Unknown log level: X")`` otherwise."""
    upper = level.upper()
    if upper not in _RANK:
        raise ValueError(f"Unknown log level: {upper}")
    return upper


@attrs.frozen
class LogLine:
    """One stored line and its Serf level."""

    level: str
    text: str

    def at_least(self, level: str) -> bool:
        return _RANK[self.level] >= _RANK[level]


def _one_line(text: str) -> str:
    parts = [part.strip() for part in text.splitlines()]
    return " ".join(part for part in parts if part)


def _level_of(event: dict[str, Any]) -> str:
    override = event.get("serf_level")
    if isinstance(override, str) and override.upper() in _RANK:
        return override.upper()
    level = event.get("log_level")
    try:
        return _FROM_TWISTED.get(level, "INFO")
    except TypeError:  # unhashable junk in a hand-made event
        return "INFO"


def format_line(event: dict[str, Any], level: str) -> str:
    """Render *event* as ``YYYY/MM/DD HH:MM:SS [LEVEL] namespace: message``."""
    when = event.get("log_time")
    if not isinstance(when, (int, float)):
        when = time.time()
    stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(when))
    namespace = str(event.get("log_namespace") or "log")
    if namespace.startswith(_PREFIX):
        namespace = namespace[len(_PREFIX) :]
    message = formatEvent(event) or ""
    failure = event.get("log_failure")
    if failure is not None:
        try:
            detail = f"{failure.type.__name__}: {failure.getErrorMessage()}"
        except Exception:
            detail = repr(failure)
        message = f"{message}: {detail}" if message else detail
    return f"{stamp} [{level}] {namespace}: {_one_line(message)}"


Subscriber = Callable[[str], object]


@implementer(ILogObserver)
class LogRing:
    """Keeps the last *size* formatted log lines and streams new ones to subscribers.

    *min_level* drops events below it before they are stored (Serf's ring
    only sees what passes the agent's ``-log-level``).  A subscriber that
    raises is unsubscribed; the exception never reaches the log publisher.
    """

    def __init__(self, size: int = 512, min_level: str = "TRACE") -> None:
        if size < 1:
            raise ValueError(f"LogRing size must be at least 1, not {size}")
        self.size = size
        self.min_level = parse_level(min_level)
        self._lines: deque[LogLine] = deque(maxlen=size)
        self._subscribers: dict[int, tuple[str, Subscriber]] = {}
        self._next_token = 0

    def __len__(self) -> int:
        return len(self._lines)

    def lines(self, level: str = "TRACE") -> list[str]:
        """The stored lines at or above *level*, oldest first."""
        level = parse_level(level)
        return [line.text for line in self._lines if line.at_least(level)]

    def __call__(self, event: dict[str, Any]) -> None:
        level = _level_of(event)
        if _RANK[level] < _RANK[self.min_level]:
            return
        try:
            text = format_line(event, level)
        except Exception:
            return  # a log event that cannot be rendered must not break logging
        self.add(level, text)

    def add(self, level: str, text: str) -> None:
        """Store a preformatted line (no trailing newline) and stream it."""
        line = LogLine(parse_level(level), text.rstrip("\r\n"))
        self._lines.append(line)
        for token, (min_level, callback) in list(self._subscribers.items()):
            if line.at_least(min_level) and token in self._subscribers:
                self._deliver(token, callback, line.text)

    def subscribe(self, level: str, callback: Subscriber) -> Callable[[], None]:
        """Replay the stored lines at or above *level*, then stream new ones to *callback*.

        Returns a function that unsubscribes (idempotent).  Raises
        ``ValueError("Unknown log level: X")`` for a level outside
        TRACE/DEBUG/INFO/WARN/ERR.
        """
        min_level = parse_level(level)
        token = self._next_token
        self._next_token += 1
        self._subscribers[token] = (min_level, callback)
        for line in list(self._lines):
            if token not in self._subscribers:
                break
            if line.at_least(min_level):
                self._deliver(token, callback, line.text)

        def unsubscribe() -> None:
            self._subscribers.pop(token, None)

        return unsubscribe

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def _deliver(self, token: int, callback: Subscriber, text: str) -> None:
        try:
            callback(text)
        except Exception:
            self._subscribers.pop(token, None)
