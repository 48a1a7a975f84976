"""Tests for :mod:`flyteserf.tap`, the ``twist flyteserf`` options and service."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from io import StringIO
from types import FrameType
from typing import Any

from twisted.application.service import IService, IServiceMaker, MultiService
from twisted.internet import defer, protocol, utils
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IProcessTransport, IReactorProcess
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

import flyteserf
from flyteserf import __version__, tap
from flyteserf.agent.agent import Agent
from flyteserf.agent.health import HEALTHY_BODY, HealthService
from flyteserf.tap import (
    GracefulShutdown,
    NodeConfig,
    Options,
    agent_config,
    makeService,
    parse_go_duration,
    serf_log_level,
)
from flyteserf.testing.serf_binary import find_free_port, skip_unless_serf, start_serf_agent
from flyteserf.wire.keyring import Keyring

KEY16 = base64.b64encode(bytes(range(16))).decode()
KEY32 = base64.b64encode(bytes(range(32))).decode()


def parse(argv: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> NodeConfig:
    return parse_options(argv, environ).config


def parse_options(argv: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> Options:
    options = Options(environ={} if environ is None else environ, exit_on_error=False)
    options.parseOptions(list(argv))
    return options


class DefaultsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """With no options and no environment, the Go pack's defaults apply."""
        self.assertEqual(
            parse(),
            NodeConfig(
                node_name="flyte-serf",
                bind=("0.0.0.0", 7946),
                advertise=None,
                join=(),
                encrypt_key=None,
                keyring_file=None,
                tags={"role": "flyte-serf"},
                profile="lan",
                log_level="INFO",
            ),
        )

    def test_agent_defaults(self) -> None:
        """serf agent's defaults for the agent options, the Go pack's health port."""
        config = parse()
        self.assertEqual(config.rpc_addr, ("127.0.0.1", 7373))
        self.assertEqual(config.rpc_auth, "")
        self.assertEqual(config.event_handlers, ())
        self.assertIsNone(config.snapshot)
        self.assertFalse(config.rejoin)
        self.assertFalse(config.replay)
        self.assertEqual(config.retry_join, ())
        self.assertEqual(config.retry_interval, 30.0)
        self.assertEqual(config.retry_max, 0)
        self.assertEqual(config.user_event_size_limit, 512)
        self.assertEqual(config.health_port, 8090)
        self.assertIsNone(config.keyring)

    def test_everything_on_the_command_line(self) -> None:
        snapshot = os.path.join(os.path.abspath(self.mktemp()))
        config = parse(
            [
                "--node=n1",
                "--bind=[::1]:7000",
                "--advertise=10.0.0.5",
                "--join=10.0.0.6",
                "--join",
                "seed.example:7001",
                "--encrypt",
                KEY32,
                "--tag=dc=eu",
                "--tag",
                "role=web",
                "--profile=WAN",
                "--log-level=debug",
                "--rpc-addr=127.0.0.1:7000",
                "--rpc-auth=s3cret",
                "--event-handler=user:deploy=/bin/deploy.sh",
                "--event-handler",
                "member-join,member-leave=echo joined",
                f"--snapshot={snapshot}",
                "--rejoin",
                "--replay",
                "--retry-join=10.0.0.7",
                "--retry-join=[fd00::8]:7002",
                "--retry-interval=1m30s",
                "--retry-max=5",
                "--user-event-size-limit=9216",
                "--health-port=9000",
            ]
        )
        self.assertEqual(config.node_name, "n1")
        self.assertEqual(config.bind, ("::1", 7000))
        # The advertise port defaults to the bind port, as in serf.
        self.assertEqual(config.advertise, ("10.0.0.5", 7000))
        self.assertEqual(config.join, (("10.0.0.6", 7946), ("seed.example", 7001)))
        self.assertEqual(config.encrypt_key, bytes(range(32)))
        self.assertEqual(config.tags, {"role": "web", "dc": "eu"})
        self.assertEqual(config.profile, "wan")
        self.assertEqual(config.log_level, "DEBUG")
        self.assertEqual(config.rpc_addr, ("127.0.0.1", 7000))
        self.assertEqual(config.rpc_auth, "s3cret")
        self.assertEqual(
            config.event_handlers,
            ("user:deploy=/bin/deploy.sh", "member-join,member-leave=echo joined"),
        )
        self.assertEqual(config.snapshot, snapshot)
        self.assertTrue(config.rejoin)
        self.assertTrue(config.replay)
        self.assertEqual(config.retry_join, (("10.0.0.7", 7946), ("fd00::8", 7002)))
        self.assertEqual(config.retry_interval, 90.0)
        self.assertEqual(config.retry_max, 5)
        self.assertEqual(config.user_event_size_limit, 9216)
        self.assertEqual(config.health_port, 9000)

    def test_secrets_not_shown(self) -> None:
        config = parse(["--encrypt", KEY16, "--rpc-auth=tok3n"])
        self.assertNotIn(KEY16, repr(config))
        self.assertNotIn(repr(bytes(range(16))), repr(config))
        self.assertNotIn(KEY16, config.describe())
        self.assertIn("AES-128", config.describe())
        self.assertNotIn("tok3n", repr(config))
        self.assertNotIn("tok3n", config.describe())
        self.assertIn("rpc 127.0.0.1:7373 (auth token set)", config.describe())

    def test_describe_is_one_line(self) -> None:
        config = parse(
            [
                "--retry-join=10.0.0.7",
                "--retry-max=3",
                "--retry-interval=90s",
                "--rpc-addr=off",
                "--health-port=0",
                "--event-handler=a.sh",
                "--replay",
            ]
        )
        text = config.describe()
        self.assertNotIn("\n", text)
        self.assertIn("retry join 10.0.0.7:7946 every 1m30s (3 attempts)", text)
        self.assertIn("rpc off", text)
        self.assertIn("health port off", text)
        self.assertIn("event handlers 1", text)
        self.assertIn("replay on join", text)

    def test_log_level_aliases(self) -> None:
        for given, expected in [
            ("trace", "TRACE"),
            ("Info", "INFO"),
            ("warning", "WARN"),
            ("error", "ERR"),
            ("err", "ERR"),
        ]:
            self.assertEqual(parse(["--log-level", given]).log_level, expected)

    def test_bind_port_zero(self) -> None:
        """Port 0 (any free port) is allowed for binding."""
        self.assertEqual(parse(["--bind=127.0.0.1:0"]).bind, ("127.0.0.1", 0))

    def test_rpc_off(self) -> None:
        """An empty --rpc-addr, or 'off' anywhere, turns RPC off."""
        self.assertIsNone(parse(["--rpc-addr="]).rpc_addr)
        self.assertIsNone(parse(["--rpc-addr", "OFF"]).rpc_addr)
        self.assertIsNone(parse(environ={"SERF_RPC_ADDR": "off"}).rpc_addr)
        # An empty variable is unset, as for every other option.
        self.assertEqual(parse(environ={"SERF_RPC_ADDR": ""}).rpc_addr, ("127.0.0.1", 7373))

    def test_rpc_addr_forms(self) -> None:
        self.assertEqual(parse(["--rpc-addr=0.0.0.0"]).rpc_addr, ("0.0.0.0", 7373))
        self.assertEqual(parse(["--rpc-addr=[::1]:7400"]).rpc_addr, ("::1", 7400))
        host, port = parse(["--rpc-addr=localhost:7401"]).rpc_addr or ("", 0)
        self.assertIn(host, ("127.0.0.1", "::1"))
        self.assertEqual(port, 7401)

    def test_event_handler_without_filter(self) -> None:
        """Serf's rule: a spec without '=' is a script for every event."""
        self.assertEqual(parse(["--event-handler=/bin/handle"]).event_handlers, ("/bin/handle",))
        self.assertEqual(parse(["--event-handler=*=A=1 run"]).event_handlers, ("*=A=1 run",))

    def test_keyring_loaded(self) -> None:
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write(json.dumps([KEY32, KEY16]))
        config = parse(["--keyring-file", path])
        assert config.keyring is not None
        self.assertEqual(config.keyring.keys, (bytes(range(32)), bytes(range(16))))
        self.assertEqual(config.keyring.primary_key, bytes(range(32)))
        # Not compared: the file path is what identifies the configuration.
        self.assertEqual(config, NodeConfig(keyring_file=path))


class DurationTests(SynchronousTestCase):
    def test_valid(self) -> None:
        for text, seconds in [
            ("30s", 30.0),
            ("1m", 60.0),
            ("1m30s", 90.0),
            ("1.5h", 5400.0),
            ("300ms", 0.3),
            (".5s", 0.5),
            ("1.s", 1.0),
            ("0", 0.0),
            ("-2s", -2.0),
            ("1h2m3s4ms5us6ns", 3723.004005006),
            ("2\u00b5s", 2e-6),
        ]:
            self.assertAlmostEqual(parse_go_duration(text), seconds, msg=text)

    def test_go_error_texts(self) -> None:
        for text, error in [
            ("30", 'time: missing unit in duration "30"'),
            ("x", 'time: invalid duration "x"'),
            ("", 'time: invalid duration ""'),
            ("s", 'time: invalid duration "s"'),
            ("1x", 'time: unknown unit "x" in duration "1x"'),
            ("1s2", 'time: missing unit in duration "1s2"'),
            (".s", 'time: invalid duration ".s"'),
        ]:
            with self.assertRaises(ValueError) as caught:
                parse_go_duration(text)
            self.assertEqual(str(caught.exception), error)


class EnvironmentTests(SynchronousTestCase):
    environ = {
        "SERF_NODE_NAME": "env-node",
        "SERF_BIND": "127.0.0.1:7001",
        "SERF_ADVERTISE": "192.0.2.1:7002",
        "SERF_JOIN_HOSTS": "10.0.0.1, 10.0.0.2:7003,,",
        "SERF_ENCRYPT_KEY": KEY16,
        "SERF_TAGS": "dc=eu, rack=r1",
        "SERF_PROFILE": "local",
        "LOGLEVEL": "warn",
        "SERF_RPC_ADDR": "127.0.0.1:7004",
        "SERF_RPC_AUTH": "env-token",
        "SERF_EVENT_HANDLERS": "user:deploy=/bin/deploy\n\n  member-join=echo hi  \n",
        "SERF_REJOIN": "true",
        "SERF_REPLAY": "1",
        "SERF_RETRY_JOIN": "10.0.0.3,10.0.0.4:7005",
        "SERF_RETRY_INTERVAL": "10s",
        "SERF_RETRY_MAX": "7",
        "SERF_USER_EVENT_SIZE_LIMIT": "1024",
        "SERF_HEALTH_PORT": "9001",
    }

    def setUp(self) -> None:
        snapshot = os.path.abspath(self.mktemp())
        self.environ = dict(self.environ, SERF_SNAPSHOT=snapshot)

    def test_environment(self) -> None:
        """Each option's twin is read; lists are comma-separated and trimmed."""
        config = parse(environ=self.environ)
        self.assertEqual(config.node_name, "env-node")
        self.assertEqual(config.bind, ("127.0.0.1", 7001))
        self.assertEqual(config.advertise, ("192.0.2.1", 7002))
        self.assertEqual(config.join, (("10.0.0.1", 7946), ("10.0.0.2", 7003)))
        self.assertEqual(config.encrypt_key, bytes(range(16)))
        self.assertEqual(config.tags, {"role": "flyte-serf", "dc": "eu", "rack": "r1"})
        self.assertEqual(config.profile, "local")
        self.assertEqual(config.log_level, "WARN")
        self.assertEqual(config.rpc_addr, ("127.0.0.1", 7004))
        self.assertEqual(config.rpc_auth, "env-token")
        # One handler per line: filters have commas in them.
        self.assertEqual(config.event_handlers, ("user:deploy=/bin/deploy", "member-join=echo hi"))
        self.assertEqual(config.snapshot, self.environ["SERF_SNAPSHOT"])
        self.assertTrue(config.rejoin)
        self.assertTrue(config.replay)
        self.assertEqual(config.retry_join, (("10.0.0.3", 7946), ("10.0.0.4", 7005)))
        self.assertEqual(config.retry_interval, 10.0)
        self.assertEqual(config.retry_max, 7)
        self.assertEqual(config.user_event_size_limit, 1024)
        self.assertEqual(config.health_port, 9001)

    def test_command_line_wins(self) -> None:
        snapshot = os.path.abspath(self.mktemp())
        config = parse(
            [
                "--node=cli",
                "--bind=127.0.0.2",
                "--join=10.9.9.9",
                "--tag=x=y",
                "--profile=lan",
                "--log-level=ERR",
                "--encrypt",
                KEY32,
                "--rpc-addr=127.0.0.1:7100",
                "--rpc-auth=cli-token",
                "--event-handler=query=answer.sh",
                f"--snapshot={snapshot}",
                "--retry-join=10.8.8.8",
                "--retry-interval=2s",
                "--retry-max=1",
                "--user-event-size-limit=100",
                "--health-port=0",
            ],
            environ=self.environ,
        )
        self.assertEqual(config.node_name, "cli")
        self.assertEqual(config.bind, ("127.0.0.2", 7946))
        self.assertEqual(config.join, (("10.9.9.9", 7946),))
        self.assertEqual(config.tags, {"role": "flyte-serf", "x": "y"})
        self.assertEqual(config.profile, "lan")
        self.assertEqual(config.log_level, "ERR")
        self.assertEqual(config.encrypt_key, bytes(range(32)))
        self.assertEqual(config.rpc_addr, ("127.0.0.1", 7100))
        self.assertEqual(config.rpc_auth, "cli-token")
        self.assertEqual(config.event_handlers, ("query=answer.sh",))
        self.assertEqual(config.snapshot, snapshot)
        self.assertEqual(config.retry_join, (("10.8.8.8", 7946),))
        self.assertEqual(config.retry_interval, 2.0)
        self.assertEqual(config.retry_max, 1)
        self.assertEqual(config.user_event_size_limit, 100)
        self.assertEqual(config.health_port, 0)
        # A flag on the command line beats a false twin.
        self.assertTrue(parse(["--replay"], environ={"SERF_REPLAY": "false"}).replay)
        # An empty --rpc-addr (RPC off) beats the twin too.
        self.assertIsNone(parse(["--rpc-addr="], environ=self.environ).rpc_addr)

    def test_empty_means_unset(self) -> None:
        config = parse(environ={name: "" for name in tap.ENVIRONMENT.values()})
        self.assertEqual(config, parse())

    def test_flag_twins(self) -> None:
        for text in ("1", "true", "TRUE", "t", "yes", "on"):
            self.assertTrue(parse(environ={"SERF_REPLAY": text}).replay, text)
        for text in ("0", "false", "False", "f", "no", "off"):
            self.assertFalse(parse(environ={"SERF_REPLAY": text}).replay, text)

    def test_keyring_file(self) -> None:
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write(f'["{KEY16}"]')
        self.assertEqual(parse(environ={"SERF_KEYRING_FILE": path}).keyring_file, path)
        self.assertIn(f"keyring {path}", parse(["--keyring-file", path]).describe())


class ValidationTests(SynchronousTestCase):
    def assertUsageError(
        self,
        argv: Sequence[str],
        *fragments: str,
        environ: Mapping[str, str] | None = None,
    ) -> str:
        with self.assertRaises(usage.UsageError) as caught:
            parse(argv, environ)
        message = str(caught.exception)
        for fragment in fragments:
            self.assertIn(fragment, message)
        self.assertNotIn("\n", message)
        return message

    def test_bad_port(self) -> None:
        self.assertUsageError(["--bind=0.0.0.0:99999"], "--bind", "99999", "65535")
        self.assertUsageError(["--advertise=10.0.0.1:0"], "--advertise", "range")
        self.assertUsageError(["--join=10.0.0.1:x"], "--join", "'x'")

    def test_bad_host(self) -> None:
        self.assertUsageError(["--bind=no such host"], "--bind", "'no such host'")
        self.assertUsageError(["--bind="], "--bind", "empty")

    def test_bad_value_from_environment_names_the_variable(self) -> None:
        self.assertUsageError([], "SERF_BIND", "70000", environ={"SERF_BIND": "1.2.3.4:70000"})
        self.assertUsageError(
            [], "SERF_JOIN_HOSTS", "'bad/host'", environ={"SERF_JOIN_HOSTS": "ok,bad/host"}
        )
        self.assertUsageError([], "SERF_TAGS", "'novalue'", environ={"SERF_TAGS": "novalue"})

    def test_bad_tag(self) -> None:
        self.assertUsageError(["--tag=foo"], "--tag", "'foo'", "KEY=VALUE")
        self.assertUsageError(["--tag==bar"], "--tag", "'=bar'")

    def test_tag_value_may_hold_equals_sign(self) -> None:
        self.assertEqual(parse(["--tag=expr=a=b"]).tags["expr"], "a=b")

    def test_unknown_profile(self) -> None:
        self.assertUsageError(["--profile=moon"], "--profile", "'moon'", "lan, wan or local")

    def test_unknown_log_level(self) -> None:
        self.assertUsageError(["--log-level=loud"], "--log-level", "'loud'", "TRACE")

    def test_blank_node_name(self) -> None:
        self.assertUsageError(["--node= "], "--node", "blank")

    def test_bad_key(self) -> None:
        secret = "not base64!"
        message = self.assertUsageError(["--encrypt", secret], "--encrypt", "base64")
        self.assertNotIn(secret, message)
        self.assertUsageError(
            ["--encrypt", base64.b64encode(b"short").decode()], "5 bytes", "serf keygen"
        )

    def test_encrypt_and_keyring(self) -> None:
        """Serf's own text for the conflict, whatever the file."""
        self.assertUsageError(
            ["--encrypt", KEY16, "--keyring-file", "/nonexistent"],
            "Encryption key not allowed while using a keyring",
        )
        self.assertUsageError(
            [],
            "Encryption key not allowed while using a keyring",
            "SERF_ENCRYPT_KEY",
            environ={"SERF_ENCRYPT_KEY": KEY16, "SERF_KEYRING_FILE": "/x"},
        )

    def test_missing_keyring_file(self) -> None:
        self.assertUsageError(["--keyring-file=/nonexistent/k.json"], "'/nonexistent/k.json'")

    def test_bad_keyring_file(self) -> None:
        """The file is read while checking options: a bad one is a usage error, not a crash."""
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write('["not base64!"]')
        self.assertUsageError(["--keyring-file", path], "--keyring-file", path, "key #1")
        with open(path, "w") as handle:
            handle.write("[]")
        self.assertUsageError(
            [], "SERF_KEYRING_FILE", "no keys", environ={"SERF_KEYRING_FILE": path}
        )

    def test_unknown_option(self) -> None:
        self.assertUsageError(["--nope"], "nope")

    def test_bad_rpc_addr(self) -> None:
        self.assertUsageError(["--rpc-addr=127.0.0.1:99999"], "--rpc-addr", "99999", "65535")
        self.assertUsageError(["--rpc-addr=127.0.0.1:0"], "--rpc-addr", "from 1 to 65535")
        self.assertUsageError(
            [], "SERF_RPC_ADDR", "'x y'", environ={"SERF_RPC_ADDR": "x y:7373"}
        )
        self.assertUsageError(
            ["--rpc-addr=no-such-host.invalid:7373"], "--rpc-addr", "cannot resolve",
            "'no-such-host.invalid'",
        )

    def test_bad_event_handler(self) -> None:
        """Serf's own text, and what a filter may hold."""
        self.assertUsageError(
            ["--event-handler=foo=bar"],
            "--event-handler: Invalid event script: Event 'foo' invoking 'bar'",
            "member-join",
        )
        self.assertUsageError(
            ["--event-handler=user:deploy=a.sh", "--event-handler=user,nope=b.sh"],
            "Event 'nope' invoking 'b.sh'",
        )
        self.assertUsageError(
            [],
            "SERF_EVENT_HANDLERS: Invalid event script: Event 'FOO' invoking '1 run.sh'",
            environ={"SERF_EVENT_HANDLERS": "ok.sh\nFOO=1 run.sh"},
        )
        self.assertUsageError(["--event-handler=user="], "--event-handler", "'user='", "no script")

    def test_bad_snapshot(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        self.assertUsageError([f"--snapshot={directory}"], "--snapshot", "is a directory")
        missing = os.path.join(directory, "nope", "snap")
        self.assertUsageError(
            [], "SERF_SNAPSHOT", "does not exist", environ={"SERF_SNAPSHOT": missing}
        )

    def test_rejoin_needs_snapshot(self) -> None:
        self.assertUsageError(["--rejoin"], "--rejoin", "--snapshot")
        self.assertUsageError([], "SERF_REJOIN", "--snapshot", environ={"SERF_REJOIN": "yes"})

    def test_bad_flag_twin(self) -> None:
        self.assertUsageError(
            [], "SERF_REPLAY", "'maybe'", "true or false", environ={"SERF_REPLAY": "maybe"}
        )

    def test_bad_retry_interval(self) -> None:
        self.assertUsageError(
            ["--retry-interval=30"],
            '--retry-interval: time: missing unit in duration "30"',
            "30s",
        )
        self.assertUsageError(
            [], "SERF_RETRY_INTERVAL", 'unknown unit "d"', environ={"SERF_RETRY_INTERVAL": "1d"}
        )
        self.assertUsageError(["--retry-interval=500ms"], "500ms", "minimum of 1s")
        self.assertUsageError(["--retry-interval=-5s"], "minimum of 1s")
        self.assertEqual(parse(["--retry-interval=1s"]).retry_interval, 1.0)

    def test_bad_retry_max(self) -> None:
        self.assertUsageError(["--retry-max=-1"], "--retry-max", "-1", "0: no limit")
        self.assertUsageError([], "SERF_RETRY_MAX", "'lots'", environ={"SERF_RETRY_MAX": "lots"})

    def test_user_event_size_limit(self) -> None:
        # Serf's own words when it is too large.
        self.assertUsageError(
            ["--user-event-size-limit=9217"],
            "--user-event-size-limit: user event size limit exceeds limit of 9216 bytes",
            "1 to 9216",
        )
        self.assertUsageError(["--user-event-size-limit=0"], "0 is too small", "1 to 9216")
        self.assertUsageError(
            [], "SERF_USER_EVENT_SIZE_LIMIT", "'1k'", environ={"SERF_USER_EVENT_SIZE_LIMIT": "1k"}
        )
        self.assertEqual(parse(["--user-event-size-limit=1"]).user_event_size_limit, 1)

    def test_bad_health_port(self) -> None:
        self.assertUsageError(["--health-port=70000"], "--health-port", "70000", "0 (off)")
        self.assertUsageError([], "SERF_HEALTH_PORT", "'http'", environ={"SERF_HEALTH_PORT": "http"})


class ExitOnErrorTests(SynchronousTestCase):
    def assertExits(self, argv: list[str], line: str) -> None:
        stderr = StringIO()
        self.patch(sys, "stderr", stderr)
        options = Options(environ={})
        with self.assertRaises(SystemExit) as caught:
            options.parseOptions(argv)
        self.assertEqual(caught.exception.code, 64)
        self.assertEqual(stderr.getvalue(), line)

    def test_one_line_and_exit_64(self) -> None:
        """Under twist, a bad option prints one line to stderr and exits 64."""
        self.assertExits(
            ["--profile=moon"],
            "twist flyteserf: error: --profile: unknown profile 'moon'; use lan, wan or local\n",
        )

    def test_new_options_too(self) -> None:
        self.assertExits(
            ["--retry-interval=5"],
            'twist flyteserf: error: --retry-interval: time: missing unit in duration "5"; '
            "write a Go duration such as 30s, 1m or 1m30s\n",
        )
        self.assertExits(
            ["--user-event-size-limit=10000"],
            "twist flyteserf: error: --user-event-size-limit: user event size limit exceeds "
            "limit of 9216 bytes; give a size in bytes from 1 to 9216 (default 512)\n",
        )


class HelpTests(SynchronousTestCase):
    def test_help_lists_every_option_and_its_twin(self) -> None:
        text = str(Options(environ={}))
        flat = " ".join(text.split()).replace("- ", "-")
        for option, variable in tap.ENVIRONMENT.items():
            self.assertRegex(text, f"--{option}[= ]")
            self.assertIn(variable, flat)


class AgentConfigTests(SynchronousTestCase):
    def test_mapping(self) -> None:
        """Every option reaches the agent; joins as host:port strings."""
        snapshot = os.path.abspath(self.mktemp())
        config = parse(
            [
                "--node=n1",
                "--bind=127.0.0.1:7001",
                "--advertise=192.0.2.9:7002",
                "--join=10.0.0.1",
                "--join=[fd00::1]:7003",
                "--retry-join=10.0.0.2:7004",
                "--retry-interval=5s",
                "--retry-max=2",
                "--tag=dc=eu",
                "--profile=local",
                "--rpc-addr=127.0.0.1:7005",
                "--rpc-auth=tok",
                "--event-handler=user=cat",
                f"--snapshot={snapshot}",
                "--rejoin",
                "--replay",
                "--user-event-size-limit=2048",
            ]
        )
        agent = agent_config(config, advertise_host=lambda: self.fail("not a wildcard bind"))
        self.assertEqual(agent.node_name, "n1")
        self.assertEqual(agent.bind, ("127.0.0.1", 7001))
        self.assertEqual(agent.advertise, ("192.0.2.9", 7002))
        self.assertEqual(agent.start_join, ("10.0.0.1:7946", "[fd00::1]:7003"))
        self.assertEqual(agent.retry_join, ("10.0.0.2:7004",))
        self.assertEqual(agent.retry_interval, 5.0)
        self.assertEqual(agent.retry_max, 2)
        self.assertEqual(agent.tags, {"role": "flyte-serf", "dc": "eu"})
        self.assertEqual(agent.profile, "local")
        self.assertEqual(agent.event_handlers, ("user=cat",))
        self.assertEqual(agent.snapshot_path, snapshot)
        self.assertTrue(agent.rejoin_after_leave)
        self.assertTrue(agent.replay_on_join)
        self.assertEqual(agent.user_event_size_limit, 2048)
        self.assertIsNone(agent.keyring)
        self.assertTrue(agent.leave_on_stop)
        self.assertEqual(agent.leave_timeout, tap.LEAVE_TIMEOUT)
        self.assertEqual(agent.serf_config().user_event_size_limit, 2048)

    def test_wildcard_bind_advertises_a_private_address(self) -> None:
        agent = agent_config(parse(["--bind=0.0.0.0:7010"]), advertise_host=lambda: "10.1.2.3")
        self.assertEqual(agent.advertise, ("10.1.2.3", 7010))
        self.assertIsNone(agent_config(parse(["--bind=127.0.0.1"])).advertise)

    def test_rpc_service_attached(self) -> None:
        """--rpc-addr attaches an RPC listener to the agent; off attaches none."""
        from flyteserf.rpc.service import RPCService

        options = Options(environ={})
        options.parseOptions(["--bind=127.0.0.1:0", "--rpc-addr=127.0.0.1:7005", "--rpc-auth=tok", "--health-port=0"])
        node = makeService(options).getServiceNamed("node")
        assert isinstance(node, tap._StopOnFailure) and isinstance(node.node, Agent)
        [rpc] = node.node.attached
        assert isinstance(rpc, RPCService)
        self.assertEqual((rpc.address, rpc.auth), (("127.0.0.1", 7005), "tok"))

    def test_encrypt_key(self) -> None:
        agent = agent_config(parse(["--encrypt", KEY16, "--bind=127.0.0.1"]))
        assert agent.keyring is not None
        self.assertEqual(agent.keyring.keys, (bytes(range(16)),))
        self.assertIsNone(agent.keyring_file)

    def test_keyring_file(self) -> None:
        """The loaded keyring and its path: key changes rewrite the file."""
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write(json.dumps([KEY16, KEY32]))
        agent = agent_config(parse(["--keyring-file", path, "--bind=127.0.0.1"]))
        assert agent.keyring is not None
        self.assertIsInstance(agent.keyring, Keyring)
        self.assertEqual(agent.keyring.keys, (bytes(range(16)), bytes(range(32))))
        self.assertEqual(agent.keyring_file, path)


class _FakeTwistOptions(usage.Options):
    """Stands in for twist's own options: the parent holding ``logLevel``."""

    def __init__(self, level: LogLevel = LogLevel.info) -> None:
        super().__init__()
        self["logLevel"] = level


class LogLevelTests(SynchronousTestCase):
    def options(self, argv: Sequence[str], parent: usage.Options | None) -> Options:
        options = parse_options(argv)
        options.parent = parent
        return options

    def test_sets_what_twist_prints(self) -> None:
        for given, expected in [
            ("trace", LogLevel.debug),
            ("debug", LogLevel.debug),
            ("info", LogLevel.info),
            ("warn", LogLevel.warn),
            ("err", LogLevel.error),
        ]:
            parent = _FakeTwistOptions()
            level = serf_log_level(self.options([f"--log-level={given}"], parent))
            self.assertEqual(level, given.upper())
            self.assertIs(parent["logLevel"], expected)

    def test_twin_counts_as_given(self) -> None:
        parent = _FakeTwistOptions(LogLevel.debug)
        options = parse_options([], {"LOGLEVEL": "error"})
        options.parent = parent
        self.assertEqual(serf_log_level(options), "ERR")
        self.assertIs(parent["logLevel"], LogLevel.error)

    def test_not_given_twist_decides(self) -> None:
        """Without --log-level, twist's own --log-level stands, and the agent follows it."""
        parent = _FakeTwistOptions(LogLevel.debug)
        self.assertEqual(serf_log_level(self.options([], parent)), "DEBUG")
        self.assertIs(parent["logLevel"], LogLevel.debug)
        parent = _FakeTwistOptions(LogLevel.critical)
        self.assertEqual(serf_log_level(self.options([], parent)), "ERR")

    def test_without_twist(self) -> None:
        self.assertEqual(serf_log_level(self.options(["--log-level=warn"], None)), "WARN")
        self.assertEqual(serf_log_level(self.options([], None)), "INFO")


class _FakeCore(Clock):
    """A running reactor, as far as GracefulShutdown needs one."""

    def __init__(self, running: bool = True) -> None:
        super().__init__()
        self.running = running
        self.when_running: list[Callable[[], object]] = []
        self.triggers: dict[int, tuple[str, str, Callable[[], object]]] = {}
        self.stops = 0

    def callWhenRunning(self, f: Callable[[], object]) -> None:
        if self.running:
            f()
        else:
            self.when_running.append(f)

    def run(self) -> None:
        self.running = True
        for f in self.when_running:
            f()

    def addSystemEventTrigger(self, phase: str, event: str, f: Callable[[], object]) -> int:
        trigger = len(self.triggers) + 1
        self.triggers[trigger] = (phase, event, f)
        return trigger

    def removeSystemEventTrigger(self, trigger: int) -> None:
        del self.triggers[trigger]

    def shutdown(self) -> None:
        for phase, event, f in list(self.triggers.values()):
            if (phase, event) == ("before", "shutdown"):
                f()

    def callFromThread(self, f: Callable[..., object], *args: object) -> None:
        self.callLater(0, f, *args)

    def stop(self) -> None:
        self.stops += 1


class GracefulShutdownTests(SynchronousTestCase):
    """Real signal handlers, on SIGUSR1/SIGUSR2 so trial's own stay untouched."""

    signals = (signal.SIGUSR1, signal.SIGUSR2)

    def setUp(self) -> None:
        self.chained: list[int] = []
        self.exits: list[int] = []
        for number in self.signals:
            previous = signal.signal(number, self._previous_handler)
            self.addCleanup(signal.signal, number, previous)

    def _previous_handler(self, number: int, frame: FrameType | None) -> None:
        self.chained.append(number)

    def make(self, reactor: _FakeCore) -> GracefulShutdown:
        svc = GracefulShutdown(
            reactor, 10.0, signals=self.signals, margin=5.0, exit_now=self.exits.append
        )
        self.addCleanup(svc._uninstall)
        return svc

    def test_installed_once_running_and_restored_on_stop(self) -> None:
        reactor = _FakeCore(running=False)
        svc = self.make(reactor)
        svc.startService()
        # Twisted installs its handlers as the reactor starts: not yet ours.
        self.assertEqual(signal.getsignal(signal.SIGUSR1), self._previous_handler)
        reactor.run()
        self.assertEqual(signal.getsignal(signal.SIGUSR1), svc._received)
        self.assertEqual(signal.getsignal(signal.SIGUSR2), svc._received)
        self.assertEqual(len(reactor.triggers), 1)
        svc.stopService()
        self.assertEqual(signal.getsignal(signal.SIGUSR1), self._previous_handler)
        self.assertEqual(signal.getsignal(signal.SIGUSR2), self._previous_handler)
        self.assertEqual(reactor.triggers, {})

    def test_first_signal_chains_second_exits(self) -> None:
        """The first signal goes to the previous handler (Twisted's: stop the
        reactor, then exit with it); the second ends the process at once."""
        reactor = _FakeCore()
        svc = self.make(reactor)
        svc.startService()
        with capturedLogs() as events:
            os.kill(os.getpid(), signal.SIGUSR1)
        self.assertEqual(self.chained, [signal.SIGUSR1])
        self.assertEqual(self.exits, [])
        self.assertTrue(svc.stopping)
        self.assertEqual(svc.signalled, signal.SIGUSR1)
        [line] = [formatEvent(e) for e in events]
        self.assertEqual(
            line,
            "Received SIGUSR1: leaving the cluster gracefully (at most 10s), then stopping; "
            "send it again to stop at once",
        )
        # The stop of the service tree keeps the handlers: the leave is running.
        reactor.shutdown()
        svc.stopService()
        self.assertEqual(signal.getsignal(signal.SIGUSR1), svc._received)
        with capturedLogs() as events:
            os.kill(os.getpid(), signal.SIGUSR2)
        self.assertEqual(self.exits, [signal.SIGUSR2])
        self.assertEqual(self.chained, [signal.SIGUSR1])
        [event] = events
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertIn("Received SIGUSR2 while stopping: stopping at once", formatEvent(event))

    def test_slow_shutdown_is_cut_short(self) -> None:
        reactor = _FakeCore()
        svc = self.make(reactor)
        svc.startService()
        svc._received(signal.SIGUSR1, None)
        reactor.advance(0)
        reactor.advance(14.9)
        self.assertEqual(self.exits, [])
        reactor.advance(0.1)
        self.assertEqual(self.exits, [signal.SIGUSR1])

    def test_signal_during_another_stop_exits_at_once(self) -> None:
        """E.g. after an RPC leave, or a failed start: no second graceful stop."""
        reactor = _FakeCore()
        svc = self.make(reactor)
        svc.startService()
        reactor.shutdown()
        svc._received(signal.SIGUSR1, None)
        self.assertEqual(self.exits, [signal.SIGUSR1])
        self.assertEqual(self.chained, [])

    def test_no_previous_handler_stops_the_reactor(self) -> None:
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        reactor = _FakeCore()
        svc = self.make(reactor)
        svc.startService()
        svc._received(signal.SIGUSR1, None)
        reactor.advance(0)
        self.assertEqual(reactor.stops, 1)
        self.assertEqual(self.exits, [])


class ServiceTests(TestCase):
    async def test_make_service(self) -> None:
        """The service tree logs the configuration and runs an agent with RPC and health."""
        from twisted.internet import reactor

        rpc_port = find_free_port()
        health_port = find_free_port()
        options = Options(environ={})
        options.parseOptions(
            [
                "--node=n1",
                "--bind=127.0.0.1:0",
                "--tag=dc=eu",
                f"--rpc-addr=127.0.0.1:{rpc_port}",
                f"--health-port={health_port}",
                "--log-level=warn",
            ]
        )
        top = makeService(options)
        self.assertIsInstance(top, MultiService)
        child = IService(top.getServiceNamed("node-config"))
        node = top.getServiceNamed("node")
        assert isinstance(node, tap._StopOnFailure)
        agent = node.node
        assert isinstance(agent, Agent)
        self.assertTrue(agent.exit_on_leave)
        self.assertEqual(agent.log_ring.min_level, "WARN")
        [health] = node.after
        assert isinstance(health, HealthService)
        self.assertIsInstance(top.getServiceNamed("signals"), GracefulShutdown)
        with capturedLogs() as events:
            top.startService()
            self.addCleanup(lambda: defer.maybeDeferred(top.stopService) if top.running else None)
            assert agent.serf is not None
            host, port = agent.serf.advertise
            self.assertEqual(health.address, ("127.0.0.1", health_port))
            # Once the reactor runs, SIGINT is ours.
            await deferLater(reactor, 0, lambda: None)
            signals = top.getServiceNamed("signals")
            assert isinstance(signals, GracefulShutdown)
            self.assertEqual(signal.getsignal(signal.SIGINT), signals._received)
            replaced = signals._previous[signal.SIGINT]
            await defer.maybeDeferred(top.stopService)
        self.assertFalse(child.running)
        self.assertFalse(agent.running)
        self.assertIsNone(health.address)
        # Stopped without a shutdown (not a signal): the replaced handler is back.
        self.assertEqual(signal.getsignal(signal.SIGINT), replaced)
        self.assertEqual(host, "127.0.0.1")
        self.assertNotEqual(port, 0)
        config_events = [e for e in events if e.get("log_namespace", "").endswith("NodeConfigService")]
        self.assertEqual(len(config_events), 2)
        started, stopping = config_events
        self.assertEqual(started["log_level"], LogLevel.info)
        self.assertEqual(started["node_name"], "n1")
        self.assertEqual(started["bind"], "127.0.0.1:0")
        self.assertEqual(started["tags"], {"role": "flyte-serf", "dc": "eu"})
        text = formatEvent(started)
        self.assertIn(f"flyteserf {__version__} node n1:", text)
        self.assertIn("bind 127.0.0.1:0", text)
        self.assertIn("tags dc=eu,role=flyte-serf", text)
        self.assertIn(f"rpc 127.0.0.1:{rpc_port}", text)
        self.assertIn(f"health port {health_port}", text)
        self.assertEqual(formatEvent(stopping), "flyteserf node n1 stopping")
        gossiping = [formatEvent(e) for e in events if "gossiping" in e.get("log_format", "")]
        self.assertEqual(gossiping, [f"flyteserf agent n1 gossiping on 127.0.0.1:{port} (encrypted: False)"])
        self.assertIn(
            f"Health check listening on 127.0.0.1:{health_port}", [formatEvent(e) for e in events]
        )

    async def test_no_health_no_rpc(self) -> None:
        options = Options(environ={})
        options.parseOptions(["--bind=127.0.0.1:0", "--rpc-addr=", "--health-port=0"])
        top = makeService(options)
        node = top.getServiceNamed("node")
        assert isinstance(node, tap._StopOnFailure)
        self.assertEqual(node.after, ())
        assert isinstance(node.node, Agent)
        self.assertEqual(node.node.attached, ())


class PluginTests(SynchronousTestCase):
    def test_plugin_discovered(self) -> None:
        """twist finds the flyteserf plugin and its options are ours."""
        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        self.assertIn("flyteserf", makers)
        self.assertIs(makers["flyteserf"].options, Options)


class _Collect(protocol.ProcessProtocol):
    """Collects a child's output; fires ``ended`` with its exit reason."""

    def __init__(self) -> None:
        self.output = b""
        self.ended: defer.Deferred[ProcessTerminated | ProcessDone] = defer.Deferred()
        self.lines: defer.DeferredQueue[bytes] = defer.DeferredQueue()
        self.done = False

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.output += data
        self.lines.put(data)

    def processEnded(self, reason: Failure) -> None:
        # The exception itself: a Failure as the result would errback.
        assert isinstance(reason.value, (ProcessDone, ProcessTerminated))
        self.done = True
        self.ended.callback(reason.value)


#: How long a process test waits for anything before failing.
DEADLINE = 45.0


class _Node:
    """A ``twist flyteserf`` child process and its addresses."""

    def __init__(self, name: str, rpc: str, collect: _Collect, transport: IProcessTransport) -> None:
        self.name = name
        self.rpc = rpc
        self.collect = collect
        self.transport = transport

    @property
    def output(self) -> bytes:
        return self.collect.output

    async def wait_for(self, pattern: bytes, timeout: float = DEADLINE) -> re.Match[bytes]:
        """The first match of regex *pattern* in the output; fails after *timeout*."""
        from twisted.internet import reactor

        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.collect.output)
            if found is not None:
                return found
            if self.collect.done:
                raise AssertionError(
                    f"{self.name} ended before printing {pattern!r}:\n{self.output.decode()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name} printed no {pattern!r} within {timeout}s:\n{self.output.decode()}"
                )
            await deferLater(reactor, 0.05, lambda: None)

    async def gossip_address(self) -> str:
        found = await self.wait_for(rb"gossiping on (127\.0\.0\.1:\d+)")
        return found.group(1).decode()

    def signal(self, name: str) -> None:
        self.transport.signalProcess(name)


async def serf_cli(*args: str) -> tuple[int, str, str]:
    """Run the stock ``serf`` CLI; ``(status, stdout, stderr)``."""
    from twisted.internet import reactor

    binary = skip_unless_serf()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    out, err, code = await utils.getProcessOutputAndValue(binary, list(args), env=env, reactor=reactor)
    return code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


async def members(rpc: str) -> dict[str, str]:
    """``serf members`` against *rpc*: each member's status by name."""
    code, out, err = await serf_cli("members", f"-rpc-addr={rpc}", "-format=json")
    if code != 0:
        raise AssertionError(f"serf members -rpc-addr={rpc} failed ({code}): {err or out}")
    return {m["name"]: m["status"] for m in json.loads(out)["members"]}


async def poll(
    check: Callable[[], defer.Deferred[Any] | Any],
    done: Callable[[Any], bool],
    what: str,
    timeout: float = DEADLINE,
) -> Any:
    """Call *check* until *done* says yes for its result; fail after *timeout*."""
    from twisted.internet import reactor

    deadline = time.monotonic() + timeout
    while True:
        result = await defer.maybeDeferred(check)
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {result!r} after {timeout}s")
        await deferLater(reactor, 0.25, lambda: None)


class TwistProcessTests(TestCase):
    """Run ``twist flyteserf`` for real, from this checkout.

    Never on serf's default ports: gossip binds port 0, RPC a free port,
    and the health port is off unless a test wants it (then a free port).
    """

    timeout = 120

    def spawn(self, *args: str, env: Mapping[str, str] | None = None) -> tuple[_Collect, IProcessTransport]:
        from twisted.internet import reactor

        # The directory holding the flyteserf package also holds the
        # twisted/plugins dropin (a checkout, or site-packages).
        root = os.path.dirname(os.path.dirname(os.path.abspath(flyteserf.__file__)))
        child_env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": root, **(env or {})}
        collect = _Collect()
        argv = [sys.executable, "-c", _TWIST, *args]
        transport = IReactorProcess(reactor).spawnProcess(collect, argv[0], argv, env=child_env)
        self.addCleanup(_reap, transport, collect)
        return collect, transport

    def node(self, name: str, *args: str) -> _Node:
        """``twist flyteserf`` on 127.0.0.1:0 with RPC on a free port, health off."""
        rpc = f"127.0.0.1:{find_free_port()}"
        collect, transport = self.spawn(
            "--log-format=text",
            "flyteserf",
            f"--node={name}",
            "--bind=127.0.0.1:0",
            f"--rpc-addr={rpc}",
            "--health-port=0",
            *args,
        )
        return _Node(name, rpc, collect, transport)

    async def running(self, node: _Node) -> dict[str, str]:
        """Wait until *node* answers ``serf members`` (its signal handlers are then in place)."""
        await node.wait_for(rb"Starting reactor")
        return await poll(
            lambda: defer.Deferred.fromCoroutine(members(node.rpc)).addErrback(lambda f: {}),
            lambda found: node.name in found,
            f"{node.name} answering serf members",
        )

    async def test_bad_option_is_one_line(self) -> None:
        collect, _ = self.spawn("flyteserf", "--bind=0.0.0.0:99999")
        ended = await collect.ended
        self.assertEqual(ended.exitCode, 64)
        self.assertEqual(
            collect.output,
            b"twist flyteserf: error: --bind: port 99999 in address '0.0.0.0:99999' is out "
            b"of range; give a port from 0 to 65535\n",
        )

    async def test_bad_event_handler_is_one_line(self) -> None:
        collect, _ = self.spawn("flyteserf", "--event-handler=foo=bar")
        ended = await collect.ended
        self.assertEqual(ended.exitCode, 64)
        self.assertTrue(
            collect.output.startswith(
                b"twist flyteserf: error: --event-handler: Invalid event script: "
                b"Event 'foo' invoking 'bar'; "
            ),
            collect.output,
        )
        self.assertEqual(collect.output.count(b"\n"), 1)

    async def test_bad_option_from_environment(self) -> None:
        collect, _ = self.spawn("flyteserf", env={"SERF_RETRY_INTERVAL": "100ms"})
        ended = await collect.ended
        self.assertEqual(ended.exitCode, 64)
        self.assertEqual(
            collect.output,
            b"twist flyteserf: error: SERF_RETRY_INTERVAL: 100ms is shorter than the minimum "
            b"of 1s; give 1s or more, e.g. 30s\n",
        )

    async def test_start_and_sigint(self) -> None:
        """It starts, logs its configuration, and shuts down cleanly on SIGINT.

        twist then ends itself with the same signal (Twisted's convention, so
        the parent sees "killed by SIGINT"), rather than exiting 0.
        """
        node = self.node("sigint-test")
        await node.wait_for(rb"Starting reactor")
        self.assertIn(b"node sigint-test: bind 127.0.0.1:0", node.output)
        # "Starting reactor" is logged just before Twisted installs its signal
        # handlers; a SIGINT in that gap is a bare KeyboardInterrupt.
        from twisted.internet import reactor

        await deferLater(reactor, 1.0, lambda: None)
        node.signal("INT")
        ended = await node.collect.ended
        self.assertEqual(ended.signal, signal.SIGINT, node.output)
        self.assertIn(b"flyteserf node sigint-test stopping", node.output)
        self.assertIn(b"Main loop terminated.", node.output)
        self.assertNotIn(b"Traceback", node.output)

    async def test_failed_join_stops_with_status_1(self) -> None:
        """A --join that nobody answers ends the program with one clear line."""
        nobody = find_free_port()
        node = self.node("lonely", f"--join=127.0.0.1:{nobody}")
        ended = await node.collect.ended
        self.assertEqual(ended.exitCode, 1, node.output)
        self.assertIn(b"flyteserf cannot start: 1 error occurred:", node.output)
        self.assertIn(b"Failed to join 127.0.0.1", node.output)
        self.assertNotIn(b"Traceback", node.output)

    async def test_port_taken_stops_with_status_1(self) -> None:
        """A taken RPC port is one line naming the option, and status 1."""
        first = self.node("first")
        await self.running(first)
        # The same RPC port as the first node.
        collect, _ = self.spawn(
            "--log-format=text",
            "flyteserf",
            "--node=second",
            "--bind=127.0.0.1:0",
            f"--rpc-addr={first.rpc}",
            "--health-port=0",
        )
        ended = await collect.ended
        self.assertEqual(ended.exitCode, 1, collect.output)
        self.assertRegex(
            collect.output.decode(),
            r"flyteserf cannot start: RPC listener \(--rpc-addr\): Couldn't listen on "
            + re.escape(first.rpc),
        )
        self.assertNotIn(b"Traceback", collect.output)

    async def test_log_level_filters_output(self) -> None:
        """--log-level=ERR: twist prints errors only."""
        nobody = find_free_port()
        node = self.node("quiet", f"--join=127.0.0.1:{nobody}", "--log-level=ERR")
        ended = await node.collect.ended
        self.assertEqual(ended.exitCode, 1, node.output)
        lines = node.output.decode().splitlines()
        self.assertEqual(len(lines), 1, node.output)
        self.assertIn("#error] flyteserf cannot start: 1 error occurred:", lines[0])

    async def test_serf_members_over_rpc(self) -> None:
        """The stock serf CLI lists the node itself, alive, with its tags; the
        snapshot and the user event size limit are the agent's."""
        snapshot = os.path.abspath(self.mktemp())
        node = self.node(
            "solo", "--tag=dc=eu", f"--snapshot={snapshot}", "--user-event-size-limit=100"
        )
        found = await self.running(node)
        self.assertEqual(found, {"solo": "alive"})
        code, out, err = await serf_cli("members", f"-rpc-addr={node.rpc}")
        self.assertEqual(code, 0, err)
        self.assertRegex(out, r"^solo\s+127\.0\.0\.1:\d+\s+alive\s+")
        self.assertIn("dc=eu", out)
        self.assertIn("role=flyte-serf", out)
        self.assertTrue(os.path.isfile(snapshot))
        code, out, err = await serf_cli(
            "event", f"-rpc-addr={node.rpc}", "big", "x" * 100
        )
        self.assertNotEqual(code, 0)
        self.assertIn("user event exceeds configured limit of 100 bytes before encoding", out + err)
        code, out, err = await serf_cli("event", f"-rpc-addr={node.rpc}", "small", "x" * 10)
        self.assertEqual(code, 0, out + err)

    async def test_retry_join(self) -> None:
        """--retry-join keeps trying until the member appears."""
        port = find_free_port()
        b = self.node("patient", f"--retry-join=127.0.0.1:{port}", "--retry-interval=1s")
        await self.running(b)
        await b.wait_for(rb"Retry join attempt 1 failed")
        a = self.node("late", f"--bind=127.0.0.1:{port}")
        await self.running(a)
        both = {"late": "alive", "patient": "alive"}
        await poll(lambda: members(b.rpc), lambda found: found == both, "the retry join")
        await b.wait_for(rb"Retry join succeeded")

    async def test_rpc_auth(self) -> None:
        node = self.node("guarded", "--rpc-auth=s3cret")
        await node.wait_for(rb"Starting reactor")
        found = await poll(
            lambda: serf_cli("members", f"-rpc-addr={node.rpc}", "-rpc-auth=s3cret"),
            lambda result: result[0] == 0,
            "serf members with the token",
        )
        self.assertIn("guarded", found[1])
        code, out, err = await serf_cli("members", f"-rpc-addr={node.rpc}", "-rpc-auth=wrong")
        self.assertNotEqual(code, 0)

    async def test_two_nodes_join_each_other(self) -> None:
        a = self.node("a")
        a_gossip = await a.gossip_address()
        await self.running(a)
        b = self.node("b", f"--join={a_gossip}")
        await self.running(b)
        both = {"a": "alive", "b": "alive"}
        await poll(lambda: members(a.rpc), lambda found: found == both, "a seeing b")
        await poll(lambda: members(b.rpc), lambda found: found == both, "b seeing a")
        self.assertIn(b"EventMemberJoin: b 127.0.0.1", a.output)
        self.assertIn(b"EventMemberJoin: a 127.0.0.1", b.output)

    async def test_sigint_leaves_gracefully(self) -> None:
        """A real serf agent sees the node leave (status left, not failed)."""
        from twisted.internet import reactor

        peer = await start_serf_agent(self, IReactorProcess(reactor), node="peer")
        node = self.node("leaver", f"--join={peer.bind_address}")
        await self.running(node)
        await poll(
            peer.members,
            lambda found: any(m["name"] == "leaver" and m["status"] == "alive" for m in found),
            "the serf agent seeing the node",
        )
        node.signal("INT")
        ended = await node.collect.ended
        self.assertEqual(ended.signal, signal.SIGINT, node.output)
        self.assertIn(b"Received SIGINT: leaving the cluster gracefully", node.output)
        self.assertIn(b"Main loop terminated.", node.output)
        self.assertNotIn(b"Traceback", node.output)
        self.assertNotIn(b"Graceful leave did not finish", node.output)
        found = await poll(
            peer.members,
            lambda found: any(m["name"] == "leaver" and m["status"] != "alive" for m in found),
            "the serf agent seeing the node go",
        )
        [status] = [m["status"] for m in found if m["name"] == "leaver"]
        self.assertEqual(status, "left")
        await peer.wait_for_log("EventMemberLeave: leaver")

    async def test_sigterm_leaves_gracefully_too(self) -> None:
        """As the Go pack did: SIGTERM leaves too (serf agent would just stop)."""
        a = self.node("stays")
        a_gossip = await a.gossip_address()
        await self.running(a)
        b = self.node("terminated", f"--join={a_gossip}")
        await self.running(b)
        await poll(lambda: members(a.rpc), lambda found: found.get("terminated") == "alive", "join")
        b.signal("TERM")
        ended = await b.collect.ended
        self.assertEqual(ended.signal, signal.SIGTERM, b.output)
        found = await poll(
            lambda: members(a.rpc),
            lambda found: found.get("terminated") != "alive",
            "the node going",
        )
        self.assertEqual(found["terminated"], "left")

    async def test_second_sigint_stops_at_once(self) -> None:
        """A second SIGINT during the graceful leave ends the process at once."""
        from twisted.internet import reactor

        peer = await start_serf_agent(self, IReactorProcess(reactor), node="peer2")
        node = self.node("impatient", f"--join={peer.bind_address}")
        await self.running(node)
        await node.wait_for(rb"EventMemberJoin: peer2")
        node.signal("INT")
        await node.wait_for(rb"send it again to stop at once")
        started = time.monotonic()
        node.signal("INT")
        ended = await node.collect.ended
        elapsed = time.monotonic() - started
        self.assertEqual(ended.signal, signal.SIGINT, node.output)
        self.assertIn(
            b"Received SIGINT while stopping: stopping at once, without finishing the graceful leave",
            node.output,
        )
        # It did not wait for the leave and the clean shutdown.
        self.assertNotIn(b"Main loop terminated.", node.output)
        self.assertNotIn(b"Traceback", node.output)
        self.assertLess(elapsed, 5.0)

    async def test_rpc_leave_ends_the_process(self) -> None:
        """serf leave: the node leaves, answers, and the program ends with status 0."""
        a = self.node("watcher")
        a_gossip = await a.gossip_address()
        await self.running(a)
        b = self.node("goner", f"--join={a_gossip}")
        await self.running(b)
        await poll(lambda: members(a.rpc), lambda found: found.get("goner") == "alive", "join")
        code, out, err = await serf_cli("leave", f"-rpc-addr={b.rpc}")
        self.assertEqual(code, 0, err + out)
        ended = await b.collect.ended
        self.assertEqual(ended.exitCode, 0, b.output)
        self.assertIsNone(ended.signal)
        self.assertIn(b"Main loop terminated.", b.output)
        self.assertNotIn(b"Traceback", b.output)
        found = await poll(
            lambda: members(a.rpc), lambda found: found.get("goner") != "alive", "the leave"
        )
        self.assertEqual(found["goner"], "left")

    async def test_event_handler_runs_script(self) -> None:
        """A user event sent with the serf CLI runs the matching script, not the others."""
        out = os.path.abspath(self.mktemp())
        other = os.path.abspath(self.mktemp())
        node = self.node(
            "scripted",
            f"--event-handler=user:deploy=printf '%s %s ' \"$SERF_EVENT\" \"$SERF_USER_EVENT\" >> {out}; cat >> {out}",
            f"--event-handler=query=touch {other}",
        )
        await self.running(node)
        code, stdout, err = await serf_cli(
            "event", f"-rpc-addr={node.rpc}", "-coalesce=false", "deploy", "v42"
        )
        self.assertEqual(code, 0, err + stdout)

        def read() -> str:
            try:
                with open(out) as handle:
                    return handle.read()
            except FileNotFoundError:
                return ""

        await poll(read, lambda text: text == "user deploy v42\n", "the script's output")
        self.assertFalse(os.path.exists(other))

    async def test_health_port(self) -> None:
        """The health port answers the Go pack's JSON on any path."""
        import treq

        port = find_free_port()
        node = self.node("healthy", f"--health-port={port}")
        await node.wait_for(rb"Health check listening on 127\.0\.0\.1:" + str(port).encode())
        for path in ("/", "/health", "/any/path?at=all"):
            response = await treq.get(f"http://127.0.0.1:{port}{path}", persistent=False)
            self.assertEqual(response.code, 200)
            self.assertEqual(
                response.headers.getRawHeaders(b"content-type"), [b"application/json"]
            )
            self.assertEqual(await response.content(), HEALTHY_BODY)


_TWIST = "import sys; from twisted.application.twist._twist import Twist; Twist.main(sys.argv)"


def _reap(
    transport: IProcessTransport, collect: _Collect
) -> defer.Deferred[ProcessTerminated | ProcessDone] | None:
    """Cleanup: kill the child if the test left it running, and wait for it."""
    if transport.pid is None or collect.done:
        return None
    try:
        transport.signalProcess("KILL")
    except ProcessExitedAlready:
        return None
    return collect.ended
