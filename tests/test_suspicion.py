# mypy: disable-error-code="no-untyped-call"
# (trial's assert* methods carry no annotations.)
"""Lifeguard's suspicion timer (spec §2.8), under a fake clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from flyteserf.memberlist.suspicion import Suspicion, remaining_suspicion_time
from flyteserf.memberlist.timing import suspicion_k, suspicion_timeout_bounds


class RemainingTimeTests(SynchronousTestCase):
    """``max − log(c+1)/log(k+1) × (max − min)``, floored to ms, at least min."""

    def test_lan_k2(self) -> None:
        # LAN, n >= 4: k = 2, min 4 s, max 24 s.
        self.assertEqual(
            [remaining_suspicion_time(c, 2, 0.0, 4.0, 24.0) for c in range(3)],
            [24.0, 11.381, 4.0],
        )

    def test_wan_k4(self) -> None:
        self.assertEqual(
            [remaining_suspicion_time(c, 4, 0.0, 30.0, 180.0) for c in range(5)],
            [180.0, 115.398, 77.609, 50.797, 30.0],
        )

    def test_k3(self) -> None:
        self.assertEqual(
            [remaining_suspicion_time(c, 3, 0.0, 5.0, 30.0) for c in range(4)],
            [30.0, 17.5, 10.187, 5.0],
        )

    def test_elapsed_subtracted(self) -> None:
        self.assertAlmostEqual(remaining_suspicion_time(1, 2, 3.0, 4.0, 24.0), 8.381)
        self.assertAlmostEqual(remaining_suspicion_time(2, 2, 10.0, 4.0, 24.0), -6.0)

    def test_never_below_min(self) -> None:
        # The ms floor would give 1.000, below a min that is not ms-aligned.
        self.assertEqual(remaining_suspicion_time(2, 2, 0.0, 1.0005, 6.003), 1.0005)


class SuspicionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.fired: list[int] = []

    def make(self, k: int = 2, min_timeout: float = 4.0, max_timeout: float = 24.0) -> Suspicion:
        return Suspicion(self.clock, "accuser", k, min_timeout, max_timeout, self.fired.append)

    def test_starts_at_max(self) -> None:
        s = self.make()
        self.assertEqual(s.remaining(), 24.0)
        self.clock.advance(23.999)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.001)
        self.assertEqual(self.fired, [0])
        self.assertFalse(s.active())
        self.assertEqual(s.remaining(), 0.0)

    def test_uses_only_call_later(self) -> None:
        self.make()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_accuser_is_not_a_confirmation(self) -> None:
        s = self.make()
        self.assertFalse(s.confirm("accuser"))
        self.assertEqual(s.confirmations, 0)
        self.assertEqual(s.remaining(), 24.0)

    def test_confirmations_shorten_from_start(self) -> None:
        s = self.make()
        self.clock.advance(2.0)
        self.assertTrue(s.confirm("b"))
        self.assertEqual(s.confirmations, 1)
        self.assertAlmostEqual(s.remaining(), 11.381 - 2.0)
        self.assertFalse(s.confirm("b"), "a repeated confirmation is not new")
        self.clock.advance(1.0)
        self.assertTrue(s.confirm("c"))
        self.assertAlmostEqual(s.remaining(), 4.0 - 3.0)
        self.assertFalse(s.confirm("d"), "k confirmations already in")
        self.assertEqual(s.confirmations, 2)
        self.clock.advance(0.999)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.001)
        self.assertEqual(self.fired, [2])

    def test_one_confirmation_expiry(self) -> None:
        s = self.make()
        s.confirm("b")
        self.clock.advance(11.380)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.001)
        self.assertEqual(self.fired, [1])

    def test_overdue_fires_at_once(self) -> None:
        s = self.make()
        self.clock.advance(12.0)
        self.assertTrue(s.confirm("b"))  # new timeout 11.381 s < 12 s elapsed
        self.assertEqual(self.fired, [], "never fires inside confirm()")
        self.assertEqual(s.remaining(), 0.0)
        self.clock.advance(0)
        self.assertEqual(self.fired, [1])

    def test_k_zero_starts_at_min(self) -> None:
        # 3-node LAN cluster: k = 0, the timer is a flat 4 s [obs].
        n = 3
        min_t, max_t = suspicion_timeout_bounds(4, 6, n, 1.0)
        s = self.make(k=suspicion_k(4, n), min_timeout=min_t, max_timeout=max_t)
        self.assertEqual(s.remaining(), 4.0)
        self.assertFalse(s.confirm("b"))
        self.assertEqual(s.remaining(), 4.0)
        self.clock.advance(4.0)
        self.assertEqual(self.fired, [0])

    def test_cancel(self) -> None:
        s = self.make()
        s.confirm("b")
        s.cancel()
        self.assertFalse(s.active())
        self.clock.advance(100)
        self.assertEqual(self.fired, [])
        s.cancel()  # idempotent

    def test_confirm_after_cancel_does_not_revive(self) -> None:
        s = self.make()
        s.cancel()
        self.assertTrue(s.confirm("b"))
        self.clock.advance(100)
        self.assertEqual(self.fired, [])

    def test_confirm_after_fire_does_not_refire(self) -> None:
        s = self.make()
        self.clock.advance(24)
        self.assertEqual(self.fired, [0])
        s.confirm("b")
        self.clock.advance(100)
        self.assertEqual(self.fired, [0])

    def test_each_confirmation_count(self) -> None:
        # WAN-sized k: check every step of the curve lands where the formula says.
        expected = [115.398, 77.609, 50.797, 30.0]
        for c, when in enumerate(expected, start=1):
            clock = Clock()
            fired: list[int] = []
            s = Suspicion(clock, "x", 4, 30.0, 180.0, fired.append)
            for i in range(c):
                self.assertTrue(s.confirm(f"peer{i}"))
            self.assertAlmostEqual(s.remaining(), when)
            clock.advance(when - 0.001)
            self.assertEqual(fired, [])
            clock.advance(0.001)
            self.assertEqual(fired, [c])
