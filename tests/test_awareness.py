# mypy: disable-error-code="no-untyped-call"
# (trial's assert* methods carry no annotations.)
"""Lifeguard's health score (spec §2.8, awareness)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from flyteserf.memberlist.awareness import Awareness


class AwarenessTests(SynchronousTestCase):
    def test_starts_healthy(self) -> None:
        a = Awareness(8)
        self.assertEqual(a.score, 0)
        self.assertEqual(a.scale_timeout(1.0), 1.0)

    def test_delta_and_scale(self) -> None:
        a = Awareness(8)
        self.assertTrue(a.apply_delta(3))
        self.assertEqual(a.score, 3)
        self.assertEqual(a.scale_timeout(1.0), 4.0)
        self.assertEqual(a.scale_timeout(0.5), 2.0)
        self.assertTrue(a.apply_delta(-1))
        self.assertEqual(a.score, 2)

    def test_clamped_high(self) -> None:
        a = Awareness(8)
        self.assertTrue(a.apply_delta(100))
        self.assertEqual(a.score, 7)
        self.assertFalse(a.apply_delta(1))
        self.assertEqual(a.score, 7)
        self.assertEqual(a.scale_timeout(1.0), 8.0)

    def test_clamped_low(self) -> None:
        a = Awareness(8)
        self.assertFalse(a.apply_delta(-1))
        self.assertEqual(a.score, 0)
        a.apply_delta(2)
        self.assertTrue(a.apply_delta(-5))
        self.assertEqual(a.score, 0)

    def test_max_one_never_scales(self) -> None:
        a = Awareness(1)
        self.assertFalse(a.apply_delta(5))
        self.assertEqual(a.score, 0)
        self.assertEqual(a.scale_timeout(2.0), 2.0)

    def test_rejects_zero_max(self) -> None:
        with self.assertRaises(ValueError):
            Awareness(0)
