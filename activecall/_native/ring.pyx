# cython: language_level=3
"""Single-producer single-consumer record ring in shared memory, with eventfd doorbells.

One ``Ring`` carries one direction between the supervisor and a worker. The supervisor calls
``Ring.create()`` before it starts the worker and hands it ``ring.spec``; the worker calls
``Ring.attach(spec)``. With the ``fork`` start method (the primary mode) the spec's eventfds
are inherited; with ``spawn`` or ``forkserver`` pickling the spec inside ``Process(args=...)``
passes them to the child (``multiprocessing.reduction.DupFd``); for a plain subprocess put
both fds in ``pass_fds`` and rebuild ``RingSpec(name, data_fd, space_fd)`` there.

Memory (a ``/dev/shm`` file named ``spec.name``; only the creating process registers it with
``multiprocessing``'s resource tracker, so a crashed supervisor does not leak it and a worker
exiting never unlinks it)::

    0      header (ac_ring_header in ring.pxd), one 128-byte block per writer:
           128 head, 256 tail (u64 byte counters, release/acquire), 384 consumer_waiting,
           512 producer_waiting
    4096   data area, ``capacity`` bytes (a power of two), records at 8-byte aligned offsets:
           u32 length | u32 slot | u8 kind | 7 reserved | payload | pad to 8

A record that does not fit before the end of the data area is placed at offset 0; the bytes
skipped get a ``RECORD_PAD`` header, or nothing when fewer than 16 remain (both sides skip a
tail shorter than a header). Payloads are at most ``capacity // 2 - 16`` bytes, so a record
plus its skip always fits in an empty ring.

Doorbells: ``fileno()`` (consumer) becomes readable when records arrive while the consumer
sleeps. The consumer marks itself waiting at the end of every ``pop_all()`` and re-checks the
ring; a producer that publishes and finds the mark takes it and writes the eventfd, so there is
at most one eventfd write per consumer wake-up. ``space_fileno()`` (producer) is the same
mechanism the other way: readable when the consumer freed room while text or control records
were pending.

In an event loop::

    loop.add_reader(inbound.fileno(), lambda: handle(inbound.pop_all()))   # consumer
    loop.add_reader(outbound.space_fileno(), outbound.flush_pending)       # producer

Not thread-safe: one thread produces and one thread consumes, in any two processes.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from libc.errno cimport EINTR, errno
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from posix.mman cimport MAP_FAILED, MAP_POPULATE, MAP_SHARED, PROT_READ, PROT_WRITE, mmap, munmap
from posix.unistd cimport close, read, write

import os
import secrets
from collections import deque
from multiprocessing import resource_tracker

KIND_TEXT = RECORD_TEXT
KIND_AUDIO = RECORD_AUDIO
KIND_CONTROL = RECORD_CONTROL
DEFAULT_CAPACITY = 1 << 22
MIN_CAPACITY = 1 << 12
MAX_CAPACITY = 1 << 30

cdef uint64_t _MAGIC = 0x31474E4952434100  # "\0ACRING1" little-endian
cdef uint32_t _VERSION = 1
_SHM_DIR = "/dev/shm/"


cdef inline uint64_t _align8(uint64_t n) noexcept nogil:
    return (n + 7) & ~(<uint64_t>7)


cdef uint64_t _eventfd_take(int fd) noexcept nogil:
    """Read and reset an eventfd counter; 0 when nobody rang (the fd is non-blocking)."""
    cdef uint64_t value = 0
    while read(fd, &value, 8) < 0:
        if errno != EINTR:
            return 0  # EAGAIN: not rung
    return value


cdef void _eventfd_ring(int fd) noexcept nogil:
    cdef uint64_t one = 1
    while write(fd, &one, 8) < 0 and errno == EINTR:
        pass


def _rebuild_spec(str name, data_fd, space_fd):
    """Unpickle a ``RingSpec``: the descriptors arrive as new fds that the spec now owns."""
    cdef RingSpec spec = RingSpec(name, data_fd.detach(), space_fd.detach())
    spec._owns_fds = True
    return spec


cdef class RingSpec:
    """What a process needs to attach to a ring: the shared-memory name and the two eventfds."""

    cdef readonly str name
    cdef readonly int data_fd
    cdef readonly int space_fd
    cdef bint _owns_fds

    def __init__(self, str name not None, int data_fd, int space_fd):
        if not name or "/" in name:
            raise ValueError(f"bad shared-memory name {name!r}")
        self.name = name
        self.data_fd = data_fd
        self.space_fd = space_fd

    def __dealloc__(self):
        # Only a spec rebuilt from a pickle owns its fds; Ring.attach() duplicates them.
        if self._owns_fds:
            close(self.data_fd)
            close(self.space_fd)

    def __reduce__(self):
        # DupFd hands the fds to a spawn/forkserver child being started (pass_fds), or through
        # multiprocessing's fd-passing server when pickled for a queue or pipe.
        from multiprocessing.reduction import DupFd

        return _rebuild_spec, (self.name, DupFd(self.data_fd), DupFd(self.space_fd))

    def __copy__(self):
        return self  # immutable; copying through __reduce__ would duplicate the fds

    def __deepcopy__(self, memo):
        return self

    def __eq__(self, other):
        if not isinstance(other, RingSpec):
            return NotImplemented
        o = <RingSpec>other
        return (self.name, self.data_fd, self.space_fd) == (o.name, o.data_fd, o.space_fd)

    def __hash__(self):
        return hash((self.name, self.data_fd, self.space_fd))

    def __repr__(self):
        return f"RingSpec(name={self.name!r}, data_fd={self.data_fd}, space_fd={self.space_fd})"


cdef class Ring:
    """One direction of a shared-memory record ring; see the module docstring."""

    def __cinit__(self):
        self._hdr = NULL
        self._data_fd = -1
        self._space_fd = -1
        self._pending = deque()

    def __init__(self):
        raise TypeError("use Ring.create() or Ring.attach(spec)")

    def __dealloc__(self):
        self._release()

    @classmethod
    def create(cls, capacity=DEFAULT_CAPACITY):
        """A new ring of ``capacity`` data bytes (a power of two), owned by this process."""
        if (
            not isinstance(capacity, int)
            or not MIN_CAPACITY <= capacity <= MAX_CAPACITY
            or capacity & (capacity - 1)
        ):
            raise ValueError(
                f"capacity must be a power of two in [{MIN_CAPACITY}, {MAX_CAPACITY}], "
                f"got {capacity!r}"
            )
        cdef Ring ring = Ring.__new__(Ring)
        name = _create_segment(HEADER_SIZE + capacity)
        # Registered like SharedMemory(create=True) does, so the tracker unlinks the segment
        # if this process dies without unlink(); attachers never register.
        resource_tracker.register("/" + name, "shared_memory")
        ring._tracked_by_pid = os.getpid()
        ring.spec = RingSpec(name, -1, -1)  # for unlink() until the eventfds exist
        try:
            ring._map(name)
            ring._hdr.capacity = capacity
            ring._hdr.header_size = HEADER_SIZE
            ring._hdr.version = _VERSION
            # A consumer that has not popped yet is asleep: the first record must ring.
            ring._hdr.consumer_waiting = 1
            ring._hdr.magic = _MAGIC
            ring._setup()
            ring._data_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            ring._space_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        except BaseException:
            ring._release()
            ring.unlink()
            raise
        ring.spec = RingSpec(name, ring._data_fd, ring._space_fd)
        return ring

    @classmethod
    def attach(cls, RingSpec spec not None):
        """Map the ring ``spec`` describes, with its own duplicates of the eventfds."""
        cdef Ring ring = Ring.__new__(Ring)
        try:
            ring._map(spec.name)
            if (
                ring._hdr.magic != _MAGIC
                or ring._hdr.version != _VERSION
                or ring._hdr.header_size != HEADER_SIZE
                or ring._hdr.capacity + HEADER_SIZE != ring._map_size
            ):
                raise ValueError(f"{spec.name} is not an activecall ring (version {_VERSION})")
            ring._setup()
            ring._data_fd = os.dup(spec.data_fd)
            ring._space_fd = os.dup(spec.space_fd)
        except BaseException:
            ring._release()
            raise
        ring.spec = RingSpec(spec.name, ring._data_fd, ring._space_fd)
        return ring

    cdef _map(self, str name):
        fd = os.open(_SHM_DIR + name, os.O_RDWR | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_SIZE + MIN_CAPACITY:
                raise ValueError(f"{name} is too small to be a ring ({size} bytes)")
            # Populated up front so the first lap of the ring takes no page faults.
            addr = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0)
            if addr == MAP_FAILED:
                raise OSError(errno, os.strerror(errno), name)
        finally:
            os.close(fd)
        self._hdr = <ac_ring_header*>addr
        self._map_size = size

    cdef _setup(self):
        self._data = <unsigned char*>self._hdr + HEADER_SIZE
        self._capacity = self._hdr.capacity
        self._mask = self._capacity - 1
        self._cached_tail = ac_load_acquire(&self._hdr.tail)

    cdef void _release(self) noexcept:
        # Plain C calls: this also runs from __dealloc__, possibly at interpreter shutdown.
        if self._hdr != NULL:
            munmap(self._hdr, self._map_size)
            self._hdr = NULL
        if self._data_fd >= 0:
            close(self._data_fd)
        if self._space_fd >= 0:
            close(self._space_fd)
        self._data_fd = self._space_fd = -1

    cdef int _check_open(self) except -1:
        if self._hdr == NULL:
            raise ValueError("ring is closed")
        return 0

    # -----------------------------------------------------------------------------------------
    # Producer

    cdef bint _push(
        self, uint32_t slot, uint8_t kind, const unsigned char* src, size_t n
    ) noexcept nogil:
        """Copy one record in and publish it; False when it does not fit. Validated input only."""
        cdef ac_ring_header* hdr = self._hdr
        cdef uint64_t need = _align8(RECORD_HEADER + n)
        cdef uint64_t head = ac_load_relaxed(&hdr.head)  # only this side writes it
        cdef uint64_t off = head & self._mask
        cdef uint64_t skip = self._capacity - off
        cdef ac_record* rec
        if skip >= need:
            skip = 0
        if self._capacity - (head - self._cached_tail) < skip + need:
            # The cached tail is stale by at most what the consumer freed since: re-read it
            # only now, so a producer with room never touches the consumer's cache line.
            self._cached_tail = ac_load_acquire(&hdr.tail)
            if self._capacity - (head - self._cached_tail) < skip + need:
                return False
        if skip:
            if skip >= RECORD_HEADER:
                rec = <ac_record*>(self._data + off)
                memset(rec, 0, RECORD_HEADER)
                rec.length = <uint32_t>(skip - RECORD_HEADER)
                rec.kind = RECORD_PAD
            head += skip
            off = 0
        rec = <ac_record*>(self._data + off)
        memset(rec, 0, RECORD_HEADER)
        rec.length = <uint32_t>n
        rec.slot = slot
        rec.kind = kind
        if n:
            memcpy(self._data + off + RECORD_HEADER, src, n)
        ac_store_release(&hdr.head, head + need)
        return True

    cdef void _ring_consumer(self) noexcept nogil:
        """After publishing: wake the consumer if it said it would sleep (once per sleep)."""
        ac_fence()
        if ac_flag_load(&self._hdr.consumer_waiting) and ac_flag_take(&self._hdr.consumer_waiting):
            _eventfd_ring(self._data_fd)
            ac_store_relaxed(
                &self._hdr.doorbell_rings, ac_load_relaxed(&self._hdr.doorbell_rings) + 1
            )

    cdef int _push_object(self, long long slot, int kind, object payload) except -1:
        """Validate, push and ring: 1 when published, 0 when it does not fit."""
        cdef Py_buffer view
        cdef bint is_bytes = PyBytes_CheckExact(payload)
        cdef const unsigned char* src
        cdef size_t n
        cdef bint ok
        self._check_open()
        _check_record(slot, kind)
        if is_bytes:  # the common case, without the buffer protocol's overhead
            src = <const unsigned char*>PyBytes_AS_STRING(payload)
            n = <size_t>PyBytes_GET_SIZE(payload)
        else:
            PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)  # TypeError for non-buffers
            src = <const unsigned char*>view.buf
            n = <size_t>view.len
        try:
            self._check_size(n)
            if n >= NOGIL_MIN_BYTES:
                with nogil:
                    ok = self._push(<uint32_t>slot, <uint8_t>kind, src, n)
            else:
                ok = self._push(<uint32_t>slot, <uint8_t>kind, src, n)
        finally:
            if not is_bytes:
                PyBuffer_Release(&view)
        if ok:
            self._ring_consumer()
        return ok

    cdef int _check_size(self, size_t n) except -1:
        if n > self._capacity // 2 - RECORD_HEADER:
            raise ValueError(
                f"record of {n} bytes exceeds the ring's limit of "
                f"{self._capacity // 2 - RECORD_HEADER} (capacity {self._capacity})"
            )
        return 0

    def push(self, long long slot, int kind, payload):
        """Publish one record now; False when it does not fit. No drops, no queueing."""
        return self._push_object(slot, kind, payload) == 1

    def send(self, long long slot, int kind, payload):
        """Publish with the back-pressure policy; False only when audio was dropped.

        Audio that does not fit is dropped and counted. Text and control records that do not
        fit are copied to the pending queue and published, in order, before anything else.
        While records are pending, audio is dropped rather than queued, so audio never
        overtakes or starves them.
        """
        if self._pending and not self._flush():
            _check_record(slot, kind)
            data = self._copy_payload(payload)  # validates even what it then drops
            if kind == RECORD_AUDIO:
                self._dropped_audio += 1
                return False
            self._pending.append((slot, kind, data))
            return True
        if self._push_object(slot, kind, payload):
            return True
        if kind == RECORD_AUDIO:
            self._dropped_audio += 1
            return False
        self._pending.append((slot, kind, self._copy_payload(payload)))
        self._flush()  # arms the space doorbell, and catches room freed meanwhile
        return True

    cdef bytes _copy_payload(self, object payload):
        """The payload as bytes the pending queue can keep (the caller may reuse its buffer)."""
        cdef Py_buffer view
        if PyBytes_CheckExact(payload):
            self._check_size(<size_t>PyBytes_GET_SIZE(payload))
            return <bytes>payload
        PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
        try:
            self._check_size(<size_t>view.len)
            return PyBytes_FromStringAndSize(<const char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    cdef bint _flush(self) except -1:
        """Publish pending records in order; True when none are left."""
        cdef bint armed = False
        cdef bint pushed = False
        cdef bytes data
        cdef const unsigned char* src
        self._check_open()
        while self._pending:
            slot, kind, data = self._pending[0]
            src = <const unsigned char*>PyBytes_AS_STRING(data)
            if self._push(slot, kind, src, <size_t>PyBytes_GET_SIZE(data)):
                self._pending.popleft()
                pushed = True
            elif armed:
                break
            else:
                # Ask the consumer to ring space_fileno() when it frees room, then look at the
                # tail once more: it may have moved before the flag became visible.
                ac_flag_set(&self._hdr.producer_waiting, 1)
                ac_fence()
                armed = True
        if pushed:
            self._ring_consumer()
        if not self._pending and (armed or pushed):
            ac_flag_set(&self._hdr.producer_waiting, 0)  # nothing to wake us for any more
        return not self._pending

    def flush_pending(self):
        """Publish what the pending queue can fit now (call when ``space_fileno()`` is readable).

        Returns the number of records still pending.
        """
        self._check_open()
        _eventfd_take(self._space_fd)
        self._flush()
        return len(self._pending)

    def space_fileno(self):
        """Producer side: eventfd readable when the consumer freed room for pending records."""
        self._check_open()
        return self._space_fd

    # -----------------------------------------------------------------------------------------
    # Consumer

    def pop_all(self):
        """Take every record available as ``(slot, kind, payload)``; one call per wake-up.

        Resets the doorbell first and marks the consumer waiting before it returns, so the
        next record published rings ``fileno()`` once.
        """
        cdef ac_ring_header* hdr
        cdef uint64_t start, tail, head
        cdef list out = []
        self._check_open()
        hdr = self._hdr
        _eventfd_take(self._data_fd)
        start = tail = ac_load_relaxed(&hdr.tail)  # only this side writes it
        head = ac_load_acquire(&hdr.head)
        if head != tail:
            tail = self._scan(tail, head, out)
            ac_store_release(&hdr.tail, tail)
        ac_flag_set(&hdr.consumer_waiting, 1)
        ac_fence()
        # A record published before the flag was visible rang nobody: take it now.
        head = ac_load_acquire(&hdr.head)
        if head != tail:
            tail = self._scan(tail, head, out)
            ac_store_release(&hdr.tail, tail)
            ac_fence()
        if tail != start and ac_flag_load(&hdr.producer_waiting):
            if ac_flag_take(&hdr.producer_waiting):
                _eventfd_ring(self._space_fd)
                ac_store_relaxed(&hdr.space_rings, ac_load_relaxed(&hdr.space_rings) + 1)
        return out

    cdef uint64_t _scan(self, uint64_t tail, uint64_t head, list out) except? 0:
        """Copy the records in [tail, head) out as tuples; return the new tail."""
        cdef uint64_t off, room, length
        cdef uint32_t slot
        cdef uint8_t kind
        cdef const ac_record* rec
        cdef bytes payload
        cdef char* dst
        while tail != head:
            off = tail & self._mask
            room = self._capacity - off
            if room < RECORD_HEADER:
                tail += room
                continue
            rec = <const ac_record*>(self._data + off)
            kind = rec.kind
            length = rec.length
            slot = rec.slot
            if kind == RECORD_PAD:
                tail += room
                continue
            # A broken producer gets an exception here, not a read past the data area.
            if (
                kind > RECORD_CONTROL
                or RECORD_HEADER + length > room
                or _align8(RECORD_HEADER + length) > head - tail
            ):
                raise RuntimeError(f"corrupt ring record at byte {tail} of {self.spec.name}")
            if length >= NOGIL_MIN_BYTES:
                payload = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>length)
                dst = PyBytes_AS_STRING(payload)
                with nogil:
                    memcpy(dst, <const char*>rec + RECORD_HEADER, length)
            else:
                payload = PyBytes_FromStringAndSize(<const char*>rec + RECORD_HEADER, length)
            out.append((slot, kind, payload))
            tail += _align8(RECORD_HEADER + length)
        return tail

    def fileno(self):
        """Consumer side: eventfd readable when records arrived while the consumer waited."""
        self._check_open()
        return self._data_fd

    def drain_doorbell(self):
        """Reset the consumer's doorbell; returns how often it was rung since the last reset."""
        self._check_open()
        return _eventfd_take(self._data_fd)

    # -----------------------------------------------------------------------------------------
    # State and lifetime

    @property
    def capacity(self):
        """Bytes in the data area."""
        return self._capacity

    @property
    def max_payload(self):
        """Largest payload a record may carry: ``capacity // 2 - 16``."""
        return self._capacity // 2 - RECORD_HEADER

    @property
    def used(self):
        """Bytes published and not yet consumed (headers and padding included)."""
        self._check_open()
        cdef uint64_t tail = ac_load_acquire(&self._hdr.tail)
        return ac_load_acquire(&self._hdr.head) - tail

    @property
    def head(self):
        """Bytes ever published (a 64-bit counter; its offset is ``head % capacity``)."""
        self._check_open()
        return ac_load_acquire(&self._hdr.head)

    @property
    def tail(self):
        """Bytes ever consumed."""
        self._check_open()
        return ac_load_acquire(&self._hdr.tail)

    @property
    def pending(self):
        """Text and control records this producer holds until the ring has room."""
        return len(self._pending)

    @property
    def dropped_audio(self):
        """Audio records this producer dropped because the ring was full."""
        return self._dropped_audio

    @property
    def doorbell_rings(self):
        """Times the producer wrote the consumer's eventfd (shared: either side may read it)."""
        self._check_open()
        return ac_load_relaxed(&self._hdr.doorbell_rings)

    @property
    def space_rings(self):
        """Times the consumer wrote the producer's space eventfd."""
        self._check_open()
        return ac_load_relaxed(&self._hdr.space_rings)

    @property
    def closed(self):
        """True after ``close()``."""
        return self._hdr == NULL

    def close(self):
        """Unmap the ring and close this process's eventfds; pending records are discarded."""
        self._release()
        self._pending.clear()

    def unlink(self):
        """Remove the shared-memory name (mappings stay valid); safe once the peer attached."""
        try:
            os.unlink(_SHM_DIR + self.spec.name)
        except FileNotFoundError:
            pass
        if self._tracked_by_pid == os.getpid():
            resource_tracker.unregister("/" + self.spec.name, "shared_memory")
            self._tracked_by_pid = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        if self._hdr == NULL:
            return f"<Ring {self.spec.name if self.spec else '?'} closed>"
        return f"<Ring {self.spec.name} capacity={self._capacity} used={self.used}>"


cdef int _check_record(long long slot, int kind) except -1:
    if not RECORD_TEXT <= kind <= RECORD_CONTROL:
        raise ValueError(f"kind must be KIND_TEXT, KIND_AUDIO or KIND_CONTROL, got {kind}")
    if not 0 <= slot <= 0xFFFFFFFF:
        raise ValueError(f"slot must fit in 32 bits, got {slot}")
    return 0


def _create_segment(size):
    """Create a fresh, zero-filled ``/dev/shm`` file of ``size`` bytes; returns its name."""
    while True:
        name = "activecall-ring-" + secrets.token_hex(8)
        try:
            fd = os.open(_SHM_DIR + name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue
        try:
            os.ftruncate(fd, size)
        except BaseException:
            os.unlink(_SHM_DIR + name)
            raise
        finally:
            os.close(fd)
        return name
