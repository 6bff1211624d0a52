// activecall web console: place a WebRTC or WebSocket call from the browser's microphone,
// watch the event stream, send play/tts/interrupt/hangup, hear the agent.
// Plain JS, no build step, no external resources.
//
// Hooks for automated browser tests:
//   window.activecallEvents  every event received (parsed JSON), in order
//   window.activecallPc      the RTCPeerConnection of a WebRTC call (null otherwise)
//   window.activecallWs      the call's WebSocket
//   #log                     the event log element; #status the call state
"use strict";

(() => {
  const RATE = 16000; // PCM16LE mono on /call (codec "pcm")
  const FRAME = 320; // samples per 20 ms at RATE
  const GATHER_TIMEOUT_MS = 5000;

  const $ = (id) => document.getElementById(id);
  window.activecallEvents = [];
  window.activecallPc = null;
  window.activecallWs = null;

  let call = null; // the live call: {mode, ws, pc, ctx, mic, nodes...}

  // ---------------------------------------------------------------- the log

  function clock() {
    const d = new Date();
    const pad = (n, w = 2) => String(n).padStart(w, "0");
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  }

  function shorten(value) {
    // SDP bodies (and any long string) become their length, wherever they are nested.
    if (typeof value === "string") return value.length > 200 ? `<${value.length} chars>` : value;
    if (Array.isArray(value)) return value.map(shorten);
    if (value && typeof value === "object") {
      const out = {};
      for (const [key, inner] of Object.entries(value)) {
        out[key] = (key === "sdp" || key === "offer") && typeof inner === "string" && inner
          ? `<sdp, ${inner.length} chars>` : shorten(inner);
      }
      return out;
    }
    return value;
  }

  function summary(obj, skip) {
    // One readable line: key=value pairs, nested objects as compact JSON.
    const parts = [];
    for (const [key, value] of Object.entries(shorten(obj))) {
      if (key === skip) continue;
      parts.push(`${key}=${typeof value === "string" ? value : JSON.stringify(value)}`);
    }
    return parts.join("  ");
  }

  // kind: "event" (from the server), "command" (to it), "info" or "error" (the console's own);
  // an error event is kind "error" with direction "←".
  function log(kind, name, detail, direction) {
    const box = $("log");
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 20;
    const line = document.createElement("div");
    line.className = `entry ${kind}`;
    const parts = [
      ["time", clock()],
      ["dir", direction || (kind === "event" ? "←" : kind === "command" ? "→" : "·")],
      ["name", name],
      ["detail", (detail || "").trim()],
    ];
    for (const [cls, text] of parts) {
      const span = document.createElement("span");
      span.className = cls;
      span.textContent = text;
      line.append(span);
    }
    box.append(line);
    if (atBottom) box.scrollTop = box.scrollHeight;
  }

  function setStatus(state) {
    const el = $("status");
    el.textContent = state;
    el.className = `status ${state}`;
  }

  // ---------------------------------------------------------------- the server

  function serverUrl() {
    const given = $("server").value.trim();
    const base = given || (location.protocol.startsWith("http") ? location.origin : "http://127.0.0.1:8080");
    const url = new URL(base);
    return { http: url.origin, ws: `${url.protocol === "https:" ? "wss:" : "ws:"}//${url.host}` };
  }

  function token() {
    return $("token").value.trim();
  }

  async function iceServers(http) {
    // GET /iceservers answers snake_case entries; the browser wants urls/username/credential.
    const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
    try {
      const response = await fetch(`${http}/iceservers`, { headers });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const servers = await response.json();
      log("info", "iceservers", ` ${JSON.stringify(servers)}`);
      return servers.map((s) => {
        const entry = { urls: s.urls };
        if (s.username) entry.username = s.username;
        if (s.credential) entry.credential = s.credential;
        return entry;
      });
    } catch (err) {
      log("error", "iceservers", ` ${err.message}: calling with host candidates only`);
      return [];
    }
  }

  function sessionId() {
    const uuid = window.crypto && crypto.randomUUID
      ? crypto.randomUUID()
      : Array.from({ length: 4 }, () => Math.random().toString(16).slice(2, 10)).join("-");
    return `s.${uuid}`;
  }

  // ---------------------------------------------------------------- audio worklets

  // Mic capture: downsample the context rate to 16 kHz (box filter over each output sample's
  // input span), post 320-sample Int16 frames. Player: 16 kHz Int16 frames in, linear
  // interpolation up to the context rate, at most 1 s queued (older audio dropped).
  const WORKLETS = `
    class Capture extends AudioWorkletProcessor {
      constructor() {
        super();
        this.step = sampleRate / ${RATE};
        this.pos = 0; this.acc = 0; this.count = 0;
        this.frame = new Int16Array(${FRAME}); this.n = 0;
      }
      process(inputs) {
        const input = inputs[0];
        if (!input || !input[0]) return true;
        const ch = input[0];
        for (let i = 0; i < ch.length; i++) {
          this.acc += ch[i]; this.count++; this.pos += 1;
          if (this.pos >= this.step) {
            this.pos -= this.step;
            const v = Math.max(-1, Math.min(1, this.acc / this.count));
            this.acc = 0; this.count = 0;
            this.frame[this.n++] = v < 0 ? v * 32768 : v * 32767;
            if (this.n === ${FRAME}) {
              this.port.postMessage(this.frame.buffer, [this.frame.buffer]);
              this.frame = new Int16Array(${FRAME}); this.n = 0;
            }
          }
        }
        return true;
      }
    }
    class Player extends AudioWorkletProcessor {
      constructor() {
        super();
        this.queue = []; this.queued = 0; this.cur = null; this.i = 0;
        this.step = ${RATE} / sampleRate; this.t = 0; this.a = 0; this.b = 0;
        this.port.onmessage = (e) => {
          if (e.data === "clear") { this.queue = []; this.queued = 0; this.cur = null; return; }
          const pcm = new Int16Array(e.data);
          this.queue.push(pcm); this.queued += pcm.length;
          while (this.queued > ${RATE} && this.queue.length > 1) this.queued -= this.queue.shift().length;
        };
      }
      next() {
        while (!this.cur || this.i >= this.cur.length) {
          this.cur = this.queue.shift(); this.i = 0;
          if (!this.cur) return 0;
          this.queued -= this.cur.length;
        }
        return this.cur[this.i++] / 32768;
      }
      process(inputs, outputs) {
        const out = outputs[0];
        const ch = out[0];
        for (let k = 0; k < ch.length; k++) {
          this.t += this.step;
          while (this.t >= 1) { this.t -= 1; this.a = this.b; this.b = this.next(); }
          ch[k] = this.a + (this.b - this.a) * this.t;
        }
        for (let c = 1; c < out.length; c++) out[c].set(ch);
        return true;
      }
    }
    registerProcessor("activecall-capture", Capture);
    registerProcessor("activecall-player", Player);
  `;

  async function loadWorklets(ctx) {
    const url = URL.createObjectURL(new Blob([WORKLETS], { type: "text/javascript" }));
    try {
      await ctx.audioWorklet.addModule(url);
    } finally {
      URL.revokeObjectURL(url);
    }
  }

  // ---------------------------------------------------------------- level meters

  function meter(analyser, barId, dbId) {
    const samples = new Float32Array(analyser.fftSize);
    return () => {
      analyser.getFloatTimeDomainData(samples);
      let sum = 0;
      for (const s of samples) sum += s * s;
      const rms = Math.sqrt(sum / samples.length);
      const db = rms > 0 ? 20 * Math.log10(rms) : -Infinity;
      const width = Math.max(0, Math.min(100, ((db + 60) / 60) * 100)); // -60..0 dBFS
      $(barId).style.width = `${width}%`;
      $(dbId).textContent = Number.isFinite(db) ? `${db.toFixed(0)} dB` : "–∞ dB";
    };
  }

  function startMeters() {
    const tick = () => {
      if (!call) return;
      for (const update of call.meters) update();
      call.frame = requestAnimationFrame(tick);
    };
    call.frame = requestAnimationFrame(tick);
  }

  function resetMeters() {
    for (const id of ["meter-mic", "meter-agent"]) $(id).style.width = "0";
    for (const id of ["meter-mic-db", "meter-agent-db"]) $(id).textContent = "–∞ dB";
  }

  function analyserFor(ctx, node) {
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 1024;
    node.connect(analyser);
    return analyser;
  }

  // ---------------------------------------------------------------- the call

  function inviteOptions() {
    const text = $("options").value.trim();
    if (!text) return {};
    const option = JSON.parse(text);
    if (option === null || typeof option !== "object" || Array.isArray(option)) {
      throw new Error("invite options must be a JSON object");
    }
    return option;
  }

  function send(command) {
    if (!call || !call.ws || call.ws.readyState !== WebSocket.OPEN) {
      log("error", command.command, " not sent: the call is not connected");
      return;
    }
    call.ws.send(JSON.stringify(command));
    log("command", command.command, ` ${summary(command, "command")}`);
  }

  function waitForGathering(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        if (pc.iceGatheringState !== "complete") return;
        pc.removeEventListener("icegatheringstatechange", done);
        resolve();
      };
      pc.addEventListener("icegatheringstatechange", done);
      // A STUN server that never answers must not stall the call: send what we have.
      setTimeout(resolve, GATHER_TIMEOUT_MS);
    });
  }

  async function startCall() {
    const mode = document.querySelector('input[name="mode"]:checked').value;
    let option;
    try {
      option = inviteOptions();
    } catch (err) {
      log("error", "options", ` ${err.message}`);
      return;
    }
    const { http, ws: wsBase } = serverUrl();
    const id = sessionId();
    $("session-id").textContent = id;
    setBusy(true);
    setStatus("connecting");

    const ctx = new AudioContext();
    call = { mode, id, ctx, ws: null, pc: null, mic: null, meters: [], frame: 0, player: null };
    try {
      await ctx.resume();
      call.mic = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      });
      const micSource = ctx.createMediaStreamSource(call.mic);
      call.meters.push(meter(analyserFor(ctx, micSource), "meter-mic", "meter-mic-db"));
      startMeters();

      const query = new URLSearchParams({ id });
      if (token()) query.set("token", token());
      if (mode === "webrtc") {
        await startWebRtc(ctx, http, option);
        openSocket(`${wsBase}/call/webrtc?${query}`, () => {
          send({ command: "invite", option: { ...option, offer: call.pc.localDescription.sdp } });
        });
      } else {
        await startPcm(ctx, micSource);
        openSocket(`${wsBase}/call?${query}`, () => {
          send({ command: "invite", option: { codec: "pcm", ...option } });
        });
      }
    } catch (err) {
      log("error", "call", ` ${err.name || "Error"}: ${err.message}`);
      setStatus("failed");
      endCall();
    }
  }

  async function startWebRtc(ctx, http, option) {
    const pc = new RTCPeerConnection({ iceServers: await iceServers(http) });
    call.pc = pc;
    window.activecallPc = pc;
    for (const track of call.mic.getAudioTracks()) pc.addTrack(track, call.mic);
    pc.addEventListener("track", (e) => {
      const stream = e.streams[0] || new MediaStream([e.track]);
      // Chrome only feeds a remote stream into Web Audio while a media element plays it.
      $("agent-audio").srcObject = stream;
      const source = ctx.createMediaStreamSource(stream);
      call.meters.push(meter(analyserFor(ctx, source), "meter-agent", "meter-agent-db"));
    });
    pc.addEventListener("connectionstatechange", () => {
      log("info", "webrtc", ` connection ${pc.connectionState}`);
      if (pc.connectionState === "connected") setStatus("connected");
      if (pc.connectionState === "failed") setStatus("failed");
    });
    await pc.setLocalDescription(await pc.createOffer());
    await waitForGathering(pc);
    log("info", "webrtc", ` offer ready (${pc.localDescription.sdp.length} chars, ICE ${pc.iceGatheringState})`);
  }

  async function startPcm(ctx, micSource) {
    await loadWorklets(ctx);
    const capture = new AudioWorkletNode(ctx, "activecall-capture", { numberOfOutputs: 0 });
    capture.port.onmessage = (e) => {
      if (call && call.answered && call.ws && call.ws.readyState === WebSocket.OPEN) {
        call.ws.send(e.data);
      }
    };
    micSource.connect(capture);
    const player = new AudioWorkletNode(ctx, "activecall-player", { outputChannelCount: [1] });
    player.connect(ctx.destination);
    call.player = player;
    call.meters.push(meter(analyserFor(ctx, player), "meter-agent", "meter-agent-db"));
  }

  function openSocket(url, onOpen) {
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    call.ws = ws;
    window.activecallWs = ws;
    ws.addEventListener("open", () => {
      log("info", "websocket", ` open ${url.replace(/token=[^&]*/, "token=…")}`);
      setCommandsEnabled(true);
      onOpen();
    });
    ws.addEventListener("message", (e) => onMessage(e.data));
    ws.addEventListener("error", () => log("error", "websocket", " error (see the browser console)"));
    ws.addEventListener("close", (e) => {
      log("info", "websocket", ` closed ${e.code}${e.reason ? ` ${e.reason}` : ""}`);
      if (call && call.ws === ws) {
        if ($("status").textContent !== "failed") setStatus("idle");
        endCall();
      }
    });
  }

  function onMessage(data) {
    if (typeof data !== "string") {
      if (call && call.player) call.player.port.postMessage(data, [data]);
      return;
    }
    let event;
    try {
      event = JSON.parse(data);
    } catch (err) {
      log("error", "message", ` not JSON: ${data.slice(0, 200)}`);
      return;
    }
    window.activecallEvents.push(event);
    const name = event.event || "message";
    log(name === "error" ? "error" : "event", name, summary(event, "event"), "←");
    if (!call) return;
    if (name === "answer") {
      call.answered = true;
      if (call.pc && event.sdp) {
        call.pc.setRemoteDescription({ type: "answer", sdp: event.sdp }).catch((err) => {
          log("error", "webrtc", ` cannot apply the answer: ${err.message}`);
          setStatus("failed");
        });
      } else if (!call.pc) {
        setStatus("connected");
      }
    } else if (name === "interruption" && call.player) {
      call.player.port.postMessage("clear");
    }
  }

  function endCall() {
    if (!call) return;
    const ending = call;
    call = null;
    cancelAnimationFrame(ending.frame);
    if (ending.ws && ending.ws.readyState <= WebSocket.OPEN) ending.ws.close(1000, "hangup");
    if (ending.pc) ending.pc.close();
    if (ending.mic) for (const track of ending.mic.getTracks()) track.stop();
    $("agent-audio").srcObject = null;
    ending.ctx.close().catch(() => {});
    resetMeters();
    setBusy(false);
    setCommandsEnabled(false);
  }

  // ---------------------------------------------------------------- the page

  function setBusy(busy) {
    $("call").disabled = busy || !micAllowed();
    $("hangup").disabled = !busy;
    for (const input of document.querySelectorAll('input[name="mode"]')) input.disabled = busy;
  }

  function setCommandsEnabled(enabled) {
    for (const el of document.querySelectorAll("#commands button")) el.disabled = !enabled;
  }

  function micAllowed() {
    return window.isSecureContext && !!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia);
  }

  function explainInsecure() {
    const port = location.port ? `:${location.port}` : "";
    const banner = $("insecure");
    banner.hidden = false;
    banner.textContent = window.isSecureContext
      ? "This browser offers no microphone API (navigator.mediaDevices.getUserMedia), so it cannot place a call."
      : `This browser refuses the microphone here: ${location.origin || "this page"} is not a secure context. ` +
        `Open http://127.0.0.1${port}/ (or http://localhost${port}/) on the machine running the gateway, ` +
        "or serve the gateway over https.";
    log("error", "microphone", ` ${banner.textContent}`);
  }

  function init() {
    if (location.protocol.startsWith("http")) $("server").value = location.origin;
    $("setup").addEventListener("submit", (e) => {
      e.preventDefault();
      if (!call && micAllowed()) startCall();
    });
    $("hangup").addEventListener("click", () => {
      log("info", "call", " hung up locally");
      setStatus("idle");
      endCall();
    });
    $("form-play").addEventListener("submit", (e) => {
      e.preventDefault();
      send({ command: "play", url: $("play-url").value.trim() });
    });
    $("form-tts").addEventListener("submit", (e) => {
      e.preventDefault();
      send({ command: "tts", text: $("tts-text").value });
    });
    $("interrupt").addEventListener("click", () => send({ command: "interrupt" }));
    $("send-hangup").addEventListener("click", () => send({ command: "hangup" }));
    $("clear-log").addEventListener("click", () => $("log").replaceChildren());
    if (!micAllowed()) explainInsecure();
    setBusy(false);
    setCommandsEnabled(false);
    log("info", "console", " ready: choose a transport and press Call");
  }

  init();
})();
