"""Throughput of flyteserf's wire codecs (flyteserf.wire), in one process.

    python3 bench/codec.py [--seconds N]

Prints a header (Python, twisted, msgpack, cryptography, CPU), the sizes of
the test messages, then one line per figure: operations per second and
microseconds per operation.  Each figure warms up, then runs ``--seconds``
(default 1.0) split into five rounds and reports the fastest round, as
``timeit`` advises: slower rounds measure other load on the machine, not the
code.  The default run takes about 15 s.

The figures:

gossip compound
    What a Go agent's ping with piggybacked broadcasts looks like on the
    wire (serf-wire §2.4): compound [ping, alive with tags, 0x08 + serf user
    event (20-byte payload), 0x08 + serf join intent], LZW-compressed when
    that is smaller, hasCrc, AES-256-GCM.  *encode* encodes the ping and
    packs the already-encoded broadcasts (memberlist queues broadcasts as
    bytes), compresses, adds the CRC and encrypts; *decode* goes all the way
    to typed messages: decrypt, CRC, decompress, split, decode each part.
plain ping
    A bare ping datagram: no compression, CRC or encryption.
LZW / AES-GCM
    The two expensive layers alone, on the gossip compound.
push/pull, 100 nodes
    A TCP push/pull stream of 100 node states with tags and the serf user
    state (100 status clocks, the 512-slot event ring with 32 events),
    compressed and encrypted as memberlist always sends it; decode goes
    through StreamReader and decodes the serf state too.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

# Run from a checkout without installing: put the repository on sys.path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flyteserf.wire import crypto, lzw  # noqa: E402
from flyteserf.wire.framing import make_compounds  # noqa: E402
from flyteserf.wire.messages import (  # noqa: E402
    DEFAULT_VSN,
    Alive,
    MessageType,
    NodeState,
    Ping,
    PushNodeState,
    decode_message,
    ip_to_wire,
)
from flyteserf.wire.packet import decode_packet, encode_packet  # noqa: E402
from flyteserf.wire.serf_messages import (  # noqa: E402
    EventEntry,
    Join,
    PushPull,
    UserEvent,
    UserEvents,
    decode_serf_message,
)
from flyteserf.wire.stream import (  # noqa: E402
    PushPullStream,
    StreamReader,
    encode_push_pull,
    encode_stream,
)
from flyteserf.wire.tags import encode_tags  # noqa: E402

KEY = bytes(range(32))  # AES-256
ROUNDS = 5
EVENT_RING = 512
USER = bytes((MessageType.USER,))


# --- the messages -------------------------------------------------------------


def make_ping(seq_no: int = 4711) -> Ping:
    return Ping(
        seq_no=seq_no,
        node="node-b",
        source_addr=ip_to_wire("10.0.0.1"),
        source_port=7946,
        source_node="node-a",
    )


def make_broadcasts() -> list[bytes]:
    """Three queued broadcasts, encoded as memberlist's queue holds them."""
    alive = Alive(
        incarnation=3,
        node="node-c",
        addr=ip_to_wire("10.0.0.3"),
        port=7946,
        meta=encode_tags({"role": "web", "dc": "eu-west-1", "version": "1.4.2"}),
        vsn=DEFAULT_VSN,
    )
    event = UserEvent(ltime=42, name="deploy", payload=b"release-2024.06.01-a", cc=True)
    join = Join(ltime=7, node="node-d")
    return [alive.encode(), USER + event.encode(), USER + join.encode()]


def encode_gossip(ping: Ping, broadcasts: list[bytes]) -> bytes:
    (compound,) = make_compounds([ping.encode(), *broadcasts])
    return encode_packet(compound, crc=True, compress=True, key=KEY)


def decode_gossip(packet: bytes) -> list[object]:
    contents = decode_packet(packet, (KEY,))
    out: list[object] = []
    for msg in contents.messages:
        if msg[0] == MessageType.USER:
            out.append(decode_serf_message(msg[1:]))
        else:
            out.append(decode_message(msg))
    return out


def make_push_pull(nodes: int = 100) -> tuple[list[PushNodeState], bytes]:
    states = [
        PushNodeState(
            name=f"node-{i:03d}",
            addr=ip_to_wire(f"10.0.{i // 250}.{i % 250 + 1}"),
            port=7946,
            meta=encode_tags({"role": "web" if i % 2 else "db", "dc": "eu-west-1"}),
            incarnation=1 + i % 5,
            state=NodeState.ALIVE if i % 10 else NodeState.DEAD,
            vsn=DEFAULT_VSN,
        )
        for i in range(nodes)
    ]
    ring: list[UserEvents | None] = [None] * EVENT_RING
    for ltime in range(100, 132):
        ring[ltime % EVENT_RING] = UserEvents(
            ltime=ltime, events=(EventEntry(name="deploy", payload=b"v%d" % ltime),)
        )
    serf_state = PushPull(
        ltime=250,
        status_ltimes={s.name: 100 + i for i, s in enumerate(states)},
        left_members=tuple(s.name for s in states if s.state == NodeState.DEAD),
        event_ltime=132,
        events=tuple(ring),
        query_ltime=17,
    )
    return states, serf_state.encode()


def encode_push_pull_stream(states: list[PushNodeState], user_state: bytes) -> bytes:
    return encode_stream(encode_push_pull(False, states, user_state), compress=True, key=KEY)


def decode_push_pull_stream(stream: bytes) -> tuple[PushPullStream, PushPull]:
    reply = StreamReader((KEY,)).feed(stream)
    assert isinstance(reply, PushPullStream), reply
    serf = decode_serf_message(reply.user_state)
    assert isinstance(serf, PushPull), serf
    return reply, serf


# --- timing -----------------------------------------------------------------------


def measure(func: Callable[[], object], seconds: float) -> float:
    """Seconds per call: the fastest of ROUNDS rounds after a warm-up."""
    # Warm up, and find a batch size that takes about 20 ms.
    batch = 1
    while True:
        start = time.perf_counter()
        for _ in range(batch):
            func()
        elapsed = time.perf_counter() - start
        if elapsed >= 0.02:
            break
        batch *= 2
    warm_until = time.perf_counter() + min(0.2, seconds / 5)
    while time.perf_counter() < warm_until:
        func()
    best = float("inf")
    per_round = seconds / ROUNDS
    for _ in range(ROUNDS):
        calls = 0
        start = time.perf_counter()
        deadline = start + per_round
        while True:
            for _ in range(batch):
                func()
            calls += batch
            now = time.perf_counter()
            if now >= deadline:
                break
        best = min(best, (now - start) / calls)
    return best


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def msgpack_flavour() -> str:
    import msgpack

    return "C extension" if msgpack.Packer.__module__ == "msgpack._cmsgpack" else "pure Python"


def header() -> str:
    return (
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"twisted {package_version('twisted')}, "
        f"msgpack {package_version('msgpack')} ({msgpack_flavour()}), "
        f"cryptography {package_version('cryptography')}; "
        f"CPU: {cpu_model()} ({os.cpu_count()} logical)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark flyteserf's wire codecs.")
    parser.add_argument(
        "--seconds",
        type=float,
        default=1.0,
        help="measuring time per figure, in seconds (default 1.0; the run takes ~15x this)",
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error(f"--seconds must be positive, got {args.seconds}")

    ping = make_ping()
    broadcasts = make_broadcasts()
    (compound,) = make_compounds([ping.encode(), *broadcasts])
    gossip = encode_gossip(ping, broadcasts)
    compressed = lzw.compress(compound)
    plaintext = crypto.decrypt(KEY, gossip)
    sealed = crypto.encrypt(KEY, plaintext)
    plain_ping = encode_packet(ping.encode())
    states, user_state = make_push_pull()
    stream = encode_push_pull_stream(states, user_state)
    stream_plain = encode_push_pull(False, states, user_state)

    # Sanity: everything round-trips before it is timed.
    decoded = decode_gossip(gossip)
    assert [type(m).__name__ for m in decoded] == ["Ping", "Alive", "UserEvent", "Join"], decoded
    assert lzw.decompress(compressed) == compound
    assert decode_message(decode_packet(plain_ping).messages[0]) == ping
    reply, serf = decode_push_pull_stream(stream)
    assert reply.states == tuple(states) and len(serf.events) == EVENT_RING

    was_compressed = plaintext[5] == MessageType.COMPRESS
    print(header())
    print(
        f"gossip compound {len(compound)} B -> LZW {len(compressed)} B "
        f"({'compressed' if was_compressed else 'sent uncompressed: LZW is not smaller'}) "
        f"-> +CRC {len(plaintext)} B -> AES-256-GCM {len(gossip)} B on the wire; "
        f"plain ping {len(plain_ping)} B; push/pull of {len(states)} nodes "
        f"{len(stream_plain)} B -> {len(stream)} B compressed+encrypted"
    )
    print(f"each figure: best of {ROUNDS} rounds over {args.seconds:g} s, after a warm-up")
    print()

    def gossip_encode() -> bytes:
        return encode_gossip(ping, broadcasts)

    def ping_decode() -> object:
        return decode_message(decode_packet(plain_ping).messages[0])

    def push_pull_encode() -> bytes:
        return encode_push_pull_stream(states, user_state)

    def push_pull_decode() -> object:
        return decode_push_pull_stream(stream)

    figures: list[tuple[str, Callable[[], object]]] = [
        ("gossip compound encode (ping+3 bcasts, lzw+crc+aes)", gossip_encode),
        ("gossip compound decode (to 4 typed messages)", lambda: decode_gossip(gossip)),
        ("plain ping encode", lambda: encode_packet(ping.encode())),
        ("plain ping decode", ping_decode),
        (f"LZW compress ({len(compound)} B compound)", lambda: lzw.compress(compound)),
        (f"LZW decompress ({len(compressed)} B)", lambda: lzw.decompress(compressed)),
        (f"AES-256-GCM encrypt ({len(plaintext)} B)", lambda: crypto.encrypt(KEY, plaintext)),
        (f"AES-256-GCM decrypt ({len(sealed)} B)", lambda: crypto.decrypt(KEY, sealed)),
        (f"push/pull {len(states)} nodes encode (lzw+aes)", push_pull_encode),
        (f"push/pull {len(states)} nodes decode (+serf state)", push_pull_decode),
    ]
    width = max(len(name) for name, _ in figures)
    for name, func in figures:
        per_op = measure(func, args.seconds)
        print(
            f"{name:<{width}}  {1 / per_op:>11,.0f} ops/s  {per_op * 1e6:>9.2f} µs/op",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
