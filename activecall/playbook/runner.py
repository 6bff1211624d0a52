"""The playbook runner: an in-process client of the command/event API that talks with an LLM.

It is fed the call's events as the session emits them (dicts: ``answer``, ``asrFinal``,
``dtmf``, ``trackEnd`` ...) through :meth:`PlaybookRunner.on_event`, and the time through
:meth:`PlaybookRunner.tick`; it answers with commands (dicts: ``tts``, ``play``, ``interrupt``,
``refer``, ``hangup``, ``history`` ...) through its ``send`` callback, exactly what a WebSocket
client would send. Its only I/O is the LLM and HTTP (``<http/>``, the posthook), run as tasks.

The dialogue (reference §4.3):

* after ``answer``: the first scene's ``<play>`` file, then the greeting, or a first LLM turn;
* on ``asrFinal``: a turn. The reply streams into sentences and whole tags
  (:mod:`~activecall.playbook.reply`); each sentence is a streaming ``tts`` with the turn's
  ``playId``, the last one has ``endOfStream`` (and ``autoHangup`` after ``<hangup/>``, or,
  with ``sip.hangup_headers``, the runner's own ``hangup`` with them once it has been heard;
  and the follow-up ``waitInputTimeout``). ``<goto>`` and ``<set_var>`` act at once; ``<play>`` and
  ``<refer>`` once the reply has been heard; ``<http>`` answers go back to the LLM, up to
  :data:`MAX_HTTP_ROUNDS` times per turn;
* native tool calling: unless the front matter says ``llm.tools: false`` (for models without
  tool support), each request offers the actions as OpenAI function tools
  (:mod:`~activecall.playbook.tools`); a call the model makes does what its tag does, and the
  history keeps the assistant message with its ``tool_calls`` and a ``role: "tool"`` result
  for each; an ``http`` call's answer, or a reply that said nothing yet, goes back to the LLM
  (same cap). A bad call gets an ``Error: ...`` result and an ``error`` report. A server that
  refuses ``tools`` (HTTP error naming them) is asked again without, for the rest of the call.
  The prompt's tag instructions stay either way: a model may use tags, JSON or tools;
* early start: at the end of the caller's speech (the caller track's ``silence`` that ends
  a speech segment, with words from ``asrDelta`` since the last final; on with
  ``eou: {type: vad}``) or on ``eou`` with ``completed: true`` (an end-of-utterance engine)
  while the agent is silent, the turn starts at once with the words heard so far (the event's
  ``text``, else the last ``asrDelta``); its reply waits, unspoken and not acted on, for the
  ``asrFinal``. The same words (case and punctuation aside) let it go on; other words, or an
  ``asrDelta`` with more words, drop it without a trace and the final starts a new turn. An
  ``asrFinal`` with no ``eou`` before it starts the turn as usual;
* DTMF keys (the scene's, then the playbook's) and keypad collections; barge-in
  (:mod:`~activecall.playbook.interruption`); follow-ups on the server-side track's
  ``silence`` (its ``waitInputTimeout``);
* transfers: while a ``refer`` leg rings or is answered the caller talks to the other party
  (no turns, barge-in, follow-ups or keys); a failed leg is told to the LLM, which speaks; once
  the leg ended and the call goes on, follow-ups run again (timed by :meth:`tick`);
* in realtime mode, the model's function calls (``functionCall``), answered through the
  :class:`RealtimeModel` hook (and a scene switch re-instructs it); its transcript
  (``addHistory``) is the history;
* ``set_var`` values go to the call's extras and each LLM round is a pair of ``metrics``, when
  the session gave the hooks;
* after ``hangup``: the posthook.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

from activecall.playbook.actions import (
    Accept,
    Action,
    ActionError,
    Collect,
    Goto,
    Hangup,
    Http,
    Message,
    Play,
    Rag,
    Refer,
    Reject,
    SetVar,
    action_from_call,
    action_from_tag,
    action_from_tool,
)
from activecall.playbook.collector import Collected, Collection, Failed, Invalid, Outcome
from activecall.playbook.interruption import BargeIn, filler_words, is_filler
from activecall.playbook.model import FollowUp, Playbook, Scene
from activecall.playbook.posthook import send_posthook, summarize
from activecall.playbook.prompt import system_prompt
from activecall.playbook.reply import ActionTag, JsonReply, ReplyItem, ReplyParser, Speech
from activecall.playbook.template import CallFacts, render, template_variables
from activecall.playbook.tools import (
    ToolCall,
    ToolCallAssembler,
    assistant_message,
    tool_definitions,
    tool_message,
)
from activecall.providers.base import (
    ChatDelta,
    ChatMessage,
    LlmOption,
    LlmProvider,
    ProviderError,
)

__all__ = [
    "HTTP_RESULT_CHARS",
    "MAX_HTTP_ROUNDS",
    "EmitMetric",
    "PlaybookRunner",
    "RealtimeModel",
    "SendCommand",
    "SetExtra",
]

log = logging.getLogger(__name__)

MAX_HTTP_ROUNDS = 3
"""How often one turn may go back to the LLM with ``<http>`` answers."""
HTTP_RESULT_CHARS = 4000
"""How much of an HTTP answer the LLM is shown."""
HTTP_TIMEOUT_S = 10.0
REPAIR_MAX_CHARS = 15  # a reply this short may have been a reaction to half an utterance
RECENT_TURNS = 6  # rolling summary: the turns kept verbatim
FOLLOWUP_NUDGE = (
    "The caller has said nothing for a while. Say one short sentence to check they are still"
    " there or to move the conversation on."
)

SendCommand = Callable[[dict[str, Any]], None]
StartTask = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]
Report = Callable[[str], None]
SetExtra = Callable[[str, str], None]
"""Record ``key`` = ``value`` in the call's extras (the call record's ``extras``)."""
EmitMetric = Callable[[str, int, Mapping[str, Any]], None]
"""Emit a ``metrics`` event: ``key``, ``duration`` (ms), ``data``."""


class RealtimeModel(Protocol):
    """The realtime model of a call in realtime mode, as the runner talks to it."""

    def function_result(self, call_id: str, output: str, *, respond: bool = True) -> None:
        """Answer function call ``call_id``; ``respond``: then ask the model to go on."""
        ...

    def update_instructions(self, instructions: str) -> None:
        """Replace the model's instructions (a scene switch)."""
        ...

    def tell(self, text: str) -> None:
        """Tell the model something that happened (a system message) and let it speak."""
        ...


@dataclass(frozen=True, slots=True)
class _Later:
    """Something to do once an agent audio has been heard; ``keep``: even if it is cut off."""

    run: Callable[[], None]
    keep: bool = False


@dataclass(slots=True)
class _Turn:
    """One answer of the agent: one ``playId``, one or more LLM rounds."""

    play_id: str
    task: asyncio.Task[None] | None = None
    spoken: list[str] = field(default_factory=list)  # text sent (or held) as tts
    held: str | None = None  # the reply's last sentence: it goes with endOfStream
    reply: ReplyParser | None = None  # the round streaming now
    hangup: bool = False
    wait_input_ms: int | None = None
    after: list[Action] = field(default_factory=list)  # once the reply has been heard
    collection: Collection | None = None  # started by <collect>: armed when heard
    notes: list[str] = field(default_factory=list)  # for the LLM, after the reply streaming
    cancelled: bool = False
    # An early turn (started on end of utterance) answers a transcript that is not final yet:
    # it acts and speaks only once the final transcript confirms it.
    early: str | None = None
    confirmed: asyncio.Event | None = None
    restore: tuple[list[ChatMessage], str | None] | None = None  # history, summary before it
    user: dict[str, Any] | None = None  # its user message, given the final wording

    @property
    def provisional(self) -> bool:
        """True while the turn waits for the final transcript."""
        return self.confirmed is not None and not self.confirmed.is_set()


@dataclass(slots=True)
class _Round:
    """What one LLM call of a turn left to do: ``<http>`` and rag requests from tags, and
    whether the LLM must be asked again (a tool result it has to see)."""

    requests: list[Http | Rag] = field(default_factory=list)
    again: bool = False


class PlaybookRunner:
    """Runs one call's dialogue from a :class:`~activecall.playbook.model.Playbook`."""

    def __init__(
        self,
        playbook: Playbook,
        *,
        send: SendCommand,
        llm: LlmProvider | None,
        facts: CallFacts,
        clock: Callable[[], int],
        start_task: StartTask | None = None,
        variables: Mapping[str, Any] | None = None,
        report: Report | None = None,
        server_side_track: str = "server-side-track",
        http: httpx.AsyncClient | None = None,
        set_extra: SetExtra | None = None,
        metric: EmitMetric | None = None,
        realtime: RealtimeModel | None = None,
    ) -> None:
        self.playbook = playbook
        self.facts = facts
        self.llm = llm
        self.history: list[ChatMessage] = []
        """The dialogue so far, as chat messages (the system prompt not included)."""
        self.vars: dict[str, Any] = {}
        """``set_var`` and collected values (rendered into prompts)."""
        self.scene: Scene = playbook.first_scene
        self.system_prompt = ""
        self._send_command = send
        self._clock = clock
        self._start_task = start_task
        self._variables = dict(variables or {})
        self._report = report
        self._server_side_track = server_side_track
        self._http = http
        self._own_http = http is None
        self._option = _llm_option(playbook)
        self._fillers = filler_words() if playbook.interruption.filler_word_filter else frozenset()
        self._bargein = BargeIn(playbook.interruption, self._fillers)
        self._answered = False
        self._ended = False
        self._turn: _Turn | None = None
        self._counter = 0
        self._ours: set[str] = set()  # playIds this runner started
        self._after: dict[str, list[_Later]] = {}  # playId -> what runs once it ends
        self._collection: Collection | None = None
        self._followups = 0
        self._queued: list[str] = []  # caller turns waiting for the agent (strategy none)
        self._last_reply: tuple[int, str] | None = None  # (when, text) of the last reply
        self._summary: str | None = None  # rolling summary of older turns
        self._native_tools = playbook.llm is not None and playbook.llm.tools
        self._heard = ""  # the caller's words since the last asrFinal (asrDelta)
        self._last_final = ""  # a late eou with these words was answered already
        self._tasks: set[asyncio.Task[None]] = set()
        self._set_extra = set_extra
        self._metric = metric
        self._realtime = realtime
        # The built-in end-of-utterance trigger (the caller's end of speech) when the front
        # matter's ``eou`` says ``type: vad``. Off by default: with pocketsphinx the last
        # interim text differed from the final in 22-30 of 50 turns (bench/playbook.py), and
        # each of those is an LLM request paid for and thrown away.
        self._vad_eou = _eou_type(playbook.option.get("eou")) == "vad"
        self._speech_start: int | None = None  # the caller's speech segment (its speaking)
        # The callee of the transfer leg that rings or answered: the caller talks to them.
        self._transfer: str | None = None
        self._dialled: str | None = None  # the callee of our refer, until its leg says more
        self._resume_at: int | None = None  # follow-up deadline once a transfer leg ended
        if not facts.start_time:
            self.facts = replace(facts, start_time=_rfc3339(clock()))

    # ------------------------------------------------------------------ events in

    def on_event(self, event: Mapping[str, Any]) -> None:
        """One event of the call, as the session emitted it."""
        name = event.get("event")
        if self._ended or not isinstance(name, str):
            return
        handler = self._HANDLERS.get(name)
        if event.get("refer"):
            handler = self._REFER_HANDLERS.get(name)  # the transfer leg's events
        if handler is not None:
            try:
                handler(self, event)
            except Exception as exc:  # the dialogue must never take the call down
                log.exception("playbook runner failed on %s", name)
                self._error(f"playbook runner failed on {name}: {exc}")

    def tick(self, now_ms: int) -> None:
        """The time passes: keypad timeouts, the follow-up after a transfer leg ended."""
        collection = self._collection
        if collection is not None and not self._ended:
            outcome = collection.check(now_ms)
            if outcome is not None:
                self._collected(collection, outcome)
        resume = self._resume_at
        if resume is not None and now_ms >= resume and not self._ended:
            self._resume_at = None
            self._follow_up()

    def start_call(self, facts: CallFacts) -> None:
        """Update what the call knows about itself (caller, callee, SIP headers) before it
        is answered; the prompts are rendered with it at ``answer``."""
        self.facts = replace(facts, start_time=facts.start_time or self.facts.start_time)

    async def aclose(self) -> None:
        """Wait for the runner's tasks (the posthook) and release its HTTP client."""
        if self._turn is not None and not self._ended:
            self._cancel_turn()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._own_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    @property
    def ended(self) -> bool:
        """True once the call has hung up."""
        return self._ended

    # -- handlers

    def _on_answer(self, event: Mapping[str, Any]) -> None:
        if self._answered:
            return
        self._answered = True
        self._render_scene()
        if self.playbook.realtime is not None:
            return  # the realtime model speaks first; we only act on its function calls
        play = self.scene.play
        if play:
            play_id = self._play(play)
            self._then(play_id, self._greet)
        else:
            self._greet()

    def _on_incoming(self, event: Mapping[str, Any]) -> None:
        headers = event.get("headers")
        caller, callee = event.get("caller"), event.get("callee")
        self.facts = replace(
            self.facts,
            caller=caller if isinstance(caller, str) else self.facts.caller,
            callee=callee if isinstance(callee, str) else self.facts.callee,
            sip=self._extracted(headers) if isinstance(headers, Mapping) else self.facts.sip,
        )

    def _on_final(self, event: Mapping[str, Any]) -> None:
        text = str(event.get("text") or "").strip()
        self._heard = ""
        if not text or not self._answered or self._transfer is not None:
            return  # (while transferred the caller talks to the other party)
        self._resume_at = None
        self._last_final = text
        now = self._time(event)
        self._bargein.caller_final(now)
        turn = self._turn
        if turn is not None and turn.provisional:
            if _same_words(turn.early or "", text):
                self._followups = 0
                self._confirm(turn, text)
                return
            self._cancel_turn()  # the caller said more, or else: the early answer is dropped
        collection = self._collection
        if collection is not None:
            if not collection.spec.interruptible:
                return  # keypad only
            self._collection = None
            self._note(f"The caller spoke instead of using the keypad for {collection.var}.")
        rules = self.playbook.interruption
        if rules.filler_word_filter and is_filler(text, self._fillers):
            return
        self._followups = 0
        if rules.strategy == "none" and self._bargein.agent_speaking is not None:
            self._queued.append(text)  # the agent finishes first
            return
        self._user_turn(text, now)

    def _on_delta(self, event: Mapping[str, Any]) -> None:
        if self.playbook.realtime is not None or self._transfer is not None:
            return  # realtime: the model's own words; transferred: the other party's turn
        heard = str(event.get("text") or "").strip()
        if heard:
            self._heard = heard
            turn = self._turn
            if turn is not None and turn.provisional and not _same_words(turn.early or "", heard):
                self._cancel_turn()  # the caller goes on speaking: the utterance had not ended
        if self._listening_for_bargein():
            text = str(event.get("text") or "")
            filler = bool(event.get("isFiller"))
            if self._bargein.check("asr", self._time(event), text=text, filler=filler):
                self._barge_in()

    def _on_eou(self, event: Mapping[str, Any]) -> None:
        """End of utterance (an EOU engine): answer the words heard so far at once, before the
        ASR's final transcript (reference §4.3 item 8), while the agent is silent."""
        if event.get("completed") is not True:
            return
        given = event.get("text")
        text = given if isinstance(given, str) and given.strip() else self._heard
        self._end_of_utterance(text.strip(), self._time(event))

    def _end_of_utterance(self, text: str, now: int) -> None:
        """The caller stopped speaking (an ``eou`` or the end of their speech segment): an
        early turn on ``text``, the words heard so far, when the agent is silent."""
        if not self._answered or self.llm is None or self._transfer is not None:
            return
        if self._turn is not None or self._collection is not None:
            return
        if self._bargein.agent_speaking is not None or self._queued:
            return
        rules = self.playbook.interruption
        if not text or (rules.filler_word_filter and is_filler(text, self._fillers)):
            return
        if not self._heard and _same_words(text, self._last_final):
            return  # the end of an utterance whose final transcript came first
        self._user_turn(text, now, early=True)

    def _on_speaking(self, event: Mapping[str, Any]) -> None:
        if event.get("trackId") == self._server_side_track or self._transfer is not None:
            return
        start = event.get("startTime")
        self._speech_start = start if isinstance(start, int) else None
        self._resume_at = None
        if self._listening_for_bargein():
            filler = bool(event.get("isFiller"))
            if self._bargein.check("vad", self._time(event), filler=filler):
                self._barge_in()

    def _on_silence(self, event: Mapping[str, Any]) -> None:
        if event.get("trackId") != self._server_side_track:
            self._caller_silence(event)
            return
        # The server-side track's silence: the waitInputTimeout we asked for.
        if not self._answered or self._transfer is not None:
            return
        self._follow_up()

    def _caller_silence(self, event: Mapping[str, Any]) -> None:
        """The caller's ``silence``: the one that ends a speech segment (its ``startTime`` is
        that of the segment's ``speaking``; a ``silenceTimeout`` tick's is the silence's own)
        is the end of an utterance when the ASR has heard words since its last final."""
        start = event.get("startTime")
        if start is None or start != self._speech_start:
            return
        self._speech_start = None
        if self._vad_eou and self._heard and self.playbook.realtime is None:
            self._end_of_utterance(self._heard, self._time(event))

    def _follow_up(self) -> None:
        """The caller has been silent for the follow-up time: nudge the LLM, or hang up once
        the follow-ups are used up."""
        if self._collection is not None or self._turn is not None:
            return
        if self._bargein.agent_speaking is not None:
            return
        followup = self._followup()
        if followup is None:
            return
        if self._followups >= followup.max_count:
            self._hangup_now("system")
            return
        self._followups += 1
        self._start_turn(nudge=FOLLOWUP_NUDGE)

    def _on_dtmf(self, event: Mapping[str, Any]) -> None:
        digit = str(event.get("digit") or "")
        if not digit or not self._answered or self._transfer is not None:
            return  # (while transferred the keys go on to the other party)
        self._followups = 0
        self._resume_at = None
        collection = self._collection
        if collection is not None:
            outcome = collection.press(digit, self._time(event))
            if outcome is not None:
                self._collected(collection, outcome)
            return
        action = self.scene.dtmf.get(digit) or self.playbook.dtmf.get(digit)
        if action is None:
            return
        self._cancel_turn()
        if action.action == "goto" and action.scene is not None:
            self._stop_agent()
            self._goto(action.scene, by_key=True)
        elif action.action == "transfer" and action.target is not None:
            self._stop_agent()
            self._refer(action.target)
        elif action.action == "hangup":
            self._hangup_now("caller")

    def _on_track_start(self, event: Mapping[str, Any]) -> None:
        play_id = event.get("playId")
        if isinstance(play_id, str) and play_id in self._ours:
            self._bargein.agent_started(play_id, self._time(event))

    def _on_track_end(self, event: Mapping[str, Any]) -> None:
        play_id = event.get("playId")
        if not isinstance(play_id, str) or play_id not in self._ours:
            return
        self._bargein.agent_stopped(play_id)
        for later in self._after.pop(play_id, []):
            later.run()
            if self._ended:
                return
        if self._transfer is not None:
            return
        if self._queued and self._bargein.agent_speaking is None and self._turn is None:
            text, self._queued = " ".join(self._queued), []
            self._user_turn(text, self._time(event))

    def _on_interruption(self, event: Mapping[str, Any]) -> None:
        play_id = event.get("playId")
        if isinstance(play_id, str):
            # Cut off (barge-in, or a newer reply): what was to follow it is dropped, except
            # arming a keypad collection, which must not wait for ever.
            self._drop_after(play_id)

    def _on_function_call(self, event: Mapping[str, Any]) -> None:
        """A realtime model's function call: done, and its result sent back to the model (and
        kept in the history, as a native tool call's)."""
        name = str(event.get("name") or "")
        given = event.get("arguments")
        arguments = given if isinstance(given, str) else ""
        call_id = event.get("callId")
        call = ToolCall(call_id if isinstance(call_id, str) else "", name, arguments)
        turn = _Turn(play_id="")
        respond = True
        try:
            action = action_from_call(name, arguments)
        except ActionError as exc:
            self._error(str(exc))
            result = f"Error: {exc}. Nothing was done."
        else:
            if isinstance(action, Goto) and action.scene not in self.playbook.scenes:
                self._error(f"goto: no scene '{action.scene}'")
                known = ", ".join(sorted(self.playbook.scenes))
                result = f"Error: there is no scene '{action.scene}' (scenes: {known})."
            else:
                self._act(turn, action, [])
                result = _realtime_done(action)
                # the call ends, or another party takes the line: the model has nothing to say
                respond = not isinstance(action, Hangup | Refer)
        self.history.append(assistant_message("", [call]))
        self.history.append(tool_message(call, result))
        if self._realtime is not None and call.id:
            try:
                self._realtime.function_result(call.id, result, respond=respond)
            except Exception as exc:  # the bridge is gone: the call goes on
                self._error(f"realtime: the function result was not sent: {exc}")
        self._finish_actions(turn)

    def _on_add_history(self, event: Mapping[str, Any]) -> None:
        """Realtime mode: the bridge's transcripts (no ``sender``) are the dialogue."""
        if self.playbook.realtime is None or event.get("sender") is not None:
            return
        speaker, text = event.get("speaker"), event.get("text")
        if speaker in ("user", "assistant") and isinstance(text, str) and text.strip():
            self.history.append({"role": speaker, "content": text})

    def _on_error(self, event: Mapping[str, Any]) -> None:
        """A ``refer`` the session refused (no SIP, a leg already up) is a failed transfer."""
        if event.get("command") == "refer" and self._dialled is not None:
            self._transfer_failed(str(event.get("error") or "refused"))

    # -- the transfer leg's events (refer:true)

    def _on_refer_up(self, event: Mapping[str, Any]) -> None:
        """The leg rings or answered: the caller is with the other party from now on."""
        if self._transfer is None:
            self._transfer, self._dialled = self._dialled or "", None  # "": a client's refer
            self._cancel_turn()  # a turn the caller started while it was being dialled
        self._resume_at = None

    def _on_refer_reject(self, event: Mapping[str, Any]) -> None:
        code, reason = event.get("code"), str(event.get("reason") or "").strip()
        detail = " ".join(str(part) for part in (code, reason) if part not in (None, ""))
        self._transfer_failed(detail or "no reason given")

    def _on_refer_hangup(self, event: Mapping[str, Any]) -> None:
        """The leg ended; unless the call ends with it (``autoHangup``), the agent is back."""
        callee = self._transfer if self._transfer is not None else self._dialled
        self._transfer = self._dialled = None
        if callee is None or not self._answered:
            return
        self._note(f"The transfer to {callee or 'the other party'} ended.")
        self._followups = 0
        followup = self._followup()
        if followup is not None:
            self._resume_at = self._time(event) + followup.timeout_ms

    def _transfer_failed(self, detail: str) -> None:
        callee = self._transfer if self._transfer is not None else self._dialled
        self._transfer = self._dialled = None
        text = f"The transfer to {callee or 'the other party'} failed: {detail}."
        if self._realtime is not None:
            self.history.append({"role": "system", "content": text})
            try:
                self._realtime.tell(text)
            except Exception as exc:
                self._error(f"realtime: the model was not told: {exc}")
            return
        self._note(text)
        self._followups = 0
        if self._answered:
            self._start_turn()  # the agent tells the caller

    def _on_hangup(self, event: Mapping[str, Any]) -> None:
        self._ended = True
        self._cancel_turn()
        self._collection = None
        hook = self.playbook.posthook
        if hook is not None:
            self._spawn(self._posthook())

    _HANDLERS: Mapping[str, Callable[[PlaybookRunner, Mapping[str, Any]], None]] = {
        "answer": _on_answer,
        "incoming": _on_incoming,
        "asrFinal": _on_final,
        "asrDelta": _on_delta,
        "eou": _on_eou,
        "speaking": _on_speaking,
        "silence": _on_silence,
        "dtmf": _on_dtmf,
        "trackStart": _on_track_start,
        "trackEnd": _on_track_end,
        "interruption": _on_interruption,
        "functionCall": _on_function_call,
        "addHistory": _on_add_history,
        "error": _on_error,
        "hangup": _on_hangup,
    }
    _REFER_HANDLERS: Mapping[str, Callable[[PlaybookRunner, Mapping[str, Any]], None]] = {
        "ringing": _on_refer_up,
        "answer": _on_refer_up,
        "reject": _on_refer_reject,
        "hangup": _on_refer_hangup,
    }

    # ------------------------------------------------------------------ the dialogue

    def _greet(self) -> None:
        greeting = self.playbook.greeting_text
        if greeting:
            text = render(greeting, self._template_vars()).strip()
            if text:
                play_id = self._new_play_id()
                command: dict[str, Any] = {"command": "tts", "text": text, "playId": play_id}
                self._with_wait_input(command)
                self._send(command)
                self.history.append({"role": "assistant", "content": text})
                self._send({"command": "history", "speaker": "assistant", "text": text})
                return
        self._start_turn()

    def _user_turn(self, text: str, now: int, *, early: bool = False) -> None:
        heard, restore = text, (list(self.history), self._summary) if early else None
        if "context_repair" in self._features():
            text = self._repair(text, now)
        self._start_turn(user=text, restore=restore)
        if early and self._turn is not None:
            self._turn.early = heard  # what the final transcript is compared with

    def _repair(self, text: str, now: int) -> str:
        """Merge an utterance the ASR split in two: the agent's short reaction to the first
        half is dropped and the halves go to the LLM as one turn."""
        last = self._last_reply
        llm = self.playbook.llm
        window = llm.repair_window_ms if llm is not None else 3000
        history = self.history
        if (
            last is None
            or now - last[0] > window
            or len(last[1]) >= REPAIR_MAX_CHARS
            or len(history) < 2
            or history[-1].get("role") != "assistant"
            or history[-2].get("role") != "user"
        ):
            return text
        previous = str(history[-2].get("content") or "")
        del history[-2:]
        return f"{previous} {text}"

    def _start_turn(
        self,
        *,
        user: str | None = None,
        nudge: str | None = None,
        restore: tuple[list[ChatMessage], str | None] | None = None,
    ) -> None:
        """Ask the LLM for the agent's next reply; ``restore`` (the history and summary
        before it) makes it an early turn on a transcript that is not final yet."""
        self._cancel_turn()
        self._resume_at = None
        message: dict[str, Any] | None = None
        if user is not None:
            message = {"role": "user", "content": user}
            self.history.append(message)
        if self.llm is None:
            if self.playbook.realtime is None:
                self._error("no LLM for this playbook: it cannot answer")
            return  # in realtime mode the model answers by itself
        turn = _Turn(play_id=self._new_play_id())
        if restore is not None:
            turn.early, turn.confirmed = user, asyncio.Event()
            turn.restore, turn.user = restore, message
        self._turn = turn
        turn.task = self._spawn(self._run_turn(turn, nudge))

    def _confirm(self, turn: _Turn, final: str) -> None:
        """The final transcript says what the early turn answered: let it speak."""
        message, early = turn.user, turn.early
        if message is not None and early is not None:
            content = str(message.get("content") or "")
            if content.endswith(early):  # after context repair it follows the earlier words
                message["content"] = content[: len(content) - len(early)] + final
        assert turn.confirmed is not None
        turn.confirmed.set()

    def _cancel_turn(self) -> None:
        turn, self._turn = self._turn, None
        if turn is None:
            return
        turn.cancelled = True
        if turn.provisional:
            # Nothing of an unconfirmed early turn was said or done: it leaves no trace.
            assert turn.restore is not None
            self.history[:], self._summary = turn.restore
            if turn.task is not None:
                turn.task.cancel()
            return
        # What was generated before the cut stays in the history, before the next message.
        if turn.reply is not None and turn.reply.text.strip():
            self.history.append({"role": "assistant", "content": turn.reply.text})
        turn.reply = None
        self._flush_notes(turn)
        if turn.task is not None:
            turn.task.cancel()

    async def _run_turn(self, turn: _Turn, nudge: str | None) -> None:
        assert self.llm is not None
        failure: str | None = None
        try:
            if "rolling_summary" in self._features():
                await self._roll_summary()
            rounds = 0
            while not turn.cancelled:
                first = nudge if rounds == 0 else None
                done = await self._round(turn, first, fetch=rounds < MAX_HTTP_ROUNDS)
                if turn.cancelled or not (done.requests or done.again):
                    break
                if rounds >= MAX_HTTP_ROUNDS:
                    self._error(f"more than {MAX_HTTP_ROUNDS} <http> rounds in one turn: stopped")
                    break
                rounds += 1
                self._release(turn)
                for request in done.requests:
                    self._note(await self._lookup(request))
        except ProviderError as exc:
            failure = f"LLM: {exc}"
        except Exception as exc:  # a bug must still end the turn's speech
            log.exception("playbook turn failed")
            failure = f"playbook turn failed: {type(exc).__name__}: {exc}"
        # An early turn that failed fails for the caller only once the transcript is final.
        await self._confirmed(turn)
        if failure is not None:
            self._error(failure)
        if not turn.cancelled:
            self._finish_turn(turn)

    async def _confirmed(self, turn: _Turn) -> None:
        """Until the final transcript confirms an early turn (it is cancelled otherwise)."""
        if turn.confirmed is not None:
            await turn.confirmed.wait()

    async def _round(self, turn: _Turn, nudge: str | None, *, fetch: bool = True) -> _Round:
        """One LLM call: its reply spoken and acted on; ``fetch``: tool calls may still make
        HTTP requests in this turn."""
        assert self.llm is not None
        messages: list[ChatMessage] = [{"role": "system", "content": self._prompt()}]
        messages.extend(self.history)
        if nudge is not None:
            messages.append({"role": "system", "content": nudge})
        done = _Round()
        parser = ReplyParser()
        calls = ToolCallAssembler()
        turn.reply = parser
        started, first_at = self._clock(), None
        async with contextlib.aclosing(self._chat(messages)) as stream:
            async for delta in stream:
                if first_at is None:
                    first_at = self._clock()
                if turn.provisional:
                    await self._confirmed(turn)  # the reply is ready: it waits for the final
                if turn.cancelled:
                    return _Round()
                if delta.tool_calls:
                    calls.push(delta.tool_calls)
                if delta.content:
                    items = parser.push(delta.content)
                    for index, item in enumerate(items):
                        # speech just before a tag may be the reply's last: it waits for the
                        # next speech or the end, so a <hangup/> can ride on it (no added
                        # latency when more text follows at once)
                        before_tag = isinstance(_at(items, index + 1), ActionTag)
                        self._item(turn, item, done.requests, last=before_tag)
        self._llm_metrics(turn, started, first_at)
        await self._confirmed(turn)
        for item in parser.finish():
            self._item(turn, item, done.requests, last=True)
        if calls:
            results = await self._tool_calls(turn, calls.calls(), done, fetch=fetch)
            self.history.append(assistant_message(parser.text, [c for c, _ in results]))
            self.history.extend(tool_message(call, result) for call, result in results)
        elif parser.text.strip():
            self.history.append({"role": "assistant", "content": parser.text})
        turn.reply = None
        self._flush_notes(turn)
        return done

    def _llm_metrics(self, turn: _Turn, started: int, first_at: int | None) -> None:
        """``metrics`` of one LLM round: time to its first delta and to its end."""
        if self._metric is None:
            return
        provider = self._option.provider or "openai"
        now = self._clock()
        data = {"playId": turn.play_id}
        try:
            if first_at is not None:
                self._metric(f"ttfb.llm.{provider}", max(0, first_at - started), data)
            self._metric(f"completed.llm.{provider}", max(0, now - started), data)
        except Exception:  # a metric must never end a turn
            log.exception("playbook metrics failed")

    async def _chat(self, messages: list[ChatMessage]) -> AsyncGenerator[ChatDelta, None]:
        """The LLM's reply, offered the playbook's tools unless they are off; a server that
        refuses tools (many local models) is asked again without, for the rest of the call."""
        assert self.llm is not None
        tools = None
        if self._native_tools:
            tools = tool_definitions(self.playbook, call_type=self.facts.call_type)
        received = False
        try:
            async with contextlib.aclosing(
                _deltas(self.llm.chat(messages, self._option, tools=tools))
            ) as stream:
                async for delta in stream:
                    received = True
                    yield delta
            return
        except ProviderError as exc:
            if tools is None or received or not _refuses_tools(exc):
                raise
            self._native_tools = False
            log.warning("%s: the LLM refused tools, asking without: %s", self.facts.session_id, exc)
        async with contextlib.aclosing(_deltas(self.llm.chat(messages, self._option))) as stream:
            async for delta in stream:
                yield delta

    async def _tool_calls(
        self, turn: _Turn, calls: list[ToolCall], done: _Round, *, fetch: bool
    ) -> list[tuple[ToolCall, str]]:
        """Carry out the model's tool calls as their actions; each call's result for it."""
        results: list[tuple[ToolCall, str]] = []
        for call in calls:
            try:
                action = action_from_call(call.name, call.arguments)
            except ActionError as exc:
                self._error(f"tool call: {exc}")
                results.append((call, f"Error: {exc}. Nothing was done."))
                continue
            result, again = await self._tool_action(turn, action, fetch=fetch)
            done.again = done.again or again
            results.append((call, result))
        if not turn.spoken and not (turn.hangup or turn.after or turn.collection):
            done.again = True  # nothing said yet: the model speaks once it has the results
        return results

    async def _tool_action(self, turn: _Turn, action: Action, *, fetch: bool) -> tuple[str, bool]:
        """Do one tool call's action; what the model is told, and whether it must be asked
        again to see it."""
        if isinstance(action, Http):
            if not fetch:
                return f"Not done: at most {MAX_HTTP_ROUNDS} requests in one reply.", True
            self._release(turn)
            return await self._http_call(action), True
        if isinstance(action, Rag):
            return self._rag(action), True
        if isinstance(action, Goto) and action.scene not in self.playbook.scenes:
            self._error(f"goto: no scene '{action.scene}'")
            known = ", ".join(sorted(self.playbook.scenes))
            return f"Error: there is no scene '{action.scene}' (scenes: {known}).", False
        if isinstance(action, Collect) and action.type not in self.playbook.collectors:
            self._error(f"collect: no collector '{action.type}'")
            known = ", ".join(sorted(self.playbook.collectors)) or "none"
            return f"Error: there is no collector '{action.type}' (collectors: {known}).", False
        self._act(turn, action, [])
        return _done(action), False

    def _item(
        self, turn: _Turn, item: ReplyItem, requests: list[Http | Rag], *, last: bool = False
    ) -> None:
        """One item of the reply; ``last``: its speech may end the reply, so it is held for
        the final ``tts`` (the one with ``endOfStream`` and ``autoHangup``) until more comes."""
        if turn.cancelled:
            return
        if isinstance(item, Speech):
            self._say(turn, item.text, hold=last)
        elif isinstance(item, ActionTag):
            try:
                action = action_from_tag(item.name, item.attrs)
            except ActionError as exc:
                self._error(str(exc))
                return
            self._act(turn, action, requests)
        elif isinstance(item, JsonReply):
            if item.text:
                self._say(turn, item.text, hold=True)
            if item.wait_input_timeout is not None:
                turn.wait_input_ms = item.wait_input_timeout
            for tool in item.tools:
                try:
                    action = action_from_tool(tool)
                except ActionError as exc:
                    self._error(str(exc))
                    continue
                self._act(turn, action, requests)

    def _say(self, turn: _Turn, text: str, *, hold: bool = False) -> None:
        self._release(turn)
        turn.spoken.append(text)
        if hold:
            turn.held = text
            return
        # The trailing space keeps the TTS's own sentence splitter from gluing sentences.
        command = {"command": "tts", "text": f"{text} ", "playId": turn.play_id, "streaming": True}
        self._send(command)

    def _release(self, turn: _Turn) -> None:
        """Send the held sentence: more is coming after all."""
        held, turn.held = turn.held, None
        if held is not None:
            self._send(
                {"command": "tts", "text": f"{held} ", "playId": turn.play_id, "streaming": True}
            )

    def _act(self, turn: _Turn, action: Action, requests: list[Http | Rag]) -> None:
        if isinstance(action, Hangup):
            turn.hangup = True
        elif isinstance(action, Refer | Play):
            turn.after.append(action)
        elif isinstance(action, Goto):
            self._goto(action.scene, by_key=False)
        elif isinstance(action, SetVar):
            self.vars[action.key] = action.value
            if self._set_extra is not None:
                self._set_extra(action.key, action.value)  # the call record's extras
        elif isinstance(action, Http):
            requests.append(action)
        elif isinstance(action, Collect):
            self._collect(turn, action)
        elif isinstance(action, Message):
            command: dict[str, Any] = {"command": "message", "body": action.body}
            if action.content_type:
                command["contentType"] = action.content_type
            if action.refer:
                command["refer"] = True
            self._send(command)
        elif isinstance(action, Accept):
            self._send({"command": "accept", "option": dict(self.playbook.option)})
        elif isinstance(action, Reject):
            command = {"command": "reject", "reason": action.reason}
            if action.code is not None:
                command["code"] = action.code
            self._send(command)
        elif isinstance(action, Rag):
            requests.append(action)  # its (empty) answer goes back to the LLM, as <http>'s

    def _finish_turn(self, turn: _Turn) -> None:
        """The LLM is done: end the turn's speech and schedule what follows it."""
        if self._turn is turn:
            self._turn = None
        if turn.spoken:
            now = self._clock()
            text = " ".join(turn.spoken)
            self._last_reply = (now, text)
            self._send({"command": "history", "speaker": "assistant", "text": text})
        self._finish_actions(turn)

    def _finish_actions(self, turn: _Turn) -> None:
        plays = [a for a in turn.after if isinstance(a, Play)]
        refers = [a for a in turn.after if isinstance(a, Refer)]
        hangup = turn.hangup and not refers  # a transfer leg ends the call by itself
        later: list[_Later] = []
        for index, play in enumerate(plays):
            last = index == len(plays) - 1
            later.append(_Later(_bind(self._play_after, play.file, hangup and last)))
        for refer in refers:
            later.append(_Later(_bind(self._refer, refer.to)))
        if turn.collection is not None:
            later.append(_Later(_bind(self._arm, turn.collection), keep=True))
        if turn.spoken:
            held, turn.held = turn.held, None
            final: dict[str, Any] = {
                "command": "tts",
                "text": held or "",
                "playId": turn.play_id,
                "streaming": True,
                "endOfStream": True,
            }
            if hangup and not plays and self.playbook.hangup_headers:
                # the runner hangs up itself once the speech has been heard: its hangup
                # carries the rendered headers, which autoHangup cannot
                later.append(_Later(self._hangup_heard))
            elif hangup and not plays:
                final["autoHangup"] = True
            elif not plays and not refers and turn.collection is None:
                self._with_wait_input(final, turn.wait_input_ms)
            self._send(final)
            if later:
                self._after[turn.play_id] = later
            return
        for item in later:
            item.run()
        if hangup and not plays:
            self._hangup_now("system")

    def _goto(self, scene_id: str, *, by_key: bool) -> None:
        scene = self.playbook.scenes.get(scene_id)
        if scene is None:
            self._error(f"goto: no scene '{scene_id}'")
            self._note(f"There is no scene '{scene_id}'.")
            return
        self.scene = scene
        self._render_scene()
        if self._realtime is not None:
            try:
                self._realtime.update_instructions(render(scene.prompt, self._template_vars()))
            except Exception as exc:
                self._error(f"realtime: the new scene's instructions were not sent: {exc}")
        if not by_key:
            return  # the LLM switched scene in the middle of its reply: it carries on
        # A key moved the caller: the scene's file, then the LLM speaks for the new scene.
        if scene.play:
            self._then(self._play(scene.play), self._start_turn)
        else:
            self._start_turn()

    def _collect(self, turn: _Turn, action: Collect) -> None:
        spec = self.playbook.collectors.get(action.type)
        if spec is None:
            known = ", ".join(self.playbook.collectors) or "none"
            self._error(f"<collect>: no collector '{action.type}'")
            self._note(f"There is no collector '{action.type}' (collectors: {known}).")
            return
        collection = Collection(spec, action.var, prompt=action.prompt)
        self._collection = collection
        turn.collection = collection
        if action.prompt:
            self._say(turn, action.prompt)

    def _arm(self, collection: Collection) -> None:
        if self._collection is collection:
            collection.arm(self._clock())

    def _collected(self, collection: Collection, outcome: Outcome) -> None:
        if self._collection is not collection:
            return
        spec = collection.spec
        if isinstance(outcome, Invalid):
            play_id = self._new_play_id()
            text = " ".join(t for t in (outcome.message, collection.prompt) if t)
            self._send({"command": "tts", "text": text, "playId": play_id})
            self._then(play_id, _bind(self._arm, collection), keep=True)
            return
        self._collection = None
        if isinstance(outcome, Collected):
            self.vars[collection.var] = outcome.digits
            self._note(
                f"The caller entered {collection.var} = {outcome.digits} on the keypad"
                f" ({spec.name})."
            )
        elif isinstance(outcome, Failed):
            detail = "no keys were pressed" if outcome.reason == "timeout" else "invalid entries"
            self._note(f"Collecting {collection.var} ({spec.name}) failed: {detail}.")
        self._start_turn()

    def _barge_in(self) -> None:
        command: dict[str, Any] = {"command": "interrupt", "graceful": True}
        fade = self.playbook.interruption.volume_fade_ms
        if fade:
            command["fadeOutMs"] = fade
        self._send(command)
        speaking = self._bargein.agent_speaking
        if speaking is not None:
            self._drop_after(speaking)
        if self._turn is not None and self._turn.play_id == speaking:
            self._cancel_turn()

    def _listening_for_bargein(self) -> bool:
        collection = self._collection
        return self._answered and (collection is None or collection.spec.interruptible)

    def _stop_agent(self) -> None:
        speaking = self._bargein.agent_speaking
        if speaking is not None:
            self._drop_after(speaking)
            self._send({"command": "interrupt"})

    # ------------------------------------------------------------------ commands out

    def _send(self, command: dict[str, Any]) -> None:
        if not self._ended:
            self._send_command(command)

    def _new_play_id(self) -> str:
        self._counter += 1
        play_id = f"{self.facts.session_id}-pb{self._counter}"
        self._ours.add(play_id)
        return play_id

    def _play(self, file: str, *, auto_hangup: bool = False) -> str:
        play_id = self._new_play_id()
        command: dict[str, Any] = {"command": "play", "url": file, "playId": play_id}
        if auto_hangup and self.playbook.hangup_headers:
            self._then(play_id, self._hangup_heard)
        elif auto_hangup:
            command["autoHangup"] = True
        else:
            self._with_wait_input(command)
        self._send(command)
        return play_id

    def _play_after(self, file: str, auto_hangup: bool) -> None:
        self._play(file, auto_hangup=auto_hangup)

    def _refer(self, to: str) -> None:
        self._dialled = to  # its leg's ringing or answer puts the caller through to them
        self._resume_at = None
        self._send({"command": "refer", "caller": "", "callee": to})

    def _hangup_now(self, initiator: str, reason: str | None = None) -> None:
        command: dict[str, Any] = {
            "command": "hangup",
            "reason": reason or initiator,
            "initiator": initiator,
        }
        headers = self.playbook.hangup_headers
        if headers:
            variables = self._template_vars()
            command["headers"] = {k: render(v, variables) for k, v in headers.items()}
        self._send(command)

    def _hangup_heard(self) -> None:
        """What ``autoHangup`` does, with the rendered ``sip.hangup_headers`` on the BYE."""
        self._hangup_now("system", reason="autohangup")

    def _then(self, play_id: str, action: Callable[[], None], *, keep: bool = False) -> None:
        self._after.setdefault(play_id, []).append(_Later(action, keep))

    def _drop_after(self, play_id: str) -> None:
        """``play_id`` was cut off: what was to follow it is dropped, except what must run
        anyway (arming a keypad collection, which must not wait for ever)."""
        kept = [later for later in self._after.pop(play_id, []) if later.keep]
        if kept:
            self._after[play_id] = kept

    def _followup(self) -> FollowUp | None:
        return self.scene.followup or self.playbook.followup

    def _with_wait_input(self, command: dict[str, Any], wait_ms: int | None = None) -> None:
        followup = self._followup()
        if wait_ms is None and followup is not None:
            wait_ms = followup.timeout_ms
        if wait_ms:
            command["waitInputTimeout"] = wait_ms

    # ------------------------------------------------------------------ prompts

    def _template_vars(self) -> dict[str, Any]:
        return template_variables(self.facts, self._variables, self.vars)

    def _render_scene(self) -> None:
        prompt = render(self.scene.prompt, self._template_vars())
        self.system_prompt = system_prompt(self.playbook, prompt)

    def _prompt(self) -> str:
        if self._summary:
            return f"{self.system_prompt}\n\nThe conversation so far, summarized:\n{self._summary}"
        return self.system_prompt

    def _features(self) -> tuple[str, ...]:
        llm = self.playbook.llm
        return llm.features if llm is not None else ()

    async def _roll_summary(self) -> None:
        llm = self.playbook.llm
        limit = llm.summary_limit if llm is not None else 20
        if self.llm is None or len(self.history) <= max(limit, RECENT_TURNS):
            return
        cut = len(self.history) - RECENT_TURNS
        while cut > 0 and self.history[cut].get("role") == "tool":
            cut -= 1  # a tool result stays with the assistant message that called it
        older = self.history[:cut]
        if self._summary:
            older = [{"role": "system", "content": self._summary}, *older]
        self._summary = await summarize("detailed", older, self.llm, self._option)
        del self.history[:cut]  # what was added meanwhile stays

    def _note(self, text: str) -> None:
        """Tell the LLM something that happened (a tool's answer, a keypad result)."""
        turn = self._turn
        if turn is not None and turn.reply is not None:
            turn.notes.append(text)  # after the reply that caused it, once it is complete
        else:
            self.history.append({"role": "system", "content": text})

    def _flush_notes(self, turn: _Turn) -> None:
        notes, turn.notes = turn.notes, []
        self.history.extend({"role": "system", "content": note} for note in notes)

    def _extracted(self, headers: Mapping[str, Any]) -> Mapping[str, str]:
        wanted = self.playbook.extract_headers
        if wanted is None:
            return {str(k): str(v) for k, v in headers.items()}
        lower = {str(k).lower(): str(v) for k, v in headers.items()}
        return {name: lower[name.lower()] for name in wanted if name.lower() in lower}

    # ------------------------------------------------------------------ I/O

    async def _lookup(self, request: Http | Rag) -> str:
        """What the LLM is told about an ``<http>`` request or a knowledge-base lookup."""
        if isinstance(request, Rag):
            return self._rag(request)
        return await self._http_call(request)

    def _rag(self, request: Rag) -> str:
        return f"No knowledge base is configured: nothing found for {request.query!r}."

    async def _http_call(self, request: Http) -> str:
        """Do an ``<http>`` request; what the LLM is told about its answer."""
        headers = dict(request.headers)
        if request.body is not None and not any(k.lower() == "content-type" for k in headers):
            stripped = request.body.lstrip()
            json_body = stripped.startswith(("{", "["))
            headers["Content-Type"] = "application/json" if json_body else "text/plain"
        try:
            response = await self._client().request(
                request.method,
                request.url,
                content=request.body,
                headers=headers,
                timeout=HTTP_TIMEOUT_S,
            )
        except httpx.HTTPError as exc:
            return f"HTTP {request.method} {request.url} failed: {exc or type(exc).__name__}"
        body = response.text
        if len(body) > HTTP_RESULT_CHARS:
            body = body[:HTTP_RESULT_CHARS] + " [cut]"
        return f"HTTP {request.method} {request.url} answered {response.status_code}:\n{body}"

    async def _posthook(self) -> None:
        hook = self.playbook.posthook
        assert hook is not None
        try:
            status = await send_posthook(
                hook,
                session_id=self.facts.session_id,
                history=list(self.history),
                timestamp_ms=self._clock(),
                http=self._client(),
                llm=self.llm,
                option=self._option,
            )
            log.info("posthook of %s: %s answered %d", self.facts.session_id, hook.url, status)
        except httpx.HTTPError as exc:
            log.warning("posthook of %s to %s failed: %s", self.facts.session_id, hook.url, exc)

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(follow_redirects=True)
        return self._http

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        start = self._start_task or asyncio.get_running_loop().create_task
        task = start(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("playbook task failed", exc_info=exc)
            self._error(f"playbook: {type(exc).__name__}: {exc}")

    def _error(self, message: str) -> None:
        log.warning("%s: %s", self.facts.session_id, message)
        if self._report is not None:
            with contextlib.suppress(Exception):
                self._report(message)

    def _time(self, event: Mapping[str, Any]) -> int:
        stamp = event.get("timestamp")
        if isinstance(stamp, int) and not isinstance(stamp, bool):
            return stamp
        return self._clock()


async def _deltas(stream: AsyncIterator[ChatDelta]) -> AsyncGenerator[ChatDelta, None]:
    """``stream``, closed (its HTTP response released) even when it is left early."""
    try:
        async for delta in stream:
            yield delta
    finally:
        close = getattr(stream, "aclose", None)
        if close is not None:
            await close()


def _refuses_tools(exc: ProviderError) -> bool:
    """True when the LLM server refused the request because of its ``tools``."""
    return exc.code is not None and exc.code >= 400 and "tool" in str(exc).lower()


def _realtime_done(action: Action) -> str:
    """A realtime function call's result once its action has been carried out."""
    if isinstance(action, Hangup):
        return "The call is ending now."
    if isinstance(action, Refer):
        return f"The caller is being transferred to {action.to}."
    return _done(action)


def _eou_type(eou: Any) -> str:
    """The front matter's ``eou.type`` (lower case; ``""`` when there is none)."""
    return str(eou.get("type") or "").lower() if isinstance(eou, Mapping) else ""


def _done(action: Action) -> str:
    """A tool call's result when its action has been carried out (or scheduled)."""
    if isinstance(action, Hangup):
        return "The call will end once your reply has been heard."
    if isinstance(action, Refer):
        return f"The caller will be transferred to {action.to} once your reply has been heard."
    if isinstance(action, Play):
        return f"{action.file} will be played once your reply has been heard."
    if isinstance(action, Goto):
        return f"Now in scene '{action.scene}'."
    if isinstance(action, SetVar):
        return f"{action.key} = {action.value}"
    if isinstance(action, Collect):
        return f"Collecting {action.var} from the keypad; you will be told the result."
    if isinstance(action, Message):
        return "The message has been sent."
    return "Done."


_WORDS = re.compile(r"[^\W_]+", re.UNICODE)


def _same_words(a: str, b: str) -> bool:
    """True when two transcripts have the same words (case and punctuation aside)."""
    return _WORDS.findall(a.lower()) == _WORDS.findall(b.lower())


def _at(items: list[ReplyItem], index: int) -> ReplyItem | None:
    return items[index] if index < len(items) else None


def _llm_option(playbook: Playbook) -> LlmOption:
    llm = playbook.llm
    if llm is None:
        return LlmOption()
    return LlmOption(
        provider=llm.provider, model=llm.model, base_url=llm.base_url, api_key=llm.api_key
    )


def _bind(fn: Callable[..., None], *args: Any) -> Callable[[], None]:
    def call() -> None:
        fn(*args)

    return call


def _rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")
