"""Side by side in one cluster: N real ``serf agent`` processes and N flyteserf nodes.

    python3 bench/cluster.py [--n 5] [--encrypt] [--idle-seconds 30]

Everything runs on 127.0.0.1 (never ports 7946/7373).  The Go agents are
Debian's ``serf agent -node=goI -bind=127.0.0.1:P -rpc-addr=127.0.0.1:R
-log-level=info``; ours are ``twist --log-format=text flyteserf --node pyI
--bind 127.0.0.1:P --join GO0 --profile lan`` (plus ``--rpc-addr`` on a
free port and ``--health-port 0`` when this checkout's ``twist flyteserf``
has those options).  What it measures, for the Go processes and for ours,
with the ratio ours / Go:

1. Convergence.  go0 starts first; go1.. start without joining; then the N
   flyteserf processes start with ``--join go0``.  Once every one of ours
   has logged "... gossiping on" (it issues its join right after), the
   bench sends the N-1 Go agents their ``join go0`` RPCs at once: that
   instant is t=0.  Times are until every Go process lists all 2N members
   ``alive`` (its ``members`` RPC polled every ``--poll-ms``) and until
   every one of ours has logged a join ("Member joined: NAME" from the
   memberlist-only node, "EventMemberJoin: NAME" from the serf agent) for
   all 2N-1 others, lines timestamped as they arrive.  The Go figure is
   cross-checked from the agents' own "EventMemberJoin" log lines.
2. Idle cost over ``--idle-seconds`` after a ``--settle`` pause (60 s: Go
   memberlist's first push/pull comes a random 30 to 60 s after start, so
   an earlier window would miss the Go agents' TCP traffic): CPU % from
   /proc/PID/stat utime+stime, VmRSS from /proc/PID/status at the end, and
   packets and bytes sent per process from ``tcpdump -i lo`` filtered on
   the gossip ports.  A packet belongs to the process whose gossip port is
   its source port.  The client side of a TCP connection (push/pull) comes
   from an ephemeral port; it goes to the process that held that socket
   when its SYN was sent (:class:`SynWatcher`), and what could not be
   looked up in time is reported as unattributed.  Bytes are whole
   loopback frames (14-byte Ethernet header + IP + UDP/TCP + payload), as
   the kernel's lo counters count them.
3. Serf layer, over RPC (when ours have ``--rpc-addr``): an RPC ``stream``
   of user events is held open on every process, Go and ours; go0 then py0
   each send ``--events`` user events (Coalesce=false, ``--event-gap`` s
   apart) through their ``event`` RPC, as ``serf event -coalesce=false``
   does.  Per event, the time from the send to the last Go process's and
   the last of ours' stream record; medians over the events, per origin.
   Then go0 and py0 each run ``--queries`` queries with RequestAck (Timeout
   ``--query-timeout``); every process answers through the same event
   handler, ``query=cat >/dev/null; echo ok``; times until all 2N acks and
   all 2N responses have come back in the query RPC's records, medians.
4. kill -9 detection: kill -9 the last Go agent, time until every survivor
   has declared it failed (Go: ``members`` status "failed"; ours: "Member
   failed: NAME" or "EventMemberFailed: NAME"); then the same for the last of
   ours.

The Go agents are asked over their RPC port, with the msgpack protocol the
``serf`` CLI speaks (``members``, ``join``, ``event``, ``stream``,
``query``; ours speak the same), on one persistent connection each: forking the Go CLI 20 times a second per agent would load a 2-core
box and skew what is measured.  Nothing is polled during the idle window.

Every process is started in its own session (Ctrl-C reaches only the
bench) and stopped by PID in a ``finally`` block: SIGTERM, then SIGKILL
after 10 s.
All logs, the tcpdump text and the SYN watcher's findings are kept in a
temporary directory, named at the start and the end, and the report lists
warnings, errors, suspicions, failures and leaves logged about any node
the bench did not kill.  A default run takes about 2 min 15 s.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import msgpack

# Run from a checkout without installing: put the repository on sys.path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flyteserf.testing.serf_binary import find_free_port, find_serf_binary  # noqa: E402

HOST = "127.0.0.1"
#: Every process (Go and ours) answers queries with this event handler's output.
QUERY_HANDLER = "cat >/dev/null; echo ok"  # reads the payload: /bin/echo alone gives Go EPIPE
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """The cluster did not do what the bench waited for."""


def now() -> float:
    return time.monotonic()


#: Log copies stamp each line with its arrival, in seconds since this.
STARTED = now()


# -- processes ---------------------------------------------------------------


class Proc:
    """One child process whose output lines are timestamped as they arrive."""

    #: (kind of event, node name) from one output line, or None.
    parse: Callable[[str], tuple[str, str] | None] = staticmethod(lambda line: None)

    def __init__(self, kind: str, name: str, port: int, argv: list[str], env: dict[str, str],
                 log_dir: str) -> None:
        self.kind = kind  # "go" or "py"
        self.name = name
        self.port = port
        self.argv = argv
        self.env = env
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self.popen: subprocess.Popen[bytes] | None = None
        self.lines: list[tuple[float, str]] = []
        self.events: list[tuple[float, str, str]] = []  # (time, joined|failed|left, name)
        self.started_at = 0.0
        self.ended_at: float | None = None
        self.killed_at: float | None = None
        self.lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._terminated = False
        self.rpc_port: int | None = None
        self.rpc: SerfRPC | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> None:
        self.started_at = now()
        self.popen = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
        )
        self._thread = threading.Thread(target=self._read, name=f"read-{self.name}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.popen is not None and self.popen.stdout is not None
        with open(self.log_path, "w", encoding="utf-8") as log:
            for raw in iter(self.popen.stdout.readline, b""):
                t = now()
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                log.write(f"[{t - STARTED:9.3f}] {line}\n")
                log.flush()
                event = self.parse(line)
                with self.lock:
                    self.lines.append((t, line))
                    if event is not None:
                        self.events.append((t, *event))
        self.ended_at = now()

    def connect(self, timeout: float = 15.0) -> None:
        """One persistent RPC connection, kept as ``self.rpc``."""
        if self.rpc_port is None:
            raise BenchError(f"{self.name} has no RPC port")
        deadline = now() + timeout
        while True:
            if not self.running:
                raise BenchError(f"{self.name} exited:\n    {self.tail()}")
            try:
                self.rpc = SerfRPC(self.rpc_port)
                return
            except OSError:
                if now() > deadline:
                    raise BenchError(f"{self.name}: no RPC after {timeout:g}s:"
                                     f"\n    {self.tail()}") from None
                time.sleep(0.02)

    def events_since(self, t0: float) -> list[tuple[float, str, str]]:
        with self.lock:
            return [e for e in self.events if e[0] >= t0]

    def tail(self, count: int = 15) -> str:
        with self.lock:
            return "\n    ".join(line for _, line in self.lines[-count:]) or "(no output)"

    def kill9(self) -> float:
        assert self.popen is not None
        self.killed_at = now()
        os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait()
        return self.killed_at

    def terminate(self) -> None:
        """SIGTERM by PID, once (a second one stops our node's graceful leave)."""
        if self.popen is None or self.popen.poll() is not None or self._terminated:
            return
        self._terminated = True
        try:
            os.kill(self.popen.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s, by PID, if still running."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait()
        if self._thread is not None:
            self._thread.join(2)


_GO_EVENT = re.compile(r"serf: EventMember(Join|Failed|Leave): (\S+)")
_GO_EVENT_KIND = {"Join": "joined", "Failed": "failed", "Leave": "left"}
# Both the memberlist-only node ("Member joined: NAME ADDR:PORT") and the
# serf agent ("EventMemberJoin: NAME ADDR", "EventMemberFailed: NAME ADDR").
_PY_EVENT = re.compile(
    r"\] (?:Member (joined|failed|left)|EventMember(Join|Failed|Leave)|member-(join|failed|leave))"
    r"(?: \(forced\))?: (\S+)")
_PY_EVENT_KIND = {"joined": "joined", "failed": "failed", "left": "left", "Join": "joined",
                  "Failed": "failed", "Leave": "left", "join": "joined", "leave": "left"}
_PY_GOSSIPING = re.compile(r"\] (?:Node|flyteserf agent) (\S+) gossiping on ")


class GoAgent(Proc):
    def __init__(self, name: str, port: int, rpc_port: int, serf: str, key: str | None,
                 log_dir: str) -> None:
        argv = [serf, "agent", f"-node={name}", f"-bind={HOST}:{port}",
                f"-rpc-addr={HOST}:{rpc_port}", "-log-level=info",
                f"-event-handler=query={QUERY_HANDLER}"]
        if key:
            argv.append(f"-encrypt={key}")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        super().__init__("go", name, port, argv, env, log_dir)
        self.rpc_port = rpc_port

    @staticmethod
    def parse(line: str) -> tuple[str, str] | None:
        m = _GO_EVENT.search(line)
        return (_GO_EVENT_KIND[m.group(1)], m.group(2)) if m else None

    def statuses(self) -> dict[str, str]:
        """name -> status, from the agent's ``members`` RPC."""
        assert self.rpc is not None
        body = self.rpc.call("members")
        return {m["Name"]: m["Status"] for m in body["Members"]}


class OurNode(Proc):
    def __init__(self, name: str, port: int, join_port: int, key: str | None,
                 log_dir: str) -> None:
        argv = [twist_command(), "--log-format=text", "flyteserf", "--node", name,
                "--bind", f"{HOST}:{port}", "--join", f"{HOST}:{join_port}", "--profile", "lan"]
        options = twist_options()
        rpc_port = None
        if "--rpc-addr" in options:  # an RPC port like the Go agents', never 7373
            rpc_port = find_free_port(HOST)
            argv += ["--rpc-addr", f"{HOST}:{rpc_port}"]
        if "--event-handler" in options:  # the same query handler as the Go agents'
            argv += ["--event-handler", f"query={QUERY_HANDLER}"]
        if "--health-port" in options:  # the Go agent has no health port
            argv += ["--health-port", "0"]
        if key:
            argv += ["--encrypt", key]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SERF_")}
        env["PYTHONUNBUFFERED"] = "1"
        super().__init__("py", name, port, argv, env, log_dir)
        self.rpc_port = rpc_port
        self.gossiping_at: float | None = None

    def parse(self, line: str) -> tuple[str, str] | None:
        m = _PY_EVENT.search(line)
        if m:
            word = m.group(1) or m.group(2) or m.group(3)
            return (_PY_EVENT_KIND[word], m.group(4))
        if self.gossiping_at is None and _PY_GOSSIPING.search(line):
            self.gossiping_at = now()
        return None


_twist_options: set[str] = set()


def twist_options() -> set[str]:
    """The options this checkout's ``twist flyteserf --help`` lists."""
    if not _twist_options:
        out = subprocess.run([twist_command(), "flyteserf", "--help"], capture_output=True,
                             text=True, timeout=60).stdout
        _twist_options.update(re.findall(r"(--[a-z][a-z-]*)=?", out))
    return _twist_options


def twist_command() -> str:
    """The ``twist`` next to this Python (not a pyenv shim, whose PID is a shell)."""
    beside = os.path.join(os.path.dirname(sys.executable), "twist")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("twist")
    if found is None:
        raise BenchError("no twist command: pip install -e . first")
    return found


# -- the serf RPC protocol (what the serf CLI sends) -------------------------


class RPCError(Exception):
    pass


class SerfRPC:
    """A blocking msgpack RPC client: handshake, then request/response."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((HOST, port), timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.unpacker = msgpack.Unpacker(raw=False, unicode_errors="surrogateescape")
        self.seq = 0
        self.call("handshake", {"Version": 1}, body=False)

    def _next(self) -> Any:
        while True:
            try:
                return next(self.unpacker)
            except StopIteration:
                pass
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("serf agent closed the RPC connection")
            self.unpacker.feed(data)

    def call(self, command: str, args: dict[str, Any] | None = None, body: bool = True) -> Any:
        seq, self.seq = self.seq, self.seq + 1
        request = msgpack.packb({"Command": command, "Seq": seq})
        if args is not None:
            request += msgpack.packb(args)
        self.sock.sendall(request)
        header = self._next()
        if header.get("Error"):
            raise RPCError(f"{command}: {header['Error']}")
        return self._next() if body else None

    def close(self) -> None:
        self.sock.close()


# -- /proc -------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for {pid}")


def lo_counters() -> tuple[int, int]:
    base = "/sys/class/net/lo/statistics"
    with open(f"{base}/tx_packets") as p, open(f"{base}/tx_bytes") as b:
        return int(p.read()), int(b.read())


def tcp_inode(sport: int, dport: int) -> int | None:
    """The inode of the open TCP socket 127.0.0.1:sport -> 127.0.0.1:dport.

    One exact sock_diag lookup over netlink (what ``ss`` uses), some 15 µs:
    reading /proc/net/tcp takes milliseconds on a busy host, longer than a
    push/pull connection lives on loopback.
    """
    lo = socket.inet_aton(HOST) + bytes(12)
    sockid = struct.pack("!HH", sport, dport) + lo + lo + struct.pack(
        "=III", 0, 0xFFFFFFFF, 0xFFFFFFFF)  # any interface, INET_DIAG_NOCOOKIE
    request = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    header = struct.pack("=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY, 1, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
        nl.send(header + request)
        reply = nl.recv(8192)
    if len(reply) < 16 + 72 or struct.unpack_from("=H", reply, 4)[0] != _SOCK_DIAG_BY_FAMILY:
        return None  # NLMSG_ERROR: no such socket (any more)
    inode: int = struct.unpack_from("=I", reply, 16 + 68)[0]  # inet_diag_msg.idiag_inode
    return inode or None


_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20


class SocketIndex:
    """Finds which of the cluster's processes holds a socket inode, fast.

    Reading every /proc/PID/fd link of ten processes takes a millisecond or
    more, about as long as a push/pull connection lives; so the links are
    remembered, and a lookup reads only fd numbers it has not seen and
    those that held a socket (the kernel reuses the lowest free fd).
    """

    def __init__(self, pids: Iterable[int]) -> None:
        self.links: dict[int, dict[str, str]] = {pid: {} for pid in pids}
        for pid in self.links:
            self._listing(pid, refresh=True)

    def _listing(self, pid: int, refresh: bool = False) -> list[str]:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            return []
        if refresh:
            for fd in names:
                self._read(pid, fd)
        return names

    def _read(self, pid: int, fd: str) -> str:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            link = ""
        self.links[pid][fd] = link
        return link

    def owner(self, inode: int, pids: Iterable[int]) -> int | None:
        """The PID (of ``pids``, in that order) with an fd on socket ``inode``."""
        target = f"socket:[{inode}]"
        for pid in pids:
            known = self.links.get(pid)
            if known is None:
                continue
            for fd in self._listing(pid):
                link = known.get(fd)
                if (link is None or link.startswith("socket:")) and self._read(pid, fd) == target:
                    return pid
        return None


def socket_owner(sport: int, dport: int, pids: Iterable[int],
                 index: SocketIndex | None = None) -> int | None:
    """The PID holding the TCP socket sport -> dport, if it is still open."""
    try:
        inode = tcp_inode(sport, dport)
    except OSError:
        return None
    if inode is None:
        return None
    pids = list(pids)
    return (index or SocketIndex(pids)).owner(inode, pids)


# -- tcpdump -----------------------------------------------------------------

_TCPDUMP_LINE = re.compile(
    r"^(\d+\.\d+) .*?, length (\d+): [\d.]+\.(\d+) > [\d.]+\.(\d+): (.*)$")


class SynWatcher:
    """Who opens each TCP connection to a gossip port, seen as its SYN is sent.

    A push/pull connection on loopback lives about a millisecond; by the
    time tcpdump has printed its SYN, a Go client has often closed it.  An
    AF_PACKET socket on lo with a kernel filter (compiled by ``tcpdump
    -ddd``) that passes only those SYNs wakes this thread at once; the
    client socket's inode comes from one sock_diag lookup and its process
    from /proc/PID/fd (:class:`SocketIndex`).
    """

    def __init__(self, procs: Sequence[Proc]) -> None:
        self.by_port = {p.port: p for p in procs}
        self.pids = {p.pid: p for p in procs if p.pid is not None}
        self.owners: dict[tuple[int, int], Proc | None] = {}  # (sport, dport) -> client
        self.lags: list[float] = []
        self.log: list[str] = []
        self.index = SocketIndex(self.pids)
        self._stopping = False
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        ports = " or ".join(f"dst port {port}" for port in self.by_port)
        compiled = subprocess.run(
            ["tcpdump", "-i", "lo", "-ddd",
             f"tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn and ({ports})"],
            capture_output=True, text=True, check=True, timeout=10).stdout.split("\n")
        count = int(compiled[0])
        program = b"".join(struct.pack("=HBBI", *map(int, line.split()))
                           for line in compiled[1:1 + count])
        self._program = ctypes.create_string_buffer(program)  # must outlive the socket
        fprog = struct.pack("HP", count, ctypes.addressof(self._program))
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL
        sock.setsockopt(socket.SOL_SOCKET, 26, fprog)  # SO_ATTACH_FILTER
        sock.bind(("lo", 0))
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._watch, name="syn-watcher", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        assert self._sock is not None
        while not self._stopping:
            try:
                frame = self._sock.recv(128)
            except socket.timeout:
                continue
            except OSError:
                return
            t, woke = time.perf_counter(), time.time()
            if len(frame) < 14 + 20 + 14 or frame[12:14] != b"\x08\x00":
                continue
            ip = frame[14:]
            tcp = ip[(ip[0] & 0x0F) * 4:]
            sport, dport = struct.unpack_from("!HH", tcp)
            if (tcp[13] & 0x12) != 0x02 or (sport, dport) in self.owners:
                continue  # not a SYN, or lo's second copy of one
            server = self.by_port.get(dport)
            pid = socket_owner(sport, dport, [pid for pid in self.pids
                                              if server is None or pid != server.pid],
                               self.index)
            owner = self.owners[(sport, dport)] = self.pids.get(pid) if pid else None
            self.lags.append(time.perf_counter() - t)
            self.log.append(f"{woke:.6f} SYN {sport} > {dport} ({server.name if server else '?'}): "
                            f"opened by {owner.name if owner else 'a socket already closed'}, "
                            f"looked up in {1000 * self.lags[-1]:.2f} ms")

    def stop(self) -> None:
        self._stopping = True
        if self._thread is not None:
            self._thread.join(2)
        if self._sock is not None:
            self._sock.close()


class Capture:
    """``tcpdump -i lo`` on the gossip ports; packets and bytes per sender."""

    def __init__(self, procs: Sequence[Proc], log_dir: str) -> None:
        self.procs = list(procs)
        self.by_port = {p.port: p for p in procs}
        self.pids = {p.pid: p for p in procs if p.pid is not None}
        ports = " or ".join(f"port {p.port}" for p in procs)
        self.argv = ["tcpdump", "-i", "lo", "-n", "-tt", "-e", "-l", "--immediate-mode",
                     "-s", "96", f"(udp or tcp) and ({ports})"]
        self.path = os.path.join(log_dir, "tcpdump.txt")
        self.popen: subprocess.Popen[bytes] | None = None
        self.watcher: SynWatcher | None = None
        self.watcher_error = ""
        self.window = (0.0, 0.0)  # wall-clock bounds
        # Per sender: packets, bytes, TCP packets, TCP bytes.
        self.sent: dict[str, list[int]] = {p.name: [0, 0, 0, 0] for p in procs}
        # The client side of TCP connections, per (client port, server port).
        self.client_side: dict[tuple[int, int], list[int]] = {}
        self.late_owners: dict[tuple[int, int], Proc | None] = {}
        self.unattributed = [0, 0, 0]  # packets, bytes, connections
        self.connections = 0
        self.stderr = ""
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            self.watcher = SynWatcher(self.procs)
            self.watcher.start()
        except (OSError, ValueError, subprocess.SubprocessError) as e:
            self.watcher_error = f"{type(e).__name__}: {e}"
            self.watcher = None
        self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, start_new_session=True)
        assert self.popen.stderr is not None
        # tcpdump says "listening on lo" once the capture is live.
        said = []
        while True:
            line = self.popen.stderr.readline().decode("utf-8", "replace")
            said.append(line.strip())
            if "listening on" in line:
                break
            if not line:
                self.stop()
                raise BenchError("tcpdump did not start: " + " ".join(said) + self.stderr)
        self._thread = threading.Thread(target=self._read, name="tcpdump", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.popen is not None and self.popen.stdout is not None
        with open(self.path, "w") as out:
            for raw in iter(self.popen.stdout.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\n")
                out.write(line + "\n")
                m = _TCPDUMP_LINE.match(line)
                if not m:
                    continue
                ts, length = float(m.group(1)), int(m.group(2))
                sport, dport, rest = int(m.group(3)), int(m.group(4)), m.group(5)
                tcp = rest.startswith("Flags [")
                owner = self.by_port.get(sport)
                if owner is None and tcp and self.watcher is None and rest.startswith("Flags [S]"):
                    # No SYN watcher: look the owner up now, probably too late.
                    server = self.by_port.get(dport)
                    pid = socket_owner(sport, dport, [
                        p for p in self.pids if server is None or p != server.pid])
                    self.late_owners[(sport, dport)] = self.pids.get(pid) if pid else None
                if not self.window[0] <= ts <= self.window[1]:
                    continue
                if owner is None:
                    if tcp:
                        side = self.client_side.setdefault((sport, dport), [0, 0])
                        side[0] += 1
                        side[1] += length
                    continue
                counts = self.sent[owner.name]
                counts[0] += 1
                counts[1] += length
                if tcp:
                    counts[2] += 1
                    counts[3] += length

    def stop(self) -> None:
        if self.popen is not None:
            if self.popen.poll() is None:
                try:
                    os.kill(self.popen.pid, signal.SIGINT)  # tcpdump prints its drop counts
                except ProcessLookupError:
                    pass
                try:
                    self.popen.wait(5)
                except subprocess.TimeoutExpired:
                    os.kill(self.popen.pid, signal.SIGKILL)
                    self.popen.wait()
            if self._thread is not None:
                self._thread.join(5)
            if self.popen.stderr is not None:
                self.stderr = self.popen.stderr.read().decode("utf-8", "replace")
        if self.watcher is not None:
            self.watcher.stop()
            with open(os.path.join(os.path.dirname(self.path), "syn-watcher.txt"), "w") as f:
                f.write("".join(line + "\n" for line in self.watcher.log))
        # Give each connection's client-side packets to whoever opened it.
        owners = self.watcher.owners if self.watcher is not None else self.late_owners
        for key, (packets, length) in self.client_side.items():
            self.connections += 1
            owner = owners.get(key)
            if owner is None:
                self.unattributed[0] += packets
                self.unattributed[1] += length
                self.unattributed[2] += 1
                continue
            counts = self.sent[owner.name]
            counts[0] += packets
            counts[1] += length
            counts[2] += packets
            counts[3] += length

    @property
    def dropped(self) -> int:
        m = re.search(r"(\d+) packets? dropped by kernel", self.stderr)
        return int(m.group(1)) if m else 0


# -- phases ------------------------------------------------------------------


def complete_since(node: Proc, others: set[str], t0: float) -> float | None:
    """When ``node``'s view (from its log) last became all of ``others`` alive."""
    alive: set[str] = set()
    done: float | None = None
    with node.lock:
        events = list(node.events)
    for t, kind, name in events:
        if kind == "joined":
            alive.add(name)
        else:
            alive.discard(name)
        if others <= alive:
            if done is None:
                done = t
        else:
            done = None
    return None if done is None else max(done, t0) - t0


def check_alive(procs: Iterable[Proc]) -> None:
    for p in procs:
        if p.killed_at is None and not p.running:
            status = p.popen.returncode if p.popen else "?"
            raise BenchError(f"{p.name} exited with status {status}:\n    {p.tail()}")


def converge(go: list[GoAgent], ours: list[OurNode], poll: float, timeout: float) -> dict[str, Any]:
    everyone = {p.name for p in [*go, *ours]}
    seed = go[0]
    for node in ours:
        node.start()
    deadline = now() + 30
    while any(n.gossiping_at is None for n in ours):
        check_alive(ours)
        if now() > deadline:
            raise BenchError("not every flyteserf node logged 'gossiping on' within 30 s")
        time.sleep(0.005)
    launch = min(n.started_at for n in ours)
    gossiping = [n.gossiping_at for n in ours if n.gossiping_at is not None]
    startup = [t - n.started_at for t, n in zip(gossiping, ours)]
    first_join = min(gossiping)

    # All Go joins at once, one thread each: the RPC returns when the join is done.
    errors: list[str] = []

    def join(agent: GoAgent) -> None:
        try:
            assert agent.rpc is not None
            agent.rpc.call("join", {"Existing": [f"{HOST}:{seed.port}"], "Replay": False})
        except Exception as e:  # reported below
            errors.append(f"{agent.name}: {e}")

    threads = [threading.Thread(target=join, args=(a,)) for a in go[1:]]
    t0 = now()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    joins_returned = now() - t0
    if errors:
        raise BenchError("join failed: " + "; ".join(errors))

    go_done: dict[str, float] = {}
    deadline = t0 + timeout
    while True:
        tick = now()
        for agent in go:
            if agent.name in go_done:
                continue
            statuses = agent.statuses()
            if all(statuses.get(name) == "alive" for name in everyone):
                go_done[agent.name] = now() - t0
        ours_done = {n.name: complete_since(n, everyone - {n.name}, t0) for n in ours}
        if len(go_done) == len(go) and all(v is not None for v in ours_done.values()):
            break
        check_alive([*go, *ours])
        if now() > deadline:
            missing = [a.name for a in go if a.name not in go_done]
            missing += [n for n, v in ours_done.items() if v is None]
            raise BenchError(f"no convergence within {timeout:g}s; "
                             f"incomplete: {', '.join(missing)}")
        time.sleep(max(0.0, poll - (now() - tick)))

    go_log = {a.name: complete_since(a, everyone - {a.name}, t0) for a in go}
    return {
        "t0": t0,
        "go": go_done,
        "ours": ours_done,
        "go_log": go_log,
        "startup": startup,
        "head_start": t0 - first_join,
        "launch_to_t0": t0 - launch,
        "joins_returned": joins_returned,
    }


def idle(procs: list[Proc], seconds: float, log_dir: str) -> dict[str, Any]:
    capture: Capture | None = None
    note = ""
    started: list[Capture] = []
    try:
        if shutil.which("tcpdump") is None:
            note = "tcpdump not installed (apt-get install -y tcpdump): packet figures n/a"
        else:
            capture = Capture(procs, log_dir)
            started.append(capture)
            try:
                capture.start()
            except (BenchError, OSError) as e:
                note = f"tcpdump failed ({e}): packet figures n/a"
                capture = None
        pids = {p.name: p.pid for p in procs if p.pid is not None}
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        lo0, w0, m0 = lo_counters(), time.time(), now()
        if capture is not None:
            capture.window = (w0, w0 + seconds)
        time.sleep(seconds)
        cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        lo1, elapsed = lo_counters(), now() - m0
        if capture is not None:
            capture.window = (w0, w0 + elapsed)
            time.sleep(0.3)  # let the last lines through tcpdump's pipe
        rss = {name: rss_mib(pid) for name, pid in pids.items()}
    finally:
        for c in started:
            c.stop()
    result: dict[str, Any] = {
        "seconds": elapsed,
        "cpu": {n: 100 * (cpu1[n] - cpu0[n]) / elapsed for n in pids},
        "rss": rss,
        "lo": ((lo1[0] - lo0[0]) / elapsed, (lo1[1] - lo0[1]) / elapsed),
        "note": note,
    }
    if capture is not None:
        result["pps"] = {n: c[0] / elapsed for n, c in capture.sent.items()}
        result["bps"] = {n: c[1] / elapsed for n, c in capture.sent.items()}
        result["tcp_bps"] = {n: c[3] / elapsed for n, c in capture.sent.items()}
        result["unattributed"] = (capture.unattributed[0] / elapsed,
                                  capture.unattributed[1] / elapsed)
        result["connections"] = (capture.connections, capture.unattributed[2])
        result["syn_watcher"] = (
            f"SYN watcher: looked up {len(capture.watcher.lags)} TCP connections, each in "
            f"{1000 * max(capture.watcher.lags, default=0):.2f} ms at most"
            if capture.watcher is not None else
            f"no SYN watcher ({capture.watcher_error}); client sides looked up from "
            "tcpdump's lines, mostly too late")
        result["captured"] = sum(c[0] for c in capture.sent.values()) + capture.unattributed[0]
        result["dropped"] = capture.dropped
    return result


def detect(victim: Proc, go: list[GoAgent], ours: list[OurNode], poll: float,
           timeout: float) -> dict[str, Any]:
    go_alive = [a for a in go if a.killed_at is None and a is not victim]
    ours_alive = [n for n in ours if n.killed_at is None and n is not victim]
    t_kill = victim.kill9()
    go_done: dict[str, float] = {}
    ours_done: dict[str, float] = {}
    deadline = t_kill + timeout
    while True:
        tick = now()
        for agent in go_alive:
            if agent.name not in go_done and agent.statuses().get(victim.name) == "failed":
                go_done[agent.name] = now() - t_kill
        for node in ours_alive:
            if node.name not in ours_done:
                for t, kind, name in node.events_since(t_kill):
                    if name == victim.name and kind in ("failed", "left"):
                        ours_done[node.name] = t - t_kill
                        break
        if len(go_done) == len(go_alive) and len(ours_done) == len(ours_alive):
            break
        check_alive([*go_alive, *ours_alive])
        if now() > deadline:
            break
        time.sleep(max(0.0, poll - (now() - tick)))
    left_not_failed = [n.name for n in ours_alive
                       if any(name == victim.name and kind == "left"
                              for _, kind, name in n.events_since(t_kill))]
    return {
        "victim": victim.name,
        "go": go_done,
        "ours": ours_done,
        "go_missing": [a.name for a in go_alive if a.name not in go_done],
        "ours_missing": [n.name for n in ours_alive if n.name not in ours_done],
        "left_not_failed": left_not_failed,
    }


class UserStream:
    """An RPC ``stream`` of user events held open on one process; arrivals timestamped."""

    def __init__(self, proc: Proc) -> None:
        assert proc.rpc_port is not None
        self.proc = proc
        self.rpc = SerfRPC(proc.rpc_port)
        self.rpc.call("stream", {"Type": "user"}, body=False)  # registered once this returns
        self.rpc.sock.settimeout(0.2)
        self.seen: dict[str, float] = {}  # event name -> first delivery
        self.duplicates: list[str] = []
        self.error = ""
        self.lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._read, name=f"stream-{proc.name}",
                                        daemon=True)
        self._thread.start()

    def _read(self) -> None:
        header: Any = None
        while not self._stopping:
            try:
                item = self.rpc._next()
            except socket.timeout:
                continue
            except (OSError, ConnectionError, ValueError) as e:
                if not self._stopping:
                    self.error = f"{type(e).__name__}: {e}"
                return
            t = now()
            if header is None:
                header = item
                if isinstance(header, dict) and header.get("Error"):
                    self.error = f"stream record error: {header['Error']}"
                continue
            header = None
            if not isinstance(item, dict) or item.get("Event") != "user":
                self.error = f"unexpected stream record {item!r}"
                continue
            name = str(item.get("Name"))
            with self.lock:
                if name in self.seen:
                    self.duplicates.append(name)
                else:
                    self.seen[name] = t

    def has(self, names: Iterable[str]) -> bool:
        with self.lock:
            return all(n in self.seen for n in names)

    def close(self) -> None:
        self._stopping = True
        self._thread.join(2)
        self.rpc.close()


def user_events(origins: Sequence[Proc], procs: list[Proc], count: int, gap: float,
                timeout: float) -> dict[str, Any]:
    """Coalesce=false user events from each origin; when each process's stream delivers them."""
    streams: list[UserStream] = []
    try:
        for p in procs:
            streams.append(UserStream(p))
        time.sleep(0.2)
        sent: dict[str, tuple[str, float]] = {}  # event name -> (origin, sent at)
        for origin in origins:
            assert origin.rpc is not None
            for i in range(count):
                name = f"bench-{origin.name}-{i}"
                t = now()
                origin.rpc.call("event", {"Name": name, "Payload": b"bench", "Coalesce": False},
                                body=False)
                sent[name] = (origin.name, t)
                check_alive(procs)
                time.sleep(max(0.0, t + gap - now()))
        deadline = now() + timeout
        while not all(s.has(sent) for s in streams) and now() < deadline:
            check_alive(procs)
            time.sleep(0.05)
        time.sleep(0.3)  # duplicates, if any
    finally:
        for s in streams:
            s.close()
    result: dict[str, Any] = {"count": count, "gap": gap, "origins": [o.name for o in origins]}
    missing: list[str] = []
    for origin in origins:
        per_kind: dict[str, list[float]] = {"go": [], "py": []}
        medians: dict[str, list[float]] = {"go": [], "py": []}
        for name, (sender, t) in sent.items():
            if sender != origin.name:
                continue
            for kind in ("go", "py"):
                times = []
                for s in streams:
                    if s.proc.kind != kind:
                        continue
                    if name in s.seen:
                        times.append(s.seen[name] - t)
                    else:
                        missing.append(f"{s.proc.name} never delivered {name}")
                if times and len(times) == sum(1 for s in streams if s.proc.kind == kind):
                    per_kind[kind].append(max(times))
                    medians[kind].append(statistics.median(times))
        result[origin.name] = {
            "last": {k: statistics.median(v) if len(v) == count else None
                     for k, v in per_kind.items()},
            "median": {k: statistics.median(v) if len(v) == count else None
                       for k, v in medians.items()},
            "spread": {k: (min(v), max(v)) if v else None for k, v in per_kind.items()},
        }
    result["missing"] = missing
    result["duplicates"] = [f"{s.proc.name} delivered {name} again" for s in streams
                            for name in s.duplicates]
    result["errors"] = [f"{s.proc.name}: {s.error}" for s in streams if s.error]
    return result


def run_query(origin: Proc, name: str, timeout: float) -> dict[str, Any]:
    """One query with acks over a fresh RPC connection; record arrival times."""
    assert origin.rpc_port is not None
    rpc = SerfRPC(origin.rpc_port, timeout=timeout + 10)
    try:
        seq, rpc.seq = rpc.seq, rpc.seq + 1
        request = msgpack.packb({"Command": "query", "Seq": seq}) + msgpack.packb({
            "FilterNodes": [], "FilterTags": {}, "RequestAck": True,
            "Timeout": int(timeout * 1e9), "Name": name, "Payload": b"bench"})
        t0 = now()
        rpc.sock.sendall(request)
        header = rpc._next()
        if header.get("Error"):
            raise BenchError(f"query from {origin.name}: {header['Error']}")
        acks: dict[str, float] = {}
        responses: dict[str, float] = {}
        payloads: dict[str, Any] = {}
        odd: list[str] = []
        while True:
            try:
                header = rpc._next()
                body = rpc._next()
            except (OSError, ConnectionError) as e:
                raise BenchError(f"query from {origin.name}: no 'done' record ({e})") from None
            t = now() - t0
            if header.get("Error"):
                odd.append(f"record error {header['Error']!r}")
            kind, sender = body.get("Type"), body.get("From")
            if kind == "done":
                done = t
                break
            target = acks if kind == "ack" else responses if kind == "response" else None
            if target is None:
                odd.append(f"unexpected record {body!r}")
            elif sender in target:
                odd.append(f"second {kind} from {sender}")
            else:
                target[sender] = t
                if kind == "response":
                    payloads[sender] = body.get("Payload")
        return {"origin": origin.name, "acks": acks, "responses": responses,
                "payloads": payloads, "done": done, "odd": odd}
    finally:
        rpc.close()


def queries(origins: Sequence[Proc], procs: list[Proc], count: int, timeout: float
            ) -> dict[str, Any]:
    everyone = {p.name for p in procs}
    result: dict[str, Any] = {"count": count, "timeout": timeout, "notes": []}
    for origin in origins:
        runs = []
        for i in range(count):
            check_alive(procs)
            q = run_query(origin, f"bench-{origin.name}-{i}", timeout)
            runs.append(q)
            for kind in ("acks", "responses"):
                lacking = sorted(everyone - set(q[kind]))
                if lacking:
                    result["notes"].append(f"query {i} from {origin.name}: no {kind[:-1]} from "
                                           f"{', '.join(lacking)}")
            strange = {f"{k}: {v!r}" for k, v in q["payloads"].items() if v != b"ok\n"}
            if strange:
                result["notes"].append(f"query {i} from {origin.name}: responses other than "
                                       f"b'ok\\n': {', '.join(sorted(strange))}")
            result["notes"] += [f"query {i} from {origin.name}: {o}" for o in q["odd"]]
            time.sleep(0.3)

        def all_in(q: dict[str, Any], kind: str) -> float | None:
            return max(q[kind].values()) if set(q[kind]) >= everyone else None

        def median(values: list[float | None]) -> float | None:
            return None if any(v is None for v in values) else statistics.median(values)  # type: ignore[type-var]

        result[origin.name] = {
            "acks": median([all_in(q, "acks") for q in runs]),
            "responses": median([all_in(q, "responses") for q in runs]),
            "done": median([q["done"] for q in runs]),
        }
    return result


# -- the report --------------------------------------------------------------


def fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def ratio(ours: float | None, go: float | None) -> str:
    if ours is None or go is None or go == 0:
        return "n/a"
    return f"{ours / go:.2f}"


def spread(values: Iterable[float], digits: int) -> tuple[str, float | None]:
    v = sorted(values)
    if not v:
        return "n/a", None
    med = statistics.median(v)
    return f"{v[0]:.{digits}f} / {med:.{digits}f} / {v[-1]:.{digits}f}", med


def versions(serf: str) -> list[str]:
    import twisted

    def pkg(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "?"

    try:
        serf_v = subprocess.run([serf, "version"], capture_output=True, text=True,
                                timeout=10).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        serf_v = ["?"]
    try:
        deb = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "serf"], capture_output=True,
                             text=True, timeout=10).stdout.strip() or "not from dpkg"
    except (OSError, subprocess.SubprocessError):
        deb = "not from dpkg"
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from flyteserf import __version__
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", repo, "log", "-1", "--format=%h"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no",
                                "flyteserf", "twisted"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        checkout = f"checkout {head}" + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        checkout = "checkout unknown"
    return [
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"Twisted {twisted.__version__}, msgpack {pkg('msgpack')}, "
        f"cryptography {pkg('cryptography')}, flyteserf {__version__} ({checkout})",
        f"serf {serf}: Debian package {deb}; `serf version`: {', '.join(serf_v)}",
        f"CPU {cpu}, {os.cpu_count()} cores; Linux {platform.release()}",
    ]


def table(rows: list[tuple[str, str, str, str]]) -> str:
    head = ("metric", "Go", "ours", "ratio")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    out = []
    for i, row in enumerate([head, *rows]):
        out.append(" | ".join(c.ljust(widths[j]) if j == 0 else c.rjust(widths[j])
                              for j, c in enumerate(row)))
        if i == 0:
            out.append("-+-".join("-" * w for w in widths))
    return "\n".join(out)


_NOTABLE_GO = re.compile(r"\[(WARN|ERR)\]|Suspect |Marking \S+ as failed|Refuting|"
                         r"EventMemberFailed|EventMemberLeave|EventMemberUpdate")
_NOTABLE_PY = re.compile(r"#(warn|error|critical)\]|Traceback|Unhandled|suspect|refut|"
                         r"member[- ](failed|left|leave|update)|EventMember(Failed|Leave|Update)",
                         re.I)


def notable_lines(procs: list[Proc], t0: float, t_end: float
                  ) -> tuple[list[str], int]:
    """Log lines worth a look, except those about a node the bench killed."""
    killed = [(p.name, p.killed_at) for p in procs if p.killed_at is not None]
    shown: list[str] = []
    expected = 0
    for p in procs:
        pattern = _NOTABLE_GO if p.kind == "go" else _NOTABLE_PY
        with p.lock:
            lines = list(p.lines)
        for t, line in lines:
            if t > t_end or not pattern.search(line):
                continue
            if any(re.search(rf"\b{re.escape(name)}\b", line) and t >= when
                   for name, when in killed):
                expected += 1
                continue
            shown.append(f"  {t - t0:+8.3f}s {p.name}: {line.strip()}")
    return shown, expected


def report(args: argparse.Namespace, conv: dict[str, Any], idl: dict[str, Any],
           serf_layer: dict[str, Any], kills: list[dict[str, Any]], go: list[GoAgent],
           ours: list[OurNode]) -> str:
    rows: list[tuple[str, str, str, str]] = []
    n2 = 2 * args.n

    def last(values: dict[str, float | None]) -> float | None:
        v = list(values.values())
        return None if not v or any(x is None for x in v) else max(v)  # type: ignore[type-var]

    def med(values: dict[str, float | None] | list[float]) -> float | None:
        v = [x for x in (values.values() if isinstance(values, dict) else values) if x is not None]
        return statistics.median(v) if v else None

    g, o = last(conv["go"]), last(conv["ours"])
    rows.append((f"convergence: last process sees {n2} alive (s)", fmt(g), fmt(o), ratio(o, g)))
    g, o = med(conv["go"]), med(conv["ours"])
    rows.append(("convergence: median process (s)", fmt(g), fmt(o), ratio(o, g)))
    g, o = last(conv["go_log"]), last(conv["ours"])
    rows.append(("convergence: last, both from join log lines (s)", fmt(g), fmt(o), ratio(o, g)))

    by_kind = {"go": [p.name for p in go], "py": [p.name for p in ours]}

    def idle_row(label: str, key: str, digits: int) -> None:
        if key not in idl:
            rows.append((label, "n/a", "n/a", "n/a"))
            return
        gs, gm = spread((idl[key][n] for n in by_kind["go"]), digits)
        os_, om = spread((idl[key][n] for n in by_kind["py"]), digits)
        rows.append((label, gs, os_, ratio(om, gm)))

    idle_row("idle CPU % per process (min / med / max)", "cpu", 2)
    idle_row("idle RSS MiB per process (min / med / max)", "rss", 1)
    idle_row("idle packets/s sent per process", "pps", 2)
    idle_row("idle bytes/s sent per process", "bps", 0)
    idle_row("  of which TCP bytes/s (push/pull)", "tcp_bps", 0)

    ev = serf_layer.get("events")
    if ev is not None:
        for origin in ev["origins"]:
            who = "a Go agent" if origin.startswith("go") else "one of ours"
            g, o = ev[origin]["last"]["go"], ev[origin]["last"]["py"]
            rows.append((f"user event from {who} ({origin}): last to deliver (s)", fmt(g, 3),
                         fmt(o, 3), ratio(o, g)))
    qs = serf_layer.get("queries")
    if qs is not None:
        g_origin, o_origin = serf_layer["events"]["origins"]
        for key in ("acks", "responses"):
            g, o = qs[g_origin][key], qs[o_origin][key]
            rows.append((f"query from {g_origin} / {o_origin}: all {n2} {key} (s)", fmt(g, 3),
                         fmt(o, 3), ratio(o, g)))
    else:
        rows.append(("user events and queries", "n/a", "n/a", "n/a"))

    for k in kills:
        kind = "Go agent" if k["victim"].startswith("go") else "our node"
        g, o = med(k["go"]), med(k["ours"])
        rows.append((f"kill -9 {kind} ({k['victim']}): median survivor (s)", fmt(g), fmt(o),
                     ratio(o, g)))
        g = None if k["go_missing"] else last(k["go"])
        o = None if k["ours_missing"] else last(k["ours"])
        rows.append((f"kill -9 {kind} ({k['victim']}): last survivor (s)",
                     fmt(g) if not k["go_missing"] else "timeout",
                     fmt(o) if not k["ours_missing"] else "timeout", ratio(o, g)))

    flavours = set()
    for node in ours:
        with node.lock:
            text = "\n".join(line for _, line in node.lines[:40])
        if " flyteserf agent " in text or "EventMemberJoin" in text:
            flavours.add("serf agent (serf layer, RPC)")
        elif "Member joined" in text:
            flavours.add("memberlist-only node")
    out = [f"our nodes ran as: {', '.join(sorted(flavours)) or 'unknown'}", "", table(rows), ""]
    notes = [
        f"t=0 is when the {args.n - 1} Go join RPCs were sent, {fmt(conv['launch_to_t0'])} s after "
        f"launching our {args.n} processes (their start-up to 'gossiping on': "
        f"{spread(conv['startup'], 2)[0]} s min / med / max); ours began joining up to "
        f"{fmt(conv['head_start'])} s before t=0. The join RPCs returned after "
        f"{fmt(conv['joins_returned'], 3)} s. Go is polled every {args.poll_ms:g} ms.",
        f"idle window {fmt(idl['seconds'], 1)} s, starting {args.settle:g} s after convergence; "
        f"loopback total (all traffic on lo) {idl['lo'][0]:.1f} pkt/s, {idl['lo'][1]:.0f} B/s.",
    ]
    if idl.get("note"):
        notes.append(idl["note"])
    if ev is not None:
        o0, o1 = ev["origins"]
        line = (f"user events: {ev['count']} from each origin, {ev['gap']:g} s apart, "
                f"Coalesce=false, sent over the origin's RPC (`event`); delivery is when the "
                f"record reaches an RPC `stream` (Type user) held open on every process; "
                f"medians over the events of the last delivery, the Go column for Go processes "
                f"and the ours column for ours (origin included). Median process: ")
        line += "; ".join(
            f"from {o}: Go {fmt(ev[o]['median']['go'], 3)}, ours {fmt(ev[o]['median']['py'], 3)}"
            f" s; last per event from {o}: Go "
            + "-".join(fmt(x, 3) for x in (ev[o]["spread"]["go"] or (None,)))
            + ", ours " + "-".join(fmt(x, 3) for x in (ev[o]["spread"]["py"] or (None,))) + " s"
            for o in (o0, o1)) + "."
        notes.append(line)
        for problem in ev["missing"][:10] + ev["duplicates"][:10] + ev["errors"][:10]:
            notes.append(f"user events: {problem}")
    if qs is not None:
        notes.append(f"queries: {qs['count']} from each origin, RequestAck, Timeout "
                     f"{qs['timeout']:g} s, every process answering with its event handler "
                     f"`query={QUERY_HANDLER}`; times from the query RPC's records to the "
                     f"origin, medians over the queries. Go column: origin {o0}; ours column: "
                     f"origin {o1}. 'done' came after {fmt(qs[o0]['done'])} / "
                     f"{fmt(qs[o1]['done'])} s.")
        notes += [f"queries: {n}" for n in qs["notes"][:20]]
    elif not serf_layer:
        notes.append("user events and queries skipped: this checkout's twist flyteserf has "
                     "no --rpc-addr")
    if "unattributed" in idl:
        pkts, byts = idl["unattributed"]
        conns, lost = idl["connections"]
        notes.append(f"tcpdump: {idl['captured']} packets in the window, {idl['dropped']} dropped "
                     f"by the kernel; {conns} TCP connections, {lost} of them with a client "
                     f"side whose owner was gone before it could be looked up ({pkts:.2f} "
                     f"pkt/s, {byts:.0f} B/s, not in the figures); {idl['syn_watcher']}.")
    for k in kills:
        if k["go_missing"] or k["ours_missing"]:
            notes.append(f"kill of {k['victim']}: no failure seen within {args.detect_timeout:g} s "
                         f"by {', '.join(k['go_missing'] + k['ours_missing'])}")
        if k["left_not_failed"]:
            notes.append(f"kill of {k['victim']}: logged as 'left', not 'failed', by "
                         f"{', '.join(k['left_not_failed'])}")
    out += ["notes:"] + [f"- {n}" for n in notes]
    return "\n".join(out)


# -- main --------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5, help="Go agents, and as many of ours (5)")
    parser.add_argument("--encrypt", action="store_true", help="gossip with a random AES-256 key")
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="idle window (30)")
    parser.add_argument("--settle", type=float, default=60.0,
                        help="pause between convergence and the idle window (60): a Go agent's "
                             "first push/pull comes 30 to 60 s after it starts")
    parser.add_argument("--poll-ms", type=float, default=50.0,
                        help="how often each Go agent's members are polled (50)")
    parser.add_argument("--events", type=int, default=5,
                        help="user events (Coalesce=false) sent from a Go agent, and from one "
                             "of ours (5)")
    parser.add_argument("--event-gap", type=float, default=1.0,
                        help="seconds between two user events (1)")
    parser.add_argument("--queries", type=int, default=3,
                        help="queries with acks from a Go agent, and from one of ours (3)")
    parser.add_argument("--query-timeout", type=float, default=2.5,
                        help="each query's Timeout, in seconds (2.5)")
    parser.add_argument("--converge-timeout", type=float, default=30.0)
    parser.add_argument("--detect-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    if args.n < 2:
        parser.error("--n must be at least 2")
    serf = find_serf_binary()
    if serf is None:
        parser.error("no serf binary: apt-get install serf")

    # Ctrl-C reaches only this process (children have their own sessions);
    # SIGINT (even where a shell ignored it), SIGTERM and SIGHUP all unwind
    # through the finally block below, which stops every child by PID.
    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, terminate)

    key = base64.b64encode(os.urandom(32)).decode() if args.encrypt else None
    log_dir = tempfile.mkdtemp(prefix="flyteserf-cluster-bench-")
    head = [f"flyteserf cluster bench: {args.n} serf agents + {args.n} flyteserf nodes on "
            f"{HOST}, encryption {'AES-256' if key else 'off'}, LAN profile", *versions(serf)]
    print("\n".join(head), flush=True)
    print(f"logs: {log_dir}", flush=True)

    go = [GoAgent(f"go{i}", find_free_port(HOST), find_free_port(HOST), serf, key, log_dir)
          for i in range(args.n)]
    ours = [OurNode(f"py{i}", find_free_port(HOST), go[0].port, key, log_dir)
            for i in range(args.n)]
    procs: list[Proc] = [*go, *ours]
    poll = args.poll_ms / 1000
    phases: list[str] = []
    try:
        for agent in go:
            agent.start()
        for agent in go:
            agent.connect()
        print("converging ...", flush=True)
        conv = converge(go, ours, poll, args.converge_timeout)
        phases.append(f"t=0 (Go joins sent) at [{conv['t0'] - STARTED:9.3f}]")
        time.sleep(args.settle)
        print(f"idle for {args.idle_seconds:g} s ...", flush=True)
        idl = idle(procs, args.idle_seconds, log_dir)
        serf_layer: dict[str, Any] = {}
        if all(p.rpc_port is not None for p in procs):
            for node in ours:
                node.connect()
            origins = (go[0], ours[0])
            print(f"user events ({args.events} from {go[0].name}, {args.events} from "
                  f"{ours[0].name}) ...", flush=True)
            phases.append(f"user events from [{now() - STARTED:9.3f}]")
            serf_layer["events"] = user_events(origins, procs, args.events, args.event_gap,
                                               args.detect_timeout)
            print(f"queries ({args.queries} from {go[0].name}, {args.queries} from "
                  f"{ours[0].name}) ...", flush=True)
            phases.append(f"queries from [{now() - STARTED:9.3f}]")
            serf_layer["queries"] = queries(origins, procs, args.queries, args.query_timeout)
        kills = []
        for victim in (go[-1], ours[-1]):
            print(f"kill -9 {victim.name} ...", flush=True)
            kills.append(detect(victim, go, ours, poll, args.detect_timeout))
            phases.append(f"kill -9 {victim.name} at [{(victim.killed_at or 0) - STARTED:9.3f}]")
        t_end = now()
        print()
        print(report(args, conv, idl, serf_layer, kills, go, ours))
        shown, expected = notable_lines(procs, conv["t0"], t_end)
        print(f"\nwarnings, errors, suspicions, failures and leaves logged, except "
              f"{expected} about the killed nodes (time from t=0):")
        print("\n".join(shown[:40]) if shown else "  none")
        if len(shown) > 40:
            print(f"  ... and {len(shown) - 40} more")
        print(f"\nlogs: {log_dir}")
        return 0
    except BenchError as e:
        print(f"\nbench failed: {e}", file=sys.stderr)
        print(f"logs: {log_dir}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; stopping every process", file=sys.stderr)
        return 130
    finally:
        with open(os.path.join(log_dir, "phases.txt"), "w") as f:
            f.write("log lines are stamped [seconds since the bench started]\n")
            f.write("".join(f"{p.name}: {' '.join(p.argv)}\n" for p in procs))
            f.write("".join(line + "\n" for line in phases))
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not skip the cleanup
        for p in procs:
            if p.rpc is not None:
                p.rpc.close()
        for p in procs:
            p.terminate()  # all at once, then wait for each
        for p in procs:
            p.stop()


if __name__ == "__main__":
    sys.exit(main())
