"""The shared-memory ring: layout, wrap-around, back-pressure, doorbells, other processes."""

from __future__ import annotations

import asyncio
import mmap
import multiprocessing
import os
import random
import select
import struct
import subprocess
import sys
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import pytest

from activecall._native.ring import KIND_AUDIO, KIND_CONTROL, KIND_TEXT, Ring, RingSpec

KINDS = (KIND_TEXT, KIND_AUDIO, KIND_CONTROL)
HEADER = 16
HANG_GUARD = 60.0  # seconds without progress before a cross-process test gives up


def need(n: int) -> int:
    """Bytes a record with an n-byte payload occupies (header, payload, 8-byte alignment)."""
    return (HEADER + n + 7) & ~7


def shm_path(ring: Ring) -> str:
    return "/dev/shm/" + ring.spec.name


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def wait_readable(fd: int) -> None:
    if not select.select([fd], [], [], HANG_GUARD)[0]:
        pytest.fail(f"fd {fd} not readable after {HANG_GUARD} s")


@pytest.fixture
def make_pair() -> Iterator[Callable[[int], tuple[Ring, Ring]]]:
    """Create rings with a producer and an attached consumer; check they leave no trace."""
    made: list[Ring] = []

    def make(capacity: int) -> tuple[Ring, Ring]:
        producer = Ring.create(capacity)
        consumer = Ring.attach(producer.spec)
        made.extend([producer, consumer])
        return producer, consumer

    yield make
    for ring in made:
        path = shm_path(ring)
        ring.close()
        ring.unlink()
        assert not os.path.exists(path)


# ---------------------------------------------------------------------------------------------
# Records


def test_round_trip_every_kind_and_size(make_pair: Callable[[int], tuple[Ring, Ring]]) -> None:
    producer, consumer = make_pair(1 << 22)
    rng = random.Random(1)
    sizes = [0, 1, 7, 8, 9, 15, 16, 17, 200, 640, 65535, 65536, 1 << 20, producer.max_payload]
    sent = []
    for i, n in enumerate(sizes):
        for kind in KINDS:
            payload = rng.randbytes(n)
            slot = (i * 7919 + kind) % (1 << 32)
            assert producer.push(slot, kind, payload)
            got = consumer.pop_all()
            assert got == [(slot, kind, payload)]
            sent.append((slot, kind, payload))
    assert consumer.used == 0
    assert producer.max_payload == (1 << 21) - HEADER
    assert producer.push(0xFFFFFFFF, KIND_TEXT, b"last")
    assert consumer.pop_all() == [(0xFFFFFFFF, KIND_TEXT, b"last")]


@pytest.mark.parametrize(
    "payload",
    [
        bytearray(b"\x01\x02\x03"),
        memoryview(b"xx\x01\x02\x03yy")[2:5],
        np.array([0x0201, 0x0003], dtype="<i2"),
    ],
    ids=["bytearray", "memoryview", "ndarray"],
)
def test_any_contiguous_buffer_is_a_payload(
    make_pair: Callable[[int], tuple[Ring, Ring]], payload: object
) -> None:
    producer, consumer = make_pair(4096)
    assert producer.push(3, KIND_AUDIO, payload)  # type: ignore[arg-type]
    assert producer.send(3, KIND_TEXT, payload)  # type: ignore[arg-type]
    expected = bytes(memoryview(payload))  # type: ignore[arg-type]
    assert consumer.pop_all() == [(3, KIND_AUDIO, expected), (3, KIND_TEXT, expected)]


def advance_to(producer: Ring, consumer: Ring, offset: int) -> None:
    """Move an empty ring's head (and tail) to ``offset`` in the data area with filler records."""
    cap = producer.capacity
    while producer.head % cap != offset:
        here = producer.head % cap
        step = max(min((offset - here) % cap, cap - here), HEADER)  # to the offset or the end
        if step > cap // 2:  # two records, neither shorter than a header
            step = cap // 2 if step - cap // 2 >= HEADER else cap // 2 - HEADER
        assert producer.push(0, KIND_CONTROL, bytes(step - HEADER))
        assert len(consumer.pop_all()) == 1


def test_wrap_around_at_every_offset(make_pair: Callable[[int], tuple[Ring, Ring]]) -> None:
    producer, consumer = make_pair(4096)
    cap = producer.capacity
    rng = random.Random(2)
    classes = set()
    # Offset 8 is never a head position: every record, the first after a wrap too, is >= 16.
    for offset in [0, *range(16, cap, 8)]:
        for n in [*range(0, 40), *range(cap - offset - 40, cap - offset + 8), cap // 2 - HEADER]:
            if not 0 <= n <= producer.max_payload:
                continue
            advance_to(producer, consumer, offset)
            room = cap - offset
            skip = room if room < need(n) else 0
            classes.add("fits" if not skip else "no header room" if skip < HEADER else "pad")
            payload = rng.randbytes(n)
            head = producer.head
            assert producer.push(offset, KIND_AUDIO, payload)
            assert producer.head - head == skip + need(n)
            assert consumer.pop_all() == [(offset, KIND_AUDIO, payload)]
            assert consumer.used == 0
    assert classes == {"fits", "no header room", "pad"}


def test_random_traffic_matches_a_model(make_pair: Callable[[int], tuple[Ring, Ring]]) -> None:
    """Interleaved pushes and pops with records in flight across the wrap, against a model."""
    producer, consumer = make_pair(4096)
    cap = producer.capacity
    rng = random.Random(3)
    model: deque[tuple[int, int, bytes]] = deque()
    head = tail = 0
    in_flight: deque[int] = deque()  # bytes each queued record took, skip included
    for i in range(20_000):
        if rng.random() < 0.6:
            n = rng.choice([rng.randrange(0, 64), rng.randrange(0, producer.max_payload + 1)])
            room = cap - head % cap
            skip = room if room < need(n) else 0
            fits = cap - (head - tail) >= skip + need(n)
            record = (i, rng.choice(KINDS), rng.randbytes(n))
            assert producer.push(*record) == fits
            if fits:
                model.append(record)
                in_flight.append(skip + need(n))
                head += skip + need(n)
        else:
            got = consumer.pop_all()
            assert got == list(model)
            model.clear()
            tail += sum(in_flight)
            in_flight.clear()
        assert (producer.head, consumer.tail, consumer.used) == (head, tail, head - tail)
    assert head > 100 * cap  # many laps


def test_memory_layout(make_pair: Callable[[int], tuple[Ring, Ring]]) -> None:
    """The bytes in /dev/shm are what the module docstring says they are."""
    producer, consumer = make_pair(4096)
    assert producer.push(0xA1B2C3D4, KIND_CONTROL, b"payload")
    with open(shm_path(producer), "r+b") as f, mmap.mmap(f.fileno(), 0) as shm:
        assert len(shm) == 4096 + 4096
        assert shm[0:8] == b"\0ACRING1"
        assert struct.unpack_from("<IIQ", shm, 8) == (1, 4096, 4096)  # version, header, capacity
        assert struct.unpack_from("<Q", shm, 128)[0] == need(7)  # head
        assert struct.unpack_from("<Q", shm, 256)[0] == 0  # tail
        assert struct.unpack_from("<I", shm, 384)[0] == 0  # consumer_waiting: taken by the ring
        assert struct.unpack_from("<IIB", shm, 4096) == (7, 0xA1B2C3D4, KIND_CONTROL)
        assert shm[4096 + 16 : 4096 + 23] == b"payload"
        consumer.pop_all()
        assert struct.unpack_from("<Q", shm, 256)[0] == need(7)
        assert struct.unpack_from("<I", shm, 384)[0] == 1  # asleep again
        # A broken producer: a record longer than what was published.
        struct.pack_into("<IIB", shm, 4096 + need(7), 1000, 0, KIND_TEXT)
        struct.pack_into("<Q", shm, 128, 2 * need(7))
        with pytest.raises(RuntimeError, match="corrupt"):
            consumer.pop_all()
        struct.pack_into("<Q", shm, 128, need(7))  # let the fixture's teardown see a sane ring


# ---------------------------------------------------------------------------------------------
# Back-pressure


def test_full_ring_refuses_then_recovers(make_pair: Callable[[int], tuple[Ring, Ring]]) -> None:
    producer, consumer = make_pair(4096)
    count = 0
    while producer.push(count, KIND_TEXT, bytes(1000)):
        count += 1
    assert count == 4096 // need(1000)
    assert producer.used <= producer.capacity
    assert producer.pending == 0  # push() never queues
    assert [slot for slot, _, _ in consumer.pop_all()] == list(range(count))
    assert producer.push(count, KIND_TEXT, bytes(1000))


def test_audio_is_dropped_and_counted(make_pair: Callable[[int], tuple[Ring, Ring]]) -> None:
    producer, consumer = make_pair(4096)
    while producer.push(1, KIND_TEXT, bytes(100)):
        pass
    used = producer.used
    assert not producer.send(1, KIND_AUDIO, bytes(640))
    assert not producer.send(2, KIND_AUDIO, bytes(640))
    assert producer.dropped_audio == 2
    assert producer.used == used
    assert producer.pending == 0
    consumer.pop_all()
    assert producer.send(1, KIND_AUDIO, bytes(640))
    assert producer.dropped_audio == 2


def test_text_and_control_are_never_dropped(make_pair: Callable[[int], tuple[Ring, Ring]]) -> None:
    """A burst several times the ring with a slow consumer: every text arrives, in order."""
    producer, consumer = make_pair(4096)
    rng = random.Random(4)
    sent: list[tuple[int, int, bytes]] = []
    got: list[tuple[int, int, bytes]] = []
    audio_sent = 0
    for i in range(400):
        if rng.random() < 0.3:
            audio_sent += 1
            producer.send(i, KIND_AUDIO, bytes(320))
        else:
            record = (i, rng.choice([KIND_TEXT, KIND_CONTROL]), rng.randbytes(rng.randrange(200)))
            assert producer.send(*record)
            sent.append(record)
        if producer.pending:
            # Audio waits for nothing: while text is pending it is dropped, not queued.
            dropped = producer.dropped_audio
            assert not producer.send(i, KIND_AUDIO, bytes(320))
            audio_sent += 1
            assert producer.dropped_audio == dropped + 1
        if i % 50 == 49:  # the consumer wakes up now and then
            got += consumer.pop_all()
            if producer.pending:
                assert readable(producer.space_fileno())
                producer.flush_pending()
    assert producer.pending > 0
    while producer.pending:
        got += consumer.pop_all()
        producer.flush_pending()
    got += consumer.pop_all()
    assert [r for r in got if r[1] != KIND_AUDIO] == sent
    audio = [r for r in got if r[1] == KIND_AUDIO]
    assert len(audio) + producer.dropped_audio == audio_sent
    assert [slot for slot, _, _ in audio] == sorted(slot for slot, _, _ in audio)


def test_pending_records_are_copies(make_pair: Callable[[int], tuple[Ring, Ring]]) -> None:
    producer, consumer = make_pair(4096)
    while producer.push(1, KIND_TEXT, bytes(100)):
        pass
    buffer = bytearray(b"first")
    producer.send(2, KIND_TEXT, buffer)
    buffer[:] = b"later"
    assert producer.pending == 1
    consumer.pop_all()
    assert producer.flush_pending() == 0
    assert consumer.pop_all() == [(2, KIND_TEXT, b"first")]


def test_space_doorbell_rings_when_room_is_freed(
    make_pair: Callable[[int], tuple[Ring, Ring]],
) -> None:
    producer, consumer = make_pair(4096)
    while producer.push(1, KIND_TEXT, bytes(100)):
        pass
    assert not readable(producer.space_fileno())
    producer.send(2, KIND_CONTROL, b"close")
    assert producer.pending == 1
    consumer.pop_all()
    assert readable(producer.space_fileno())
    assert consumer.space_rings == 1
    assert producer.flush_pending() == 0
    assert not readable(producer.space_fileno())
    assert consumer.pop_all() == [(2, KIND_CONTROL, b"close")]


# ---------------------------------------------------------------------------------------------
# Doorbell


def test_doorbell_rings_once_per_sleep(make_pair: Callable[[int], tuple[Ring, Ring]]) -> None:
    producer, consumer = make_pair(1 << 16)
    fd = consumer.fileno()
    assert not readable(fd)
    assert producer.push(0, KIND_TEXT, b"a")  # a fresh consumer counts as asleep
    assert readable(fd)
    for i in range(999):
        assert producer.push(i, KIND_AUDIO, bytes(40))
    assert producer.doorbell_rings == 1
    assert consumer.drain_doorbell() == 1  # the eventfd counter: one write for 1000 records
    assert not readable(fd)
    assert len(consumer.pop_all()) == 1000
    assert not readable(fd)
    for i in range(500):
        producer.push(i, KIND_TEXT, b"b")
    assert readable(fd)
    assert len(consumer.pop_all()) == 500  # pop_all() resets the doorbell itself
    assert not readable(fd)
    assert producer.doorbell_rings == 2
    assert consumer.pop_all() == []
    assert producer.doorbell_rings == 2


async def _collect(consumer: Ring, until: int) -> list[tuple[int, int, bytes]]:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    got: list[tuple[int, int, bytes]] = []

    def on_readable() -> None:
        got.extend(consumer.pop_all())
        if len(got) >= until and not done.done():
            done.set_result(None)

    loop.add_reader(consumer.fileno(), on_readable)
    try:
        await asyncio.wait_for(done, HANG_GUARD)
    finally:
        loop.remove_reader(consumer.fileno())
    return got


def test_asyncio_consumer_is_woken(make_pair: Callable[[int], tuple[Ring, Ring]]) -> None:
    producer, consumer = make_pair(1 << 16)
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_push_numbers, args=(producer.spec, 5000))
    child.start()
    got = asyncio.run(_collect(consumer, 5000))
    child.join()
    assert child.exitcode == 0
    assert [slot for slot, _, _ in got] == list(range(5000))
    assert consumer.doorbell_rings <= len(got)


def _push_numbers(spec: RingSpec, count: int) -> None:
    with Ring.attach(spec) as ring:
        for i in range(count):
            while not ring.push(i, KIND_TEXT, b"%d" % i):
                pass


# ---------------------------------------------------------------------------------------------
# Other processes

SEED = 5
TOTAL = 100_000


def _traffic(seed: int) -> Iterator[tuple[int, int]]:
    """(kind, payload size) of each record both processes derive from the seed."""
    rng = random.Random(seed)
    for _ in range(TOTAL):
        kind = rng.choices(KINDS, weights=(3, 6, 1))[0]
        yield kind, rng.choice([rng.randrange(12, 64), rng.randrange(12, 3000)])


def _payload(seq: int, size: int) -> bytes:
    body = random.Random(seq).randbytes(size - 12)
    return struct.pack("<Q", seq) + body + struct.pack("<I", zlib.crc32(body))


def _produce_traffic(spec: RingSpec) -> None:
    with Ring.attach(spec) as ring:
        audio = 0
        for seq, (kind, size) in enumerate(_traffic(SEED)):
            audio += kind == KIND_AUDIO
            ring.send(seq % 1000, kind, _payload(seq, size))
            if ring.pending > 64:  # a producer that waits for room instead of queueing more
                select.select([ring.space_fileno()], [], [], HANG_GUARD)
                ring.flush_pending()
        while ring.flush_pending():
            select.select([ring.space_fileno()], [], [], HANG_GUARD)
        done = struct.pack("<QQ", audio, ring.dropped_audio)
        ring.send(0, KIND_CONTROL, b"done" + done)
        while ring.flush_pending():
            select.select([ring.space_fileno()], [], [], HANG_GUARD)


def test_fork_producer_100k_records(make_pair: Callable[[int], tuple[Ring, Ring]]) -> None:
    producer, consumer = make_pair(1 << 16)
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_produce_traffic, args=(producer.spec,))
    child.start()
    rng = random.Random(6)
    got: list[tuple[int, int, bytes]] = []
    while True:
        wait_readable(consumer.fileno())
        batch = consumer.pop_all()
        got += batch
        if batch and batch[-1][2].startswith(b"done"):
            break
        if rng.random() < 0.05:
            select.select([], [], [], 0.002)  # a slow consumer lets the ring fill up
    child.join(HANG_GUARD)
    assert child.exitcode == 0
    audio_sent, dropped = struct.unpack("<QQ", got.pop()[2][4:])

    expected_kinds = [kind for kind, _ in _traffic(SEED)]
    seqs: dict[int, list[int]] = {KIND_TEXT: [], KIND_AUDIO: [], KIND_CONTROL: []}
    for slot, kind, payload in got:
        (seq,) = struct.unpack_from("<Q", payload)
        assert slot == seq % 1000
        assert expected_kinds[seq] == kind
        assert zlib.crc32(payload[8:-4]) == struct.unpack("<I", payload[-4:])[0]
        seqs[kind].append(seq)
    for kind in (KIND_TEXT, KIND_CONTROL):  # exactly once, in order
        assert seqs[kind] == [s for s, k in enumerate(expected_kinds) if k == kind]
    audio = seqs[KIND_AUDIO]
    assert audio == sorted(set(audio))
    assert audio_sent == expected_kinds.count(KIND_AUDIO)
    assert len(audio) + dropped == audio_sent
    assert consumer.doorbell_rings < len(got)  # coalesced
    assert os.path.exists(shm_path(producer))  # the child's exit did not unlink it


def _echo(inbound: RingSpec, outbound: RingSpec, conn: Connection) -> None:
    """A worker: attach both rings by spec, answer every text record, stop on control."""
    with Ring.attach(inbound) as rx, Ring.attach(outbound) as tx:
        conn.send(rx.capacity)
        while True:
            select.select([rx.fileno()], [], [], HANG_GUARD)
            for slot, kind, payload in rx.pop_all():
                if kind == KIND_CONTROL:
                    return
                tx.send(slot, kind, payload.upper() + b" from %d" % os.getpid())


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_attach_by_spec_in_a_child(
    make_pair: Callable[[int], tuple[Ring, Ring]], method: str
) -> None:
    to_child, _ = make_pair(4096)
    from_child, consumer = make_pair(4096)
    ctx: Any = multiprocessing.get_context(method)
    parent_conn, child_conn = ctx.Pipe()
    child = ctx.Process(target=_echo, args=(to_child.spec, from_child.spec, child_conn))
    child.start()
    assert parent_conn.recv() == 4096
    to_child.send(7, KIND_TEXT, b"hello")
    wait_readable(consumer.fileno())
    got = consumer.pop_all()
    to_child.send(0, KIND_CONTROL, b"stop")
    child.join(HANG_GUARD)
    parent_conn.close()
    child_conn.close()
    assert child.exitcode == 0
    assert got == [(7, KIND_TEXT, b"HELLO from %d" % child.pid)]


# ---------------------------------------------------------------------------------------------
# Lifetime and bad input


def test_close_and_unlink_leave_nothing() -> None:
    producer = Ring.create(4096)
    consumer = Ring.attach(producer.spec)
    path = shm_path(producer)
    assert os.path.exists(path)
    producer.unlink()  # safe once the peer is attached: the mappings outlive the name
    assert not os.path.exists(path)
    assert producer.push(1, KIND_TEXT, b"still mapped")
    assert consumer.pop_all() == [(1, KIND_TEXT, b"still mapped")]
    for ring in (producer, consumer):
        fds = (ring.fileno(), ring.space_fileno())
        ring.close()
        ring.close()
        assert ring.closed
        for fd in fds:
            with pytest.raises(OSError):
                os.fstat(fd)
        with pytest.raises(ValueError, match="closed"):
            ring.push(1, KIND_TEXT, b"")
        with pytest.raises(ValueError, match="closed"):
            ring.pop_all()
    producer.unlink()  # a second unlink is harmless
    with pytest.raises(FileNotFoundError):
        Ring.attach(producer.spec)


def test_a_creator_that_dies_leaks_nothing() -> None:
    """The resource tracker unlinks the segment of a process that exits without unlink()."""
    script = (
        "from activecall._native.ring import Ring\n"
        "ring = Ring.create(4096)\n"
        "print(ring.spec.name, flush=True)\n"
        "import os; os._exit(0)\n"
    )
    # run() returns once stderr closes, which the tracker (holding it too) does after cleanup.
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0
    assert not os.path.exists("/dev/shm/" + done.stdout.strip())
    assert "leaked shared_memory" in done.stderr


def test_bad_input(make_pair: Callable[[int], tuple[Ring, Ring]]) -> None:
    producer, consumer = make_pair(4096)
    limit = producer.max_payload
    assert limit == 4096 // 2 - HEADER
    assert producer.push(0, KIND_TEXT, bytes(limit))
    consumer.pop_all()
    for send in (producer.push, producer.send):
        with pytest.raises(ValueError, match="exceeds"):
            send(0, KIND_TEXT, bytes(limit + 1))
        with pytest.raises(ValueError, match="exceeds"):
            send(0, KIND_AUDIO, bytearray(4096 // 2 + 1))
        for kind in (0, 4, -1):
            with pytest.raises(ValueError, match="kind"):
                send(0, kind, b"x")
        for slot in (-1, 1 << 32):
            with pytest.raises(ValueError, match="slot"):
                send(slot, KIND_TEXT, b"x")
        for payload in ("text", 3, None, [1, 2]):
            with pytest.raises(TypeError):
                send(0, KIND_TEXT, payload)  # type: ignore[arg-type]
    # With text pending, audio is dropped without being pushed, but still validated.
    while producer.push(1, KIND_TEXT, bytes(100)):
        pass
    producer.send(1, KIND_TEXT, b"pending")
    with pytest.raises(ValueError, match="exceeds"):
        producer.send(0, KIND_AUDIO, bytes(limit + 1))
    with pytest.raises(TypeError):
        producer.send(0, KIND_AUDIO, "text")  # type: ignore[arg-type]
    assert producer.dropped_audio == 0
    assert consumer.used == producer.used


@pytest.mark.parametrize("capacity", [0, 1000, 2048, 3 << 12, 1 << 31])
def test_bad_capacity(capacity: int) -> None:
    with pytest.raises(ValueError, match="capacity"):
        Ring.create(capacity)


def test_not_a_ring() -> None:
    with pytest.raises(TypeError):
        Ring()
    name = f"activecall-test-{os.getpid()}"
    with open("/dev/shm/" + name, "wb") as f:
        f.write(bytes(1 << 16))
    try:
        with pytest.raises(ValueError, match="not an activecall ring"):
            Ring.attach(RingSpec(name, 0, 0))
    finally:
        os.unlink("/dev/shm/" + name)
    with pytest.raises(ValueError, match="name"):
        RingSpec("../etc/passwd", 0, 0)
