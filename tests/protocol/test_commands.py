"""The command codec: round trips, real client messages, aliases, and every error class."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from activecall.protocol import (
    COMMANDS,
    AcceptCommand,
    AddIceCandidateCommand,
    BridgeCommand,
    CallOption,
    Command,
    CommandError,
    CustomCommand,
    HangupCommand,
    HistoryCommand,
    InterruptCommand,
    InviteCommand,
    MessageCommand,
    MuteCommand,
    PauseCommand,
    PlayCommand,
    RecorderOption,
    ReferCommand,
    ReferOption,
    RejectCommand,
    ResumeCommand,
    RingingCommand,
    SendDtmfCommand,
    SipOption,
    SynthesisOption,
    TranscriptionOption,
    TtsCommand,
    UnbridgeCommand,
    UnmuteCommand,
    VadOption,
    command_from_dict,
    parse_command,
)

SIP = SipOption(
    username="alice",
    password="secret",
    realm="pbx.example.com",
    contact="sip:alice@10.0.0.2",
    headers={"X-Tenant": "t1"},
    hangup_headers={"X-Reason": "{{reason}}"},
    extract_headers=("X-Order", "X-Lang"),
    enable_srtp=True,
)
ASR = TranscriptionOption(
    provider="tencent",
    language="zh-CN",
    app_id="1250000000",
    secret_id="sid",
    secret_key="skey",
    model_type="16k_zh",
    buffer_size=8192,
    samplerate=16000,
    endpoint="wss://asr.example.com",
    extra={"hotwords": "activecall"},
    start_when_answer=True,
)
TTS = SynthesisOption(
    samplerate=16000,
    provider="aliyun",
    speed=1.25,
    app_id="app",
    secret_id="sid",
    secret_key="skey",
    volume=5,
    speaker="xiaoyun",
    codec="pcm",
    subtitle=True,
    model="cosyvoice-v2",
    language="zh",
    emotion="happy",
    endpoint="https://tts.example.com",
    extra={"format": "pcm"},
    max_concurrent_tasks=4,
    session_id="sess",
)
VAD = VadOption(speech_padding=200, silence_padding=300, voice_threshold=0.6, silence_timeout=5000)
FULL_OPTION = CallOption(
    denoise=True,
    agc={"maxGainDb": 40.0},
    offer="v=0\r\n",
    callee="sip:bob@pbx.example.com",
    caller="sip:alice@pbx.example.com",
    recorder=RecorderOption(recorder_file="{id}.wav", samplerate=8000, ptime=20, format="pcmu"),
    vad=VAD,
    vad_type="silero",
    asr=ASR,
    tts=TTS,
    media_pass={"url": "ws://media", "inputSampleRate": 16000, "outputSampleRate": 16000},
    handshake_timeout=15,
    enable_ipv6=False,
    inactivity_timeout=50,
    sip=SIP,
    extra={"customer": "42"},
    codec="pcmu",
    ambiance={"path": "office.wav", "duckLevel": 0.1},
    eou={"type": "x", "timeout": 3000},
    realtime={"provider": "openai", "tools": [{"type": "function"}]},
    subscribe=True,
    enable_ice_lite=True,
    ringback_detection={"enabled": True},
)
FULL_COMMANDS: list[Command] = [
    InviteCommand(option=FULL_OPTION),
    AcceptCommand(option=CallOption(codec="pcm")),
    RejectCommand(reason="busy", code=486),
    RingingCommand(recorder=RecorderOption(), early_media=True, ringtone="ring.wav"),
    TtsCommand(
        text="hello",
        speaker="xiaoyun",
        play_id="p1",
        auto_hangup=True,
        streaming=True,
        end_of_stream=False,
        option=SynthesisOption(speed=0.9),
        wait_input_timeout=5000,
        base64=False,
        cache_key="greeting",
    ),
    PlayCommand(
        url="https://x/a.wav", play_id="a", auto_hangup=False, wait_input_timeout=0, offset_ms=1500
    ),
    InterruptCommand(graceful=True, fade_out_ms=300),
    PauseCommand(),
    ResumeCommand(),
    HangupCommand(reason="caller", initiator="caller", headers={"X-Why": "done"}, refer=False),
    ReferCommand(
        caller="sip:alice@x",
        callee="sip:carol@x",
        options=ReferOption(
            denoise=True,
            agc={},
            timeout=30,
            moh="moh.wav",
            vad=VadOption(),
            vad_type="nop",
            asr=TranscriptionOption(provider="deepgram"),
            auto_hangup=False,
            sip=SipOption(username="u"),
            call_id="ref-1",
            pause_parent_asr=True,
            forward_dtmf=False,
        ),
    ),
    MessageCommand(body="hi", content_type="text/plain", headers={"X-A": "b"}, refer=True),
    BridgeCommand(target_session_id="s.other"),
    UnbridgeCommand(target_session_id="s.other"),
    MuteCommand(track_id="s.1"),
    UnmuteCommand(track_id="s.1"),
    HistoryCommand(speaker="assistant", text="How can I help?"),
    CustomCommand(sender="crm", data={"order": [1, 2, {"x": None}]}),
    AddIceCandidateCommand(
        candidate="candidate:1 1 UDP 1 1.2.3.4 5 typ host", sdp_mid="0", sdp_mline_index=0
    ),
    SendDtmfCommand(digits="123#*AbC"),
]


def test_every_command_has_a_full_example() -> None:
    assert sorted(c.command for c in FULL_COMMANDS) == sorted(COMMANDS)


@pytest.mark.parametrize("command", FULL_COMMANDS, ids=lambda c: c.command)
def test_round_trip_full(command: Command) -> None:
    assert parse_command(command.to_json()) == command
    assert command_from_dict(command.to_dict()) == command


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_round_trip_minimal(name: str) -> None:
    full = next(c for c in FULL_COMMANDS if c.command == name)
    minimal = {k: v for k, v in full.to_dict().items() if k in _REQUIRED.get(name, ("command",))}
    command = command_from_dict(minimal)
    assert command.to_dict() == minimal
    assert b"null" not in command.to_json() or name == "custom"


_REQUIRED = {
    "invite": ("command", "option"),
    "accept": ("command", "option"),
    "reject": ("command", "reason"),
    "tts": ("command", "text"),
    "play": ("command", "url"),
    "refer": ("command", "caller", "callee"),
    "message": ("command", "body"),
    "bridge": ("command", "targetSessionId"),
    "unbridge": ("command", "targetSessionId"),
    "history": ("command", "speaker", "text"),
    "custom": ("command", "data"),
    "addIceCandidate": ("command", "candidate"),
    "sendDtmf": ("command", "digits"),
}


# JSON as the Go SDK (restsend/rustpbxgo, `omitempty` everywhere) and a browser send it.
CLIENT_MESSAGES: list[tuple[str, Command]] = [
    (
        '{"command":"invite","option":{"denoise":true,"callee":"sip:bob@127.0.0.1:5060",'
        '"caller":"sip:alice@127.0.0.1","vad":{"type":"silero","speechPadding":250,'
        '"silencePadding":100,"voiceThreshold":0.5,"silenceTimeout":5000},'
        '"asr":{"provider":"tencent","appId":"1","secretId":"id","secretKey":"key",'
        '"modelType":"16k_zh","sampleRate":16000},"tts":{"samplerate":16000,'
        '"provider":"tencent","speed":1,"speaker":"301030","codec":"pcm",'
        '"waitInputTimeout":5000},"sip":{"username":"alice","password":"pw",'
        '"realm":"127.0.0.1","headers":{"X-Tenant":"t1"}},"extra":{"k":"v"},'
        '"eou":{"type":"tencent","timeout":3000}}}',
        InviteCommand(
            option=CallOption(
                denoise=True,
                callee="sip:bob@127.0.0.1:5060",
                caller="sip:alice@127.0.0.1",
                vad=VadOption(silence_timeout=5000),
                vad_type="silero",
                asr=TranscriptionOption(
                    provider="tencent",
                    app_id="1",
                    secret_id="id",
                    secret_key="key",
                    model_type="16k_zh",
                ),
                tts=SynthesisOption(
                    samplerate=16000, provider="tencent", speed=1.0, speaker="301030", codec="pcm"
                ),
                sip=SipOption(
                    username="alice", password="pw", realm="127.0.0.1", headers={"X-Tenant": "t1"}
                ),
                extra={"k": "v"},
                eou={"type": "tencent", "timeout": 3000},
            )
        ),
    ),
    ('{"command":"invite","option":{}}', InviteCommand(option=CallOption())),
    (
        '{"command":"invite","option":{"codec":"pcm","handshakeTimeout":"30"}}',
        InviteCommand(option=CallOption(codec="pcm", handshake_timeout=30)),
    ),
    (
        '{"command":"ringing","ringtone":"http://x/ring.wav",'
        '"recorder":{"recorderFile":"r.wav","samplerate":16000,"ptime":200}}',
        RingingCommand(
            ringtone="http://x/ring.wav",
            recorder=RecorderOption(recorder_file="r.wav", samplerate=16000, ptime=200),
        ),
    ),
    ('{"command":"reject","reason":"busy"}', RejectCommand(reason="busy")),
    (
        '{"command":"tts","text":"hello","playId":"p-1","autoHangup":true,"endOfStream":true,'
        '"waitInputTimeout":5000}',
        TtsCommand(
            text="hello",
            play_id="p-1",
            auto_hangup=True,
            end_of_stream=True,
            wait_input_timeout=5000,
        ),
    ),
    (
        '{"command":"tts","text":"Hel","playId":"llm-1","streaming":true}',
        TtsCommand(text="Hel", play_id="llm-1", streaming=True),
    ),
    (
        '{"command":"play","url":"http://x/a.wav","autoHangup":true}',
        PlayCommand(url="http://x/a.wav", auto_hangup=True),
    ),
    ('{"command":"interrupt"}', InterruptCommand()),
    ('{"command":"interrupt","graceful":"true"}', InterruptCommand(graceful=True)),
    ('{"command":"pause"}', PauseCommand()),
    ('{"command":"resume"}', ResumeCommand()),
    ('{"command":"hangup","reason":"bye"}', HangupCommand(reason="bye")),
    ('{"command":"hangup"}', HangupCommand()),
    (
        '{"command":"refer","caller":"sip:alice@x","callee":"sip:bob@x","options":'
        '{"denoise":true,"timeout":30,"moh":"http://x/moh.wav","sip":{"username":"u"},'
        '"asr":{"provider":"aliyun"}}}',
        ReferCommand(
            caller="sip:alice@x",
            callee="sip:bob@x",
            options=ReferOption(
                denoise=True,
                timeout=30,
                moh="http://x/moh.wav",
                sip=SipOption(username="u"),
                asr=TranscriptionOption(provider="aliyun"),
            ),
        ),
    ),
    ('{"command":"mute","trackId":"s.1"}', MuteCommand(track_id="s.1")),
    ('{"command":"unmute"}', UnmuteCommand()),
    (
        '{"command":"history","speaker":"user","text":"hi"}',
        HistoryCommand(speaker="user", text="hi"),
    ),
    # A browser spreading RTCIceCandidate.toJSON() into the command.
    (
        '{"command":"addIceCandidate","candidate":"candidate:0 1 UDP 2122 192.168.1.2 5000 '
        'typ host","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"abcd"}',
        AddIceCandidateCommand(
            candidate="candidate:0 1 UDP 2122 192.168.1.2 5000 typ host",
            sdp_mid="0",
            sdp_mline_index=0,
        ),
    ),
    (
        '{"command":"addIceCandidate","candidate":"","sdpMid":null,"sdpMLineIndex":null}',
        AddIceCandidateCommand(candidate=""),
    ),
    ('{"command":"sendDtmf","digits":"1234#"}', SendDtmfCommand(digits="1234#")),
]


@pytest.mark.parametrize(("text", "expected"), CLIENT_MESSAGES, ids=lambda v: str(v)[:40])
def test_client_messages(text: str, expected: Command) -> None:
    assert parse_command(text) == expected
    assert parse_command(text.encode()) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"command":"message","text":"hi"}', MessageCommand(body="hi")),
        ('{"command":"message","body":"a","text":"b"}', MessageCommand(body="a")),
        (
            '{"command":"addIceCandidate","candidate":"c","sdpMlineIndex":2}',
            AddIceCandidateCommand(candidate="c", sdp_mline_index=2),
        ),
        (
            '{"command":"invite","option":{"sip":{"enableSrtp":true,'
            '"extractHeaders":["X-A"],"hangupHeaders":{"X-B":"c"}}}}',
            InviteCommand(
                option=CallOption(
                    sip=SipOption(
                        enable_srtp=True, extract_headers=("X-A",), hangup_headers={"X-B": "c"}
                    )
                )
            ),
        ),
        (
            '{"command":"invite","option":{"sip":{"enable_srtp":false,"enableSrtp":true}}}',
            InviteCommand(option=CallOption(sip=SipOption(enable_srtp=False))),
        ),
        (
            '{"command":"invite","option":{"asr":{"apiKey":"k","model":"m"},'
            '"tts":{"apiKey":"k2","voice":"v"}}}',
            InviteCommand(
                option=CallOption(
                    asr=TranscriptionOption(secret_key="k", model_type="m"),
                    tts=SynthesisOption(secret_key="k2", model="v"),
                )
            ),
        ),
        ('{"command":"interrupt","graceful":"FALSE"}', InterruptCommand(graceful=False)),
        (
            '{"command":"invite","option":{"handshakeTimeout":"10s"}}',
            InviteCommand(option=CallOption(handshake_timeout=10)),
        ),
    ],
)
def test_aliases(text: str, expected: Command) -> None:
    assert parse_command(text) == expected


def test_aliases_serialize_to_canonical_names() -> None:
    wire = orjson.loads(parse_command('{"command":"message","text":"hi"}').to_json())
    assert wire == {"command": "message", "body": "hi"}
    ice = parse_command('{"command":"addIceCandidate","candidate":"c","sdpMLineIndex":1}')
    assert orjson.loads(ice.to_json())["sdpMlineIndex"] == 1
    sip = parse_command('{"command":"invite","option":{"sip":{"enableSrtp":true}}}')
    assert orjson.loads(sip.to_json())["option"]["sip"] == {"enable_srtp": True}


def test_unknown_fields_are_ignored() -> None:
    text = (
        '{"command":"tts","text":"x","future":1,"option":{"speed":2,"nested":{"a":[]}},'
        '"playId":"p"}'
    )
    assert parse_command(text) == TtsCommand(
        text="x", play_id="p", option=SynthesisOption(speed=2.0)
    )


def test_null_optional_fields_count_as_absent() -> None:
    assert parse_command('{"command":"tts","text":"x","playId":null}') == TtsCommand(text="x")


def test_vad_type_lives_in_the_vad_object() -> None:
    cmd = parse_command('{"command":"invite","option":{"vad":{"type":"nop"}}}')
    assert isinstance(cmd, InviteCommand)
    assert cmd.option.vad == VadOption()
    assert cmd.option.vad_type == "nop"
    assert orjson.loads(cmd.to_json())["option"]["vad"]["type"] == "nop"


def test_synthesis_option_merge_overrides_set_fields_only() -> None:
    base = SynthesisOption(provider="aliyun", speaker="a", speed=1.0)
    assert base.merge(SynthesisOption(speaker="b")) == SynthesisOption(
        provider="aliyun", speaker="b", speed=1.0
    )
    assert base.merge(None) is base


def test_repr_hides_secrets() -> None:
    text = repr(InviteCommand(option=FULL_OPTION))
    assert "secret" not in text and "skey" not in text and "sid" not in text


# --- bad input ------------------------------------------------------------------------------

BAD: list[tuple[str | bytes, str, str | None]] = [
    # (frame, substring of the message, command named)
    ("", "invalid JSON", None),
    (b"\xff\xfe", "invalid JSON", None),
    ('{"command":"tts",', "invalid JSON", None),
    ("[1,2]", "JSON object", None),
    ('"tts"', "JSON object", None),
    ("null", "JSON object", None),
    ('{"text":"x"}', "'command'", None),
    ('{"command":null}', "'command'", None),
    ('{"command":3}', "'command'", None),
    ('{"command":"dial"}', "unknown command 'dial'", "dial"),
    ('{"command":"Invite","option":{}}', "unknown command 'Invite'", "Invite"),
    ('{"command":"invite"}', "option is required", "invite"),
    ('{"command":"tts"}', "text is required", "tts"),
    ('{"command":"reject","code":486}', "reason is required", "reject"),
    ('{"command":"refer","caller":"a"}', "callee is required", "refer"),
    ('{"command":"refer","callee":"b"}', "caller is required", "refer"),
    ('{"command":"message"}', "body is required", "message"),
    ('{"command":"bridge"}', "targetSessionId is required", "bridge"),
    ('{"command":"history","speaker":"u"}', "text is required", "history"),
    ('{"command":"custom"}', "data is required", "custom"),
    ('{"command":"addIceCandidate"}', "candidate is required", "addIceCandidate"),
    ('{"command":"sendDtmf"}', "digits is required", "sendDtmf"),
    ('{"command":"sendDtmf","digits":""}', "digits", "sendDtmf"),
    ('{"command":"sendDtmf","digits":"12E"}', "digits", "sendDtmf"),
    ('{"command":"tts","text":5}', "text must be a string, got an integer", "tts"),
    ('{"command":"tts","text":"x","autoHangup":"yes"}', "autoHangup must be a boolean", "tts"),
    ('{"command":"tts","text":"x","waitInputTimeout":true}', "waitInputTimeout", "tts"),
    ('{"command":"tts","text":"x","waitInputTimeout":1.5}', "waitInputTimeout", "tts"),
    ('{"command":"tts","text":"x","waitInputTimeout":-1}', "waitInputTimeout", "tts"),
    ('{"command":"reject","reason":"r","code":4294967296}', "code must be between", "reject"),
    ('{"command":"tts","text":"x","option":[]}', "option must be an object", "tts"),
    ('{"command":"tts","text":"x","option":{"speed":"fast"}}', "option.speed", "tts"),
    ('{"command":"tts","text":"x","option":{"speed":true}}', "option.speed", "tts"),
    ('{"command":"interrupt","graceful":"maybe"}', "graceful", "interrupt"),
    ('{"command":"interrupt","fadeOutMs":"300"}', "fadeOutMs", "interrupt"),
    ('{"command":"invite","option":"sip:bob@x"}', "option must be an object", "invite"),
    ('{"command":"invite","option":{"sip":{"headers":[]}}}', "option.sip.headers", "invite"),
    ('{"command":"invite","option":{"sip":{"headers":{"X":1}}}}', "option.sip.headers.X", "invite"),
    ('{"command":"invite","option":{"sip":{"extract_headers":"X"}}}', "extract_headers", "invite"),
    (
        '{"command":"invite","option":{"sip":{"extract_headers":[1]}}}',
        "extract_headers[0]",
        "invite",
    ),
    (
        '{"command":"invite","option":{"vad":{"speechPadding":"1"}}}',
        "option.vad.speechPadding",
        "invite",
    ),
    (
        '{"command":"invite","option":{"vad":{"voiceThreshold":7}}}',
        "option.vad.voiceThreshold",
        "invite",
    ),
    (
        '{"command":"invite","option":{"vad":{"silenceTimeout":0}}}',
        "option.vad.silenceTimeout",
        "invite",
    ),
    ('{"command":"invite","option":{"vad":{"type":1}}}', "option.vad.type", "invite"),
    ('{"command":"invite","option":{"vad":5}}', "option.vad must be an object", "invite"),
    ('{"command":"invite","option":{"handshakeTimeout":"soon"}}', "handshakeTimeout", "invite"),
    ('{"command":"invite","option":{"inactivityTimeout":"50"}}', "inactivityTimeout", "invite"),
    ('{"command":"invite","option":{"agc":true}}', "option.agc must be an object", "invite"),
    ('{"command":"ringing","recorder":{"ptime":"20"}}', "recorder.ptime", "ringing"),
    (
        '{"command":"refer","caller":"","callee":"b","options":{"vad":{"speechPadding":-5}}}',
        "options.vad.speechPadding",
        "refer",
    ),
    ('{"command":"hangup","headers":{"X":null}}', "headers.X", "hangup"),
    ('{"command":"mute","trackId":7}', "trackId", "mute"),
]


@pytest.mark.parametrize(("text", "needle", "command"), BAD, ids=lambda v: str(v)[:50])
def test_bad_frames_raise_command_error(
    text: str | bytes, needle: str, command: str | None
) -> None:
    with pytest.raises(CommandError) as info:
        parse_command(text)
    assert needle in info.value.message
    assert info.value.command == command
    assert str(info.value) == info.value.message


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(9 if depth < 2 else 6)
    scalars: list[Any] = [None, True, False, -1, 0, 2**40, 1.5, "", "x\u00e9", "sip:a@b"]
    if choice < 6:
        return rng.choice(scalars)
    if choice < 8:
        return {rng.choice(["text", "option", "vad", "a"]): _random_json(rng, depth + 1)}
    return [_random_json(rng, depth + 1) for _ in range(rng.randrange(3))]


def _mutate_object(rng: random.Random, obj: dict[str, Any]) -> None:
    """Replace, delete or add one key somewhere in a nested JSON object."""
    target = obj
    while True:
        nested = [v for v in target.values() if isinstance(v, dict)]
        if not nested or rng.random() < 0.4:
            break
        target = rng.choice(nested)
    keys = list(target)
    action = rng.randrange(3)
    if action == 0 and keys:
        target[rng.choice(keys)] = _random_json(rng)
    elif action == 1 and keys:
        del target[rng.choice(keys)]
    else:
        target[rng.choice(["extra", "speed", "sdpMLineIndex", "text", "command"])] = _random_json(
            rng
        )


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        pos = rng.randrange(len(buf) + 1)
        op = rng.randrange(3)
        if op == 0 and pos < len(buf):
            buf[pos] = rng.randrange(256)
        elif op == 1 and pos < len(buf):
            del buf[pos]
        else:
            buf.insert(pos, rng.choice(b'{}[]":,\\0123456789.-eE truefalsnul\xc3\xff'))
    return bytes(buf)


def test_fuzzed_frames_give_a_command_or_command_error() -> None:
    rng = random.Random(20260821)
    seeds = [c.to_json() for c in FULL_COMMANDS] + [t.encode() for t, _ in CLIENT_MESSAGES]
    outcomes = {"command": 0, "error": 0}
    for i in range(6000):
        seed = rng.choice(seeds)
        if i % 2:
            frame = _mutate_bytes(rng, seed)
        else:
            obj = orjson.loads(seed)
            for _ in range(rng.randrange(1, 4)):
                _mutate_object(rng, obj)
            frame = orjson.dumps(obj)
        try:
            command = parse_command(frame)
        except CommandError as exc:
            assert exc.message
            outcomes["error"] += 1
        else:
            # Whatever parses serializes, and re-parses to the same command.
            assert parse_command(command.to_json()) == command
            outcomes["command"] += 1
    assert outcomes["command"] > 100 and outcomes["error"] > 100


def test_free_form_values_too_deep_to_echo_are_rejected() -> None:
    deep = "[" * 70 + "]" * 70
    with pytest.raises(CommandError) as info:
        parse_command('{"command":"custom","data":' + deep + "}")
    assert info.value.message == "custom: data is nested deeper than 64 levels"
    with pytest.raises(CommandError, match=r"option\.realtime"):
        parse_command('{"command":"invite","option":{"realtime":{"tools":' + deep + "}}}")
    ok = parse_command('{"command":"custom","data":' + "[" * 60 + "]" * 60 + "}")
    assert parse_command(ok.to_json()) == ok
