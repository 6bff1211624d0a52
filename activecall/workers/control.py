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
``sip``                   sup → wrk    ``event``: what the SIP side of a ``sip`` call did:
                                       ``ringing`` (``code``, ``sdp`` for early media),
                                       ``answer`` (``sdp``), ``reject`` (``code``,
                                       ``reason``), ``bye``, ``cancelled`` (``reason``:
                                       ``caller``/``timeout``), ``reinvite`` (``sdp``,
                                       ``method``: answer with ``reanswer``), ``info`` /
                                       ``message`` (``body``, ``contentType``), ``refer``
                                       (``referTo``, ``referredBy``)
``sip``                   wrk → sup    ``action``: what the session asks of the SIP side:
                                       ``invite`` (``callee``, ``caller``, ``sdp``, ``sip``
                                       = the SipOption), ``ringing`` (``sdp`` for 183),
                                       ``accept`` (``sdp``), ``reject`` (``code``,
                                       ``reason``), ``reanswer`` (``sdp``), ``bye``
                                       (``headers``: end the leg: BYE, CANCEL or 480),
                                       ``message`` (``body``, ``contentType``, ``headers``).
                                       Sent as a *text* record (the pool routes only its own
                                       control ops); the supervisor keeps it from the client
========================  ===========  ======================================================

A ``sip`` call's ``open`` params carry ``sip``: ``{"direction": "inbound", "caller",
"callee", "offer", "headers"}`` (the pending INVITE the WebSocket joins) or ``{"direction":
"outbound"}``, and ``media``: ``{"ip", "bindIp", "ports": [first, last], "workers",
"codecs", "latching"}`` (each worker binds RTP ports in its share of ``ports``). When the
node runs SIP, other calls' params carry ``media`` too: a ``refer`` leg needs it.

A ``refer`` transfer leg (:mod:`activecall.workers.refer_leg`) is a second dialog of the same
session: its ``sip`` records, both ways, carry ``leg: "refer"``, and its ``invite`` also
``callId`` (the leg's Call-ID, which keys it in the supervisor's agent).

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
    "OP_SIP",
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
OP_SIP = "sip"
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
