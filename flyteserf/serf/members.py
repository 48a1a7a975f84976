"""Serf's member table: statuses, recent intents, failed/left lists and reaping (spec §3.5).

memberlist knows who answers probes; serf adds *why* a node went away (a
graceful leave is ``left``, a silent death ``failed``), keeps gone members
around until they are reaped, and orders join/leave intents with the member
Lamport clock.  This module is that bookkeeping, and nothing else: clocks,
broadcasting and event delivery stay with :class:`~flyteserf.serf.serf.Serf`,
which hands in an ``emit`` callable for the member events.
"""

from __future__ import annotations

import enum
import random
from typing import Callable, Iterator

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from flyteserf.memberlist.state import Node
from flyteserf.serf.events import EventType, Member, MemberEvent
from flyteserf.wire.errors import DecodeError
from flyteserf.wire.serf_messages import MemberStatus
from flyteserf.wire.tags import decode_tags

__all__ = ["IntentType", "Intent", "MemberState", "MemberTable"]


class IntentType(enum.Enum):
    JOIN = "join"
    LEAVE = "leave"


@attrs.frozen
class Intent:
    """The newest intent heard about a node serf does not know yet."""

    type: IntentType
    ltime: int
    wall_time: float


@attrs.define(eq=False)
class MemberState:
    """One serf member, mutated in place; :meth:`member` gives the frozen view."""

    name: str
    addr: str
    port: int
    tags: dict[str, str] = attrs.field(factory=dict)
    status: MemberStatus = MemberStatus.ALIVE
    protocol_min: int = 0
    protocol_max: int = 0
    protocol_cur: int = 0
    delegate_min: int = 0
    delegate_max: int = 0
    delegate_cur: int = 0
    #: Lamport time of the last join/leave intent applied to this member.
    status_ltime: int = 0
    #: Reactor time it became failed or left (0 while alive).
    leave_time: float = 0.0

    def member(self) -> Member:
        return Member(
            name=self.name,
            addr=self.addr,
            port=self.port,
            tags=dict(self.tags),
            status=self.status,
            protocol_min=self.protocol_min,
            protocol_max=self.protocol_max,
            protocol_cur=self.protocol_cur,
            delegate_min=self.delegate_min,
            delegate_max=self.delegate_max,
            delegate_cur=self.delegate_cur,
        )

    def refresh(self, node: Node, tags: dict[str, str]) -> None:
        """Take address, tags and versions from memberlist's node."""
        self.addr, self.port, self.tags = node.addr, node.port, tags
        self.protocol_min, self.protocol_max, self.protocol_cur = node.pmin, node.pmax, node.pcur
        self.delegate_min, self.delegate_max, self.delegate_cur = node.dmin, node.dmax, node.dcur


class MemberTable:
    """Members by name, plus the failed and left lists reaping walks."""

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        emit: Callable[[MemberEvent], None],
        *,
        prune_delay: float,
    ) -> None:
        """*prune_delay* is how long a pruned member that is still leaving
        stays (BroadcastTimeout + LeavePropagateDelay), so its own leave can
        finish before it is erased."""
        self.reactor = reactor
        self.emit = emit
        self.prune_delay = prune_delay
        self.members: dict[str, MemberState] = {}
        self.failed: list[MemberState] = []
        self.left: list[MemberState] = []
        self.intents: dict[str, Intent] = {}
        self._prunes: dict[str, IDelayedCall] = {}

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self) -> Iterator[MemberState]:
        return iter(list(self.members.values()))

    def get(self, name: str) -> MemberState | None:
        return self.members.get(name)

    def snapshot(self) -> list[Member]:
        return [m.member() for m in self.members.values()]

    # --- memberlist events --------------------------------------------------

    def _decode_tags(self, node: Node) -> dict[str, str]:
        try:
            return decode_tags(node.meta)
        except DecodeError as e:
            self.log.error("Failed to decode tags of {node}: {e}", node=node.name, e=str(e))
            return {}

    def node_join(self, node: Node) -> None:
        """memberlist says *node* is alive (new, or back): member-join."""
        tags = self._decode_tags(node)
        member = self.members.get(node.name)
        if member is None:
            old_status = MemberStatus.NONE
            member = MemberState(name=node.name, addr=node.addr, port=node.port)
            join = self.intent(node.name, IntentType.JOIN)
            if join is not None:
                member.status_ltime = join
            leave = self.intent(node.name, IntentType.LEAVE)
            if leave is not None:
                member.status = MemberStatus.LEAVING
                member.status_ltime = leave
            self.members[node.name] = member
        else:
            old_status = member.status
            member.status = MemberStatus.ALIVE
            member.leave_time = 0.0
            self._cancel_prune(node.name)
        member.refresh(node, tags)
        if old_status in (MemberStatus.FAILED, MemberStatus.LEFT):
            self._drop_from_lists(member.name)
        self.log.info("EventMemberJoin: {name} {addr}", name=member.name, addr=member.addr)
        self.emit(MemberEvent(EventType.MEMBER_JOIN, (member.member(),)))

    def node_leave(self, node: Node) -> None:
        """memberlist says *node* is dead or left: member-leave or member-failed."""
        member = self.members.get(node.name)
        if member is None:
            return
        if member.status == MemberStatus.LEAVING:
            member.status = MemberStatus.LEFT
            member.leave_time = self.reactor.seconds()
            self.left.append(member)
            etype = EventType.MEMBER_LEAVE
        elif member.status == MemberStatus.ALIVE:
            member.status = MemberStatus.FAILED
            member.leave_time = self.reactor.seconds()
            self.failed.append(member)
            etype = EventType.MEMBER_FAILED
        else:
            self.log.warn("Bad state when leave: {status}", status=member.status.label)
            return
        # Go's wording, so what greps serf's log finds ours too.
        label = "EventMemberLeave" if etype == EventType.MEMBER_LEAVE else "EventMemberFailed"
        self.log.info("{label}: {name} {addr}", label=label, name=member.name, addr=member.addr)
        self.emit(MemberEvent(etype, (member.member(),)))

    def node_update(self, node: Node) -> None:
        """memberlist says *node* changed its meta: member-update."""
        member = self.members.get(node.name)
        if member is None:
            return
        member.refresh(node, self._decode_tags(node))
        self.log.info("EventMemberUpdate: {name}", name=member.name)
        self.emit(MemberEvent(EventType.MEMBER_UPDATE, (member.member(),)))

    # --- intents --------------------------------------------------------------

    def intent(self, name: str, kind: IntentType) -> int | None:
        intent = self.intents.get(name)
        if intent is not None and intent.type is kind:
            return intent.ltime
        return None

    def upsert_intent(self, name: str, kind: IntentType, ltime: int) -> bool:
        """Buffer an intent about an unknown node; True if it was news."""
        current = self.intents.get(name)
        if current is None or ltime > current.ltime:
            self.intents[name] = Intent(kind, ltime, self.reactor.seconds())
            return True
        return False

    def apply_join(self, member: MemberState, ltime: int) -> bool:
        """A join intent newer than what we hold; True means re-broadcast."""
        if ltime <= member.status_ltime:
            return False
        member.status_ltime = ltime
        if member.status == MemberStatus.LEAVING:
            member.status = MemberStatus.ALIVE
        return True

    def apply_leave(self, member: MemberState, ltime: int, prune: bool) -> bool:
        """A leave intent already found newer than ``status_ltime``; True means re-broadcast."""
        status = member.status
        if status == MemberStatus.ALIVE:
            member.status = MemberStatus.LEAVING
            member.status_ltime = ltime
        elif status == MemberStatus.FAILED:
            member.status = MemberStatus.LEFT
            member.status_ltime = ltime
            self._remove(self.failed, member.name)
            self.left.append(member)
            self.log.info("EventMemberLeave (forced): {name} {addr}", name=member.name, addr=member.addr)
            self.emit(MemberEvent(EventType.MEMBER_LEAVE, (member.member(),)))
        elif status not in (MemberStatus.LEAVING, MemberStatus.LEFT):
            return False
        if prune:
            self.prune(member)
        return True

    # --- erasing --------------------------------------------------------------

    def prune(self, member: MemberState) -> None:
        """Erase *member* now, or after the prune delay while it is still leaving."""
        if member.status == MemberStatus.LEAVING:
            if member.name not in self._prunes:
                self._prunes[member.name] = self.reactor.callLater(
                    self.prune_delay, self._prune_now, member
                )
            return
        self._prune_now(member)

    def _prune_now(self, member: MemberState) -> None:
        self._prunes.pop(member.name, None)
        if self.members.get(member.name) is not member:
            return
        self.log.info("EventMemberReap (forced): {name} {addr}", name=member.name, addr=member.addr)
        self._drop_from_lists(member.name)
        self.erase(member)

    def _cancel_prune(self, name: str) -> None:
        call = self._prunes.pop(name, None)
        if call is not None and call.active():
            call.cancel()

    def erase(self, member: MemberState) -> None:
        """Forget *member* entirely: member-reap."""
        self.members.pop(member.name, None)
        self._cancel_prune(member.name)
        self.emit(MemberEvent(EventType.MEMBER_REAP, (member.member(),)))

    def reap(self, reconnect_timeout: float, tombstone_timeout: float, intent_timeout: float) -> None:
        """Erase failed and left members past their timeouts; expire old intents."""
        now = self.reactor.seconds()
        for members, timeout in ((self.failed, reconnect_timeout), (self.left, tombstone_timeout)):
            for member in list(members):
                if now - member.leave_time <= timeout:
                    continue
                members.remove(member)
                self.log.info("EventMemberReap: {name}", name=member.name)
                self.erase(member)
        for name, intent in list(self.intents.items()):
            if now - intent.wall_time > intent_timeout:
                del self.intents[name]

    def reconnect_candidate(self, rng: random.Random) -> MemberState | None:
        """A random failed member to re-join, with probability failed/alive."""
        if not self.failed:
            return None
        alive = len(self.members) - len(self.failed) - len(self.left)
        if rng.random() > len(self.failed) / max(alive, 1):
            return None
        return rng.choice(self.failed)

    def cancel_timers(self) -> None:
        for call in self._prunes.values():
            if call.active():
                call.cancel()
        self._prunes.clear()

    # --- helpers ----------------------------------------------------------------

    @staticmethod
    def _remove(members: list[MemberState], name: str) -> None:
        members[:] = [m for m in members if m.name != name]

    def _drop_from_lists(self, name: str) -> None:
        self._remove(self.failed, name)
        self._remove(self.left, name)

    def has_alive_others(self, local: str) -> bool:
        return any(m.status == MemberStatus.ALIVE and m.name != local for m in self.members.values())

    def status_ltimes(self) -> dict[str, int]:
        return {name: m.status_ltime for name, m in self.members.items()}

    def left_names(self) -> list[str]:
        return [m.name for m in self.left]
