"""Coalescing of member and user events before local delivery (spec §3.6, §5.2).

A cluster that changes all at once (ten nodes booted together, a script that
fires the same ``deploy`` event from every node) would otherwise run event
handlers once per node and per event.  Serf therefore holds such events back
for a short *window* and hands on a condensed version:

* a window opens with the first coalescable event and closes at
  ``min(first + coalesce_period, last + quiescent_period)``: after
  ``quiescent_period`` of quiet, or at the latest ``coalesce_period`` after it
  opened, so a steady stream cannot hold events back for ever;
* member events keep only the newest event type per member name, and an
  event is not delivered again if it repeats what was last delivered for
  that member (:class:`MemberEventCoalescer`);
* user events sent with ``coalesce=True`` keep only the events with the
  highest Lamport time per event name (:class:`UserEventCoalescer`).

Everything a coalescer does not handle goes straight to the sink, at once.
Coalescing affects local delivery only; the wire never sees it.  Timers use
the injected :class:`~twisted.internet.interfaces.IReactorTime` (``callLater``
only), so tests drive windows with :class:`twisted.internet.task.Clock`.

Unlike Go, whose flush walks Go maps, output order here is deterministic:
member events come out one per event type, types and members in the order
of their latest event in the window; user events in Lamport order, ties in
arrival order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from flyteserf.serf.events import EventType, Member, MemberEvent, UserEvent

__all__ = [
    "COALESCE_PERIOD",
    "QUIESCENT_PERIOD",
    "Coalescer",
    "EventSink",
    "MemberEventCoalescer",
    "UserEventCoalescer",
]

#: The agent's window bounds, for member and user events alike (spec §5.2).
COALESCE_PERIOD = 3.0
QUIESCENT_PERIOD = 1.0

#: Where coalesced (and passed-through) events go.  It takes whatever event
#: values the serf layer produces (``flyteserf.serf.events.Event``), hence
#: ``Any``: a coalescer passes on events it does not know unchanged.
EventSink = Callable[[Any], None]


class Coalescer:
    """The window shared by both coalescers; subclasses say what to keep.

    Subclasses implement :meth:`handles` (which events are coalesced at
    all), :meth:`_coalesce` (take one into the window) and :meth:`_drain`
    (the events to deliver when the window closes, leaving it empty).

    A period of 0 or less turns coalescing off, as in Go, where the
    coalescer is only installed when both periods are positive: every
    event then goes straight through.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        coalesce_period: float,
        quiescent_period: float,
        sink: EventSink,
    ) -> None:
        self._clock = clock
        self.coalesce_period = coalesce_period
        self.quiescent_period = quiescent_period
        self._sink = sink
        self._enabled = coalesce_period > 0 and quiescent_period > 0
        self._window_start: float | None = None
        self._timer: IDelayedCall | None = None
        self._stopped = False

    # -- what subclasses provide -----------------------------------------

    def handles(self, event: object) -> bool:
        """True if ``event`` is held in the window, False to pass it on now."""
        raise NotImplementedError

    def _coalesce(self, event: Any) -> None:
        raise NotImplementedError

    def _drain(self) -> list[Any]:
        raise NotImplementedError

    # -- the window ------------------------------------------------------

    @property
    def pending(self) -> bool:
        """True while a window is open (events are being held back)."""
        return self._window_start is not None

    def push(self, event: object) -> None:
        """Take one event: hold it in the window, or deliver it at once.

        After :meth:`stop`, every event is delivered at once: a stopping
        node still reports what happens, it just no longer waits to merge.
        """
        if self._stopped or not self._enabled or not self.handles(event):
            self._deliver(event)
            return
        self._coalesce(event)
        now = self._clock.seconds()
        if self._window_start is None:
            self._window_start = now
        deadline = min(self._window_start + self.coalesce_period, now + self.quiescent_period)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self._clock.callLater(max(0.0, deadline - now), self._window_closed)

    def flush(self) -> None:
        """Close the window now and deliver what it holds."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._window_start = None
        # Drained before delivery, so a sink that pushes opens a new window.
        for event in self._drain():
            self._deliver(event)

    def stop(self) -> None:
        """Flush what is held and stop coalescing (no timer is left behind)."""
        self.flush()
        self._stopped = True

    def _window_closed(self) -> None:
        self._timer = None
        self.flush()

    def _deliver(self, event: object) -> None:
        # One failing handler must not lose the rest of a flush, nor kill
        # the timer call that runs it.
        try:
            self._sink(event)
        except Exception:
            self.log.failure("event sink failed on {event}", event=event)


class MemberEventCoalescer(Coalescer):
    """Coalesces member-join/leave/failed/update/reap events (serf 0.9.4
    ``coalesce_member.go``).

    Within a window only the newest event type per member name counts.  At
    flush, a member whose type equals the type last delivered for it is
    dropped ("don't re-send the same state"), except member-update, which
    is dropped only if the member (address, tags, versions...) is also
    unchanged: a second tag change is news, a repeated identical one is not.
    Then one :class:`MemberEvent` per type is delivered with its members.

    Go 0.9.4 never empties its per-window map, so each later flush re-sends
    the last member-update of every member whose newest event was an update
    (seen with Debian's serf 0.9.4: after ``serf tags`` on b, every later
    member-join also ran the member-update handler for b again).  Later serf
    releases stopped that by comparing members.  This class follows the
    later rule and empties the window at every flush; for the other four
    types the two behaviours cannot be told apart.
    """

    def __init__(
        self,
        clock: IReactorTime,
        coalesce_period: float,
        quiescent_period: float,
        sink: EventSink,
    ) -> None:
        super().__init__(clock, coalesce_period, quiescent_period, sink)
        # name -> newest (type, member) in this window, oldest entry first.
        self._latest: dict[str, tuple[EventType, Member]] = {}
        # name -> (type, member) last delivered, across windows.
        self._last: dict[str, tuple[EventType, Member]] = {}

    def handles(self, event: object) -> bool:
        return isinstance(event, MemberEvent)

    def _coalesce(self, event: MemberEvent) -> None:
        for member in event.members:
            # Re-inserted so that iteration order is "order of newest event".
            self._latest.pop(member.name, None)
            self._latest[member.name] = (event.type, member)

    def _drain(self) -> list[Any]:
        grouped: dict[EventType, list[Member]] = {}
        for name, (etype, member) in self._latest.items():
            last = self._last.get(name)
            if last is not None and last[0] == etype:
                if etype is not EventType.MEMBER_UPDATE or last[1] == member:
                    continue
            if etype is EventType.MEMBER_REAP:
                # The member is gone from serf: forget it, so that the memory
                # held here does not grow with every name ever seen.  Serf
                # reaps a member once; anything after is a join, never equal.
                self._last.pop(name, None)
            else:
                self._last[name] = (etype, member)
            grouped.setdefault(etype, []).append(member)
        self._latest.clear()
        return [MemberEvent(etype, tuple(members)) for etype, members in grouped.items()]


class UserEventCoalescer(Coalescer):
    """Coalesces user events sent with ``coalesce=True`` (serf 0.9.4
    ``coalesce_user.go``).

    Per event name, only the events with the highest LTime seen in the window
    are delivered, all of them if several share it; older ones are dropped.
    Events with ``coalesce=False``, and anything that is not a user event,
    pass straight through.
    """

    def __init__(
        self,
        clock: IReactorTime,
        coalesce_period: float,
        quiescent_period: float,
        sink: EventSink,
    ) -> None:
        super().__init__(clock, coalesce_period, quiescent_period, sink)
        # name -> (highest LTime, arrival number of its first event, events)
        self._latest: dict[str, tuple[int, int, list[UserEvent]]] = {}
        self._arrivals = 0

    def handles(self, event: object) -> bool:
        return isinstance(event, UserEvent) and event.coalesce

    def _coalesce(self, event: UserEvent) -> None:
        self._arrivals += 1
        latest = self._latest.get(event.name)
        if latest is None or latest[0] < event.ltime:
            self._latest[event.name] = (event.ltime, self._arrivals, [event])
        elif latest[0] == event.ltime:
            latest[2].append(event)

    def _drain(self) -> list[Any]:
        kept = sorted(self._latest.values(), key=lambda entry: (entry[0], entry[1]))
        self._latest.clear()
        return [event for _, _, events in kept for event in events]
