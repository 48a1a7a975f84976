"""Tests for :mod:`flyteserf.tap`, the ``twist flyteserf`` options and service."""

from __future__ import annotations

import base64
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from io import StringIO

from twisted.application.service import IService, IServiceMaker, MultiService
from twisted.internet import defer, protocol
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IProcessTransport, IReactorProcess
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

import flyteserf
from flyteserf import __version__, tap
from flyteserf.tap import NodeConfig, Options, makeService

KEY16 = base64.b64encode(bytes(range(16))).decode()
KEY32 = base64.b64encode(bytes(range(32))).decode()


def parse(argv: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> NodeConfig:
    options = Options(environ={} if environ is None else environ, exit_on_error=False)
    options.parseOptions(list(argv))
    return options.config


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

    def test_everything_on_the_command_line(self) -> None:
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

    def test_key_not_in_repr(self) -> None:
        config = parse(["--encrypt", KEY16])
        self.assertNotIn(KEY16, repr(config))
        self.assertNotIn(repr(bytes(range(16))), repr(config))
        self.assertNotIn(KEY16, config.describe())
        self.assertIn("AES-128", config.describe())

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
    }

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

    def test_command_line_wins(self) -> None:
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

    def test_empty_means_unset(self) -> None:
        config = parse(environ={name: "" for name in tap.ENVIRONMENT.values()})
        self.assertEqual(config, parse())

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

    def test_unknown_option(self) -> None:
        self.assertUsageError(["--nope"], "nope")


class ExitOnErrorTests(SynchronousTestCase):
    def test_one_line_and_exit_64(self) -> None:
        """Under twist, a bad option prints one line to stderr and exits 64."""
        stderr = StringIO()
        self.patch(sys, "stderr", stderr)
        options = Options(environ={})
        with self.assertRaises(SystemExit) as caught:
            options.parseOptions(["--profile=moon"])
        self.assertEqual(caught.exception.code, 64)
        self.assertEqual(
            stderr.getvalue(),
            "twist flyteserf: error: --profile: unknown profile 'moon'; use lan, wan or local\n",
        )


class HelpTests(SynchronousTestCase):
    def test_help_lists_every_option_and_its_twin(self) -> None:
        text = str(Options(environ={}))
        for option, variable in tap.ENVIRONMENT.items():
            self.assertIn(f"--{option}=", text)
            self.assertIn(variable, " ".join(text.split()).replace("- ", "-"))


class ServiceTests(TestCase):
    async def test_make_service(self) -> None:
        """The service tree logs the configuration and runs a gossip node on the bind address."""
        options = Options(environ={})
        options.parseOptions(["--node=n1", "--bind=127.0.0.1:0", "--tag=dc=eu"])
        top = makeService(options)
        self.assertIsInstance(top, MultiService)
        child = IService(top.getServiceNamed("node-config"))
        with capturedLogs() as events:
            top.startService()
            [node] = [s for s in top if isinstance(s, tap._StopOnFailure)]
            assert node.node.memberlist is not None
            host, port = node.node.memberlist.advertise
            await defer.maybeDeferred(top.stopService)
        self.assertFalse(child.running)
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
        self.assertEqual(formatEvent(stopping), "flyteserf node n1 stopping")
        gossiping = [formatEvent(e) for e in events if "gossiping" in e.get("log_format", "")]
        self.assertEqual(gossiping, [f"Node n1 gossiping on 127.0.0.1:{port} (encrypted: False)"])


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

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.output += data
        self.lines.put(data)

    def processEnded(self, reason: Failure) -> None:
        # The exception itself: a Failure as the result would errback.
        assert isinstance(reason.value, (ProcessDone, ProcessTerminated))
        self.ended.callback(reason.value)


class TwistProcessTests(TestCase):
    """Run ``twist flyteserf`` for real, from this checkout."""

    def spawn(self, *args: str) -> tuple[_Collect, IProcessTransport]:
        from twisted.internet import reactor

        # The directory holding the flyteserf package also holds the
        # twisted/plugins dropin (a checkout, or site-packages).
        root = os.path.dirname(os.path.dirname(os.path.abspath(flyteserf.__file__)))
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": root}
        collect = _Collect()
        argv = [sys.executable, "-c", _TWIST, *args]
        transport = IReactorProcess(reactor).spawnProcess(collect, argv[0], argv, env=env)
        return collect, transport

    async def test_bad_option_is_one_line(self) -> None:
        collect, _ = self.spawn("flyteserf", "--bind=0.0.0.0:99999")
        ended = await collect.ended
        self.assertEqual(ended.exitCode, 64)
        self.assertEqual(
            collect.output,
            b"twist flyteserf: error: --bind: port 99999 in address '0.0.0.0:99999' is out "
            b"of range; give a port from 0 to 65535\n",
        )

    async def test_start_and_sigint(self) -> None:
        """It starts, logs its configuration, and shuts down cleanly on SIGINT.

        twist then ends itself with the same signal (Twisted's convention, so
        the parent sees "killed by SIGINT"), rather than exiting 0.
        """
        collect, transport = self.spawn(
            "--log-format=text", "flyteserf", "--node=sigint-test", "--bind=127.0.0.1:0"
        )
        self.addCleanup(_reap, transport, collect)
        while b"Starting reactor" not in collect.output:
            await collect.lines.get()
        self.assertIn(b"node sigint-test: bind 127.0.0.1:0", collect.output)
        # "Starting reactor" is logged just before Twisted installs its signal
        # handlers; a SIGINT in that gap is a bare KeyboardInterrupt.
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        await deferLater(reactor, 1.0, lambda: None)
        transport.signalProcess("INT")
        ended = await collect.ended
        self.assertEqual(ended.signal, signal.SIGINT, collect.output)
        self.assertIn(b"flyteserf node sigint-test stopping", collect.output)
        self.assertIn(b"Main loop terminated.", collect.output)
        self.assertNotIn(b"Traceback", collect.output)


    async def test_failed_join_stops_with_status_1(self) -> None:
        """A --join that nobody answers ends the program with one clear line."""
        from flyteserf.testing.serf_binary import find_free_port

        nobody = find_free_port()
        collect, transport = self.spawn(
            "--log-format=text", "flyteserf", "--node=lonely", "--bind=127.0.0.1:0", f"--join=127.0.0.1:{nobody}"
        )
        self.addCleanup(_reap, transport, collect)
        ended = await collect.ended
        self.assertEqual(ended.exitCode, 1, collect.output)
        self.assertIn(b"flyteserf cannot start: 1 error occurred:", collect.output)
        self.assertIn(f"Failed to join 127.0.0.1".encode(), collect.output)
        self.assertNotIn(b"Traceback", collect.output)


_TWIST = "import sys; from twisted.application.twist._twist import Twist; Twist.main(sys.argv)"


def _reap(
    transport: IProcessTransport, collect: _Collect
) -> defer.Deferred[ProcessTerminated | ProcessDone] | None:
    """Cleanup: kill the child if the test left it running, and wait for it."""
    if transport.pid is None:
        return None
    try:
        transport.signalProcess("KILL")
    except ProcessExitedAlready:
        return None
    return collect.ended
