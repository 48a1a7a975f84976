# mypy: disable-error-code="no-untyped-call"
# (trial's assert* methods carry no annotations.)
"""memberlist profiles (spec §2.10) and the cluster-size scaling helpers."""

from __future__ import annotations

import random

import attrs
from twisted.trial.unittest import SynchronousTestCase

from flyteserf.memberlist.config import PROFILES, MemberlistConfig, Profile
from flyteserf.memberlist.timing import (
    push_pull_scale,
    random_stagger,
    retransmit_limit,
    suspicion_k,
    suspicion_timeout,
    suspicion_timeout_bounds,
)


class ProfileTests(SynchronousTestCase):
    """The three profiles carry memberlist 0.2.2's DefaultXConfig values."""

    def assertProfile(self, config: MemberlistConfig, **expected: object) -> None:
        actual = attrs.asdict(config)
        for key, value in expected.items():
            self.assertEqual(actual[key], value, key)
        common = {
            "suspicion_max_timeout_mult": 6,
            "awareness_max_multiplier": 8,
            "dead_node_reclaim_time": 0.0,
            "disable_tcp_pings": False,
            "udp_buffer_size": 1400,
            "handoff_queue_depth": 1024,
            "enable_compression": True,
            "protocol_version": 2,
        }
        for key, value in common.items():
            self.assertEqual(actual[key], value, key)

    def test_lan(self) -> None:
        self.assertProfile(
            MemberlistConfig.lan(),
            probe_interval=1.0,
            probe_timeout=0.5,
            gossip_interval=0.2,
            gossip_nodes=3,
            suspicion_mult=4,
            retransmit_mult=4,
            push_pull_interval=30.0,
            tcp_timeout=10.0,
            indirect_checks=3,
            gossip_to_the_dead_time=30.0,
        )

    def test_wan(self) -> None:
        self.assertProfile(
            MemberlistConfig.wan(),
            probe_interval=5.0,
            probe_timeout=3.0,
            gossip_interval=0.5,
            gossip_nodes=4,
            suspicion_mult=6,
            retransmit_mult=4,
            push_pull_interval=60.0,
            tcp_timeout=30.0,
            indirect_checks=3,
            gossip_to_the_dead_time=60.0,
        )

    def test_local(self) -> None:
        self.assertProfile(
            MemberlistConfig.local(),
            probe_interval=1.0,
            probe_timeout=0.2,
            gossip_interval=0.1,
            gossip_nodes=3,
            suspicion_mult=3,
            retransmit_mult=2,
            push_pull_interval=15.0,
            tcp_timeout=1.0,
            indirect_checks=1,
            gossip_to_the_dead_time=15.0,
        )

    def test_default_is_lan(self) -> None:
        self.assertEqual(MemberlistConfig(), MemberlistConfig.lan())

    def test_profiles_table(self) -> None:
        self.assertEqual(sorted(PROFILES), ["lan", "local", "wan"])
        self.assertEqual(PROFILES["lan"], MemberlistConfig.lan())
        self.assertEqual(PROFILES["wan"], MemberlistConfig.wan())
        self.assertEqual(PROFILES["local"], MemberlistConfig.local())
        self.assertIs(Profile, MemberlistConfig)

    def test_profiles_read_only(self) -> None:
        with self.assertRaises(TypeError):
            PROFILES["custom"] = MemberlistConfig()  # type: ignore[index]

    def test_frozen(self) -> None:
        config = MemberlistConfig()
        with self.assertRaises(attrs.exceptions.FrozenInstanceError):
            config.probe_interval = 2.0  # type: ignore[misc]

    def test_evolve(self) -> None:
        base = MemberlistConfig.lan()
        changed = base.evolve(probe_interval=2, enable_compression=False)
        self.assertEqual(changed.probe_interval, 2.0)
        self.assertIsInstance(changed.probe_interval, float)
        self.assertFalse(changed.enable_compression)
        self.assertEqual(base.probe_interval, 1.0)
        self.assertEqual(changed.gossip_nodes, base.gossip_nodes)

    def test_rejects_bad_values(self) -> None:
        with self.assertRaises(ValueError) as cm:
            MemberlistConfig(probe_interval=0)
        self.assertIn("probe_interval", str(cm.exception))
        with self.assertRaises(ValueError):
            MemberlistConfig(gossip_nodes=-1)
        with self.assertRaises(ValueError):
            MemberlistConfig.lan().evolve(retransmit_mult=0)

    def test_derived_lan(self) -> None:
        lan = MemberlistConfig.lan()
        self.assertEqual(lan.retransmit_limit(5), 4)
        self.assertEqual(lan.suspicion_bounds(3), (4.0, 24.0))
        self.assertEqual(lan.suspicion_k(3), 0)
        self.assertEqual(lan.suspicion_k(4), 2)
        self.assertEqual(lan.push_pull_interval_for(100), 30.0 * 3)


class RetransmitLimitTests(SynchronousTestCase):
    """``mult × ceil(log10(n + 1))``."""

    def test_lan_tiers(self) -> None:
        for n in range(1, 10):
            self.assertEqual(retransmit_limit(4, n), 4, n)
        for n in (10, 11, 50, 98, 99):
            self.assertEqual(retransmit_limit(4, n), 8, n)
        for n in (100, 500, 999):
            self.assertEqual(retransmit_limit(4, n), 12, n)
        self.assertEqual(retransmit_limit(4, 1000), 16)

    def test_empty_cluster(self) -> None:
        self.assertEqual(retransmit_limit(4, 0), 0)
        self.assertEqual(retransmit_limit(4, -1), 0)

    def test_local_mult(self) -> None:
        self.assertEqual(retransmit_limit(2, 3), 2)
        self.assertEqual(retransmit_limit(2, 10), 4)


class SuspicionTimeoutTests(SynchronousTestCase):
    """``min = mult × max(1, log10(max(1, n))) × interval``, ``max = maxmult × min``."""

    def test_lan_small_clusters(self) -> None:
        for n in (0, 1, 2, 3, 9, 10):
            self.assertEqual(suspicion_timeout_bounds(4, 6, n, 1.0), (4.0, 24.0), n)

    def test_lan_hundred(self) -> None:
        self.assertEqual(suspicion_timeout_bounds(4, 6, 100, 1.0), (8.0, 48.0))

    def test_node_scale_truncated_to_thousandths(self) -> None:
        # log10(50) = 1.69897...; Go keeps 1698/1000, giving 6.792 s, not 6.7959 s.
        self.assertEqual(suspicion_timeout(4, 50, 1.0), 6.792)
        self.assertEqual(suspicion_timeout_bounds(4, 6, 50, 1.0), (6.792, 40.752))

    def test_wan_and_local(self) -> None:
        self.assertEqual(suspicion_timeout_bounds(6, 6, 3, 5.0), (30.0, 180.0))
        self.assertEqual(suspicion_timeout_bounds(3, 6, 3, 1.0), (3.0, 18.0))

    def test_sub_second_interval(self) -> None:
        self.assertEqual(suspicion_timeout(3, 1000, 0.1), 0.9)

    def test_k(self) -> None:
        self.assertEqual(suspicion_k(4, 3), 0)  # n - 2 = 1 < 2
        self.assertEqual(suspicion_k(4, 4), 2)
        self.assertEqual(suspicion_k(6, 5), 0)
        self.assertEqual(suspicion_k(6, 6), 4)
        self.assertEqual(suspicion_k(3, 2), 0)
        self.assertEqual(suspicion_k(3, 3), 1)


class PushPullScaleTests(SynchronousTestCase):
    def test_unscaled_up_to_32(self) -> None:
        for n in (0, 1, 10, 32):
            self.assertEqual(push_pull_scale(30.0, n), 30.0)

    def test_scaled(self) -> None:
        self.assertEqual(push_pull_scale(30.0, 33), 60.0)
        self.assertEqual(push_pull_scale(30.0, 64), 60.0)
        self.assertEqual(push_pull_scale(30.0, 65), 90.0)
        self.assertEqual(push_pull_scale(30.0, 128), 90.0)
        self.assertEqual(push_pull_scale(30.0, 129), 120.0)


class RandomStaggerTests(SynchronousTestCase):
    def test_within_interval(self) -> None:
        rng = random.Random(7)
        values = [random_stagger(rng, 0.2) for _ in range(2000)]
        self.assertTrue(all(0.0 <= v < 0.2 for v in values))
        # Spread over the whole interval, not stuck at one end.
        self.assertLess(min(values), 0.01)
        self.assertGreater(max(values), 0.19)

    def test_deterministic_with_seed(self) -> None:
        a = [random_stagger(random.Random(1), 1.0) for _ in range(3)]
        b = [random_stagger(random.Random(1), 1.0) for _ in range(3)]
        self.assertEqual(a, b)

    def test_zero_interval(self) -> None:
        self.assertEqual(random_stagger(random.Random(1), 0.0), 0.0)
