# cython: language_level=3
"""C surface of ``ring``: the shared header, its atomics, and the ``Ring`` fields.

A Cython kernel that wants to push records without the Python call can ``cimport`` this.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t

cdef extern from *:
    """
    #include <stddef.h>
    #include <stdint.h>

    /* The header at offset 0 of the mapping. Each 128-byte block is written by one side only
       (128, not 64: the adjacent-line prefetcher pulls cache lines in pairs), so the producer
       publishing `head` never invalidates the line holding `tail`, and the waiting flags,
       which change once per sleep, stay shared and cheap to poll. */
    typedef struct {
        uint64_t magic;             /* AC_RING_MAGIC */
        uint32_t version;           /* AC_RING_VERSION */
        uint32_t header_size;       /* AC_RING_HEADER: data starts here */
        uint64_t capacity;          /* bytes in the data area, a power of two */
        uint8_t  _pad0[128 - 24];
        uint64_t head;              /* producer: bytes ever published (release) */
        uint64_t doorbell_rings;    /* producer: writes to the data eventfd */
        uint8_t  _pad1[128 - 16];
        uint64_t tail;              /* consumer: bytes ever consumed (release) */
        uint64_t space_rings;       /* consumer: writes to the space eventfd */
        uint8_t  _pad2[128 - 16];
        uint32_t consumer_waiting;  /* set by the consumer, cleared by the producer it wakes */
        uint8_t  _pad3[128 - 4];
        uint32_t producer_waiting;  /* set by the producer, cleared by the consumer it wakes */
        uint8_t  _pad4[128 - 4];
    } ac_ring_header;

    _Static_assert(offsetof(ac_ring_header, head) == 128, "head block");
    _Static_assert(offsetof(ac_ring_header, tail) == 256, "tail block");
    _Static_assert(offsetof(ac_ring_header, consumer_waiting) == 384, "consumer flag block");
    _Static_assert(offsetof(ac_ring_header, producer_waiting) == 512, "producer flag block");
    _Static_assert(sizeof(ac_ring_header) == 640, "header size");

    /* A record header, at an 8-byte aligned offset in the data area. */
    typedef struct {
        uint32_t length;            /* payload bytes that follow */
        uint32_t slot;              /* session slot */
        uint8_t  kind;              /* AC_KIND_* */
        uint8_t  _reserved[7];
    } ac_record;

    _Static_assert(sizeof(ac_record) == 16, "record header size");

    static inline uint64_t ac_load_acquire(const uint64_t *p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline uint64_t ac_load_relaxed(const uint64_t *p) {
        return __atomic_load_n(p, __ATOMIC_RELAXED);
    }
    static inline void ac_store_release(uint64_t *p, uint64_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE);
    }
    static inline void ac_store_relaxed(uint64_t *p, uint64_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELAXED);
    }
    static inline uint32_t ac_flag_load(const uint32_t *p) {
        return __atomic_load_n(p, __ATOMIC_RELAXED);
    }
    static inline void ac_flag_set(uint32_t *p, uint32_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELAXED);
    }
    static inline uint32_t ac_flag_take(uint32_t *p) {
        return __atomic_exchange_n(p, 0, __ATOMIC_ACQ_REL);
    }
    /* Store-then-load across processes (publish data, then look at the other side's flag)
       needs a full fence on both sides: release/acquire alone lets the store sit in the store
       buffer past the load, and both sides would then go to sleep. */
    static inline void ac_fence(void) {
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
    }
    """
    ctypedef struct ac_ring_header:
        uint64_t magic
        uint32_t version
        uint32_t header_size
        uint64_t capacity
        uint64_t head
        uint64_t doorbell_rings
        uint64_t tail
        uint64_t space_rings
        uint32_t consumer_waiting
        uint32_t producer_waiting

    ctypedef struct ac_record:
        uint32_t length
        uint32_t slot
        uint8_t kind

    uint64_t ac_load_acquire(const uint64_t* p) nogil
    uint64_t ac_load_relaxed(const uint64_t* p) nogil
    void ac_store_release(uint64_t* p, uint64_t v) nogil
    void ac_store_relaxed(uint64_t* p, uint64_t v) nogil
    uint32_t ac_flag_load(const uint32_t* p) nogil
    void ac_flag_set(uint32_t* p, uint32_t v) nogil
    uint32_t ac_flag_take(uint32_t* p) nogil
    void ac_fence() nogil


cdef enum:
    RECORD_PAD = 0  # skip to the end of the data area; never returned to the consumer
    RECORD_TEXT = 1
    RECORD_AUDIO = 2
    RECORD_CONTROL = 3
    RECORD_HEADER = 16
    # The data area starts one page in, so it is page aligned whatever the header grows to.
    HEADER_SIZE = 4096
    # Copies shorter than this keep the GIL: a 640-byte frame takes tens of nanoseconds to
    # copy, less than a contended GIL hand-over costs the event loop.
    NOGIL_MIN_BYTES = 65536


cdef class Ring:
    cdef ac_ring_header* _hdr
    cdef unsigned char* _data
    cdef size_t _map_size
    cdef uint64_t _capacity
    cdef uint64_t _mask
    cdef uint64_t _cached_tail  # producer's last view of tail: re-read only when short of room
    cdef int _data_fd
    cdef int _space_fd
    cdef readonly object spec
    cdef object _pending  # deque of (slot, kind, bytes): text/control waiting for room
    cdef Py_ssize_t _dropped_audio
    cdef long _tracked_by_pid  # the pid that registered the name with the resource tracker

    cdef _map(self, str name)
    cdef _setup(self)
    cdef void _release(self) noexcept
    cdef int _check_open(self) except -1
    cdef int _check_size(self, size_t n) except -1
    cdef bint _push(
        self, uint32_t slot, uint8_t kind, const unsigned char* src, size_t n
    ) noexcept nogil
    cdef void _ring_consumer(self) noexcept nogil
    cdef int _push_object(self, long long slot, int kind, object payload) except -1
    cdef bytes _copy_payload(self, object payload)
    cdef bint _flush(self) except -1
    cdef uint64_t _scan(self, uint64_t tail, uint64_t head, list out) except? 0
