"""Control records between the supervisor and a worker: the ring's ``KIND_CONTROL`` payloads.

Each payload is one JSON object with an ``op``; the record's slot names the session (slot 0 is
the worker itself for ``heartbeat``/``stop``). Text records (``KIND_TEXT``) carry a session's
commands (supervisor → worker: the client's text frame as received, or a
``POST /command/{id}`` body) and events (worker →
supervisor, ready to send); audio records (``KIND_AUDIO``) carry a session's binary frames in
the call's codec, both ways.

========================  ===========  ======================================================
op                        direction    fields
========================  ===========  ======================================================
``open``                  sup → wrk    ``id``, ``callType``, ``params`` (query params), ``ts``
``close``                 sup → wrk    ``reason`` (the client went away: ``caller``)
``kill``                  sup → wrk    (``GET /kill/{id}``: the server ends the call)
``ended``                 wrk → sup    ``id``: the session is over, all its events were sent;
                                       ``error`` (optional): why the worker ended it itself
``file``                  wrk → sup    ``kind`` (``recorder``), ``path``: a file the session
                                       writes; repaired by the supervisor if the worker dies
``heartbeat``             wrk → sup    ``pid``, ``sessions``, ``ticks``, ``lateTicks``,
                                       ``skippedTicks``, ``vadUs`` {``last``, ``avg``,
                                       ``max``}, ``lagUs`` {``p99``, ``max``}, ``vadCalls``,
                                       ``vadChunks``, ``framesIn``, ``framesOut``,
                                       ``droppedAudio``, ``textIn``, ``textOut``,
                                       ``sessionErrors`` (counters since the worker started)
``stop``                  sup → wrk    ``graceMs`` (optional): close every session
                                       (``system``), wait for them to end, flush, exit
========================  ===========  ======================================================

A worker sends its first ``heartbeat`` as soon as it is ready to run sessions, then one every
500 ms.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = [
    "OP_CLOSE",
    "OP_ENDED",
    "OP_FILE",
    "OP_HEARTBEAT",
    "OP_KILL",
    "OP_OPEN",
    "OP_STOP",
    "decode",
    "encode",
]

OP_OPEN = "open"
OP_CLOSE = "close"
OP_KILL = "kill"
OP_ENDED = "ended"
OP_FILE = "file"
OP_HEARTBEAT = "heartbeat"
OP_STOP = "stop"
WORKER_SLOT = 0


def encode(op: str, **fields: Any) -> bytes:
    """One control payload."""
    return orjson.dumps({"op": op, **fields})


def decode(payload: bytes) -> dict[str, Any]:
    """Parse a control payload; raises ValueError on anything but a JSON object with ``op``."""
    obj = orjson.loads(payload)
    if not isinstance(obj, dict) or not isinstance(obj.get("op"), str):
        raise ValueError("control record without an op")
    return obj
