"""Waiting in tests against real processes: poll with a deadline, never assert a duration."""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater


def sleep(reactor: IReactorTime, seconds: float) -> Deferred[None]:
    """A Deferred that fires after *seconds* on *reactor*."""
    return deferLater(reactor, seconds, lambda: None)


@inlineCallbacks
def poll(
    reactor: IReactorTime, check: Callable[[], Any], deadline: float = 60.0, interval: float = 0.1
) -> Any:
    """Call *check* (it may return a Deferred) until it is truthy, and fire with that value.

    Fails with AssertionError after *deadline* seconds: generous deadlines
    let a slow machine pass; a real regression still fails.
    """
    end = reactor.seconds() + deadline
    while True:
        result = yield check()
        if result:
            return result
        if reactor.seconds() > end:
            raise AssertionError(f"condition not met within {deadline} s: {check}")
        yield sleep(reactor, interval)
