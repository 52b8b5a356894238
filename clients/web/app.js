// voxgate browser client: talks to /v1/realtime with the OpenAI Realtime (GA) protocol.
//
// Microphone -> AudioWorklet (resampled to 24 kHz pcm16, 20 ms frames) -> base64
// `input_audio_buffer.append` every APPEND_MS. The server's VAD finds the turns and answers;
// the answer's audio goes through the jitter buffer in audio-worklet.js, its transcript and
// the user's are shown as they arrive.
//
// Interruptions: speech_started while the answer plays drops the audio the page still holds
// (the server has cancelled the response: interrupt_response), or pauses it while the server
// judges the interruption (`min_interruption_words`); the Interrupt button drops it and
// cancels a response still being generated. Then the page tells the server how much of the
// answer was heard (`conversation.item.truncate`).
//
// Authentication: with an API key configured, the server wants a client secret (`ek_...`),
// minted by the app's own backend with `POST /v1/realtime/client_secrets` and handed to this
// page as `?token=...`, typed into the field, or fetched before each connection from
// `?token_url=PATH` (a POST to the app's backend answering OpenAI's `{"value": ...}`). The
// page sends it as the WebSocket subprotocol `openai-insecure-api-key.<secret>` (a browser
// cannot set headers on a WebSocket). Without an API key the page connects without one.
//
// Turn latency, as measured here: the arrival of the answer's first audio delta minus the
// moment the page received the last voiced 20 ms microphone frame before the server said the
// user stopped (`input_audio_buffer.speech_stopped`). A frame is voiced when its level is
// 12 dB above the tracked noise floor and above -55 dBFS. If the page heard no voiced frame
// (the server's VAD heard speech this detector did not), the end of speech is taken as the
// arrival of speech_stopped minus the session's silence_duration_ms. The server's own figure
// (`response.done`'s `x_voxgate.timings_ms.turn_latency`, from the arrival of the last voiced
// audio to the send of the first answer audio) is shown beside it; the page's is larger by
// the transport both ways and the append batching. "plays at" adds the jitter buffer's
// prebuffering: when the first answer audio started to play.
//
// Each answer carries a waterfall of that turn: the server's stages (`timings_ms`, which sum to
// its turn_latency), then what the page measured beyond it: `network` (the page's turn latency
// minus the server's) and `jitter_buffer` (first audio received -> first audio played). The
// p50 of the page's turn latency over the conversation is shown with the legend. The level
// meter shows the microphone's RMS as the page captures it; the VAD indicator beside it shows
// what the server's VAD hears (`speech_started` / `speech_stopped`).
//
// A message can also be typed: it goes as a user message (`conversation.item.create`) and the
// page asks for its answer (`response.create`). On a server that captures answers for
// feedback, feedback.js adds what is needed to rate them: a notice, thumbs on each answer, and
// a view that compares two candidate answers.

import { Feedback } from "/web/feedback.js";

const WIRE_RATE = 24000;
const FRAME_MS = 20;
const APPEND_MS = 40;
const MAX_EARLY_MS = 2000; // microphone audio held while the socket opens
const VOICED_ABOVE_FLOOR_DB = 12;
const VOICED_MIN_DB = -55;
const FLOOR_RISE_DB_PER_S = 1.5;
const MAX_KEPT = 200; // transcripts, turns and errors kept in window.voxgateStats
const METER_FLOOR_DB = -70; // the level meter's left end; its right end is 0 dBFS

// A turn's stages, in the order they happen. The first five are the server's
// (streaming/timings.py); lm_first_token falls inside lm_first_sentence, so it is a mark in that
// stage, not a stage of its own.
const STAGES = [
  {
    name: "end_of_turn_wait",
    label: "end-of-turn wait",
    about: "the silence the server's VAD waits for",
  },
  { name: "asr", label: "speech recognition", about: "transcribing the turn" },
  {
    name: "lm_first_sentence",
    label: "LM first sentence",
    about: "the language model's first speakable clause",
  },
  { name: "tts_first_chunk", label: "TTS first chunk", about: "synthesising the first audio" },
  {
    name: "server_overhead",
    label: "server overhead",
    about: "queues, scheduling, encoding, the socket",
  },
  {
    name: "network",
    label: "network",
    about: "the page's turn latency minus the server's: transport both ways, append batching",
  },
  {
    name: "jitter_buffer",
    label: "jitter buffer",
    about: "first audio received to first audio played",
  },
];

const $ = (id) => document.getElementById(id);

const stats = {
  state: "disconnected",
  authMode: "unknown", // "none": the server has no API key; "client_secret": it wants one
  sessionId: null,
  micFrames: 0,
  voicedFrames: 0,
  appendsSent: 0,
  audioSecondsSent: 0,
  audioDeltas: 0,
  audioSecondsReceived: 0,
  audioSecondsPlayed: 0,
  bufferedSeconds: 0,
  underruns: 0,
  flushes: 0, // interruptions that dropped answer audio not yet heard
  truncations: [], // conversation.item.truncated: {itemId, audioEndMs}
  userTranscripts: [],
  assistantTranscripts: [],
  // {responseId, status, latencyMs, latencySource, serverLatencyMs, playbackStartMs, timingsMs}
  turns: [],
  typedMessages: [],
  latencyP50Ms: null, // of the page's turn latency, over the turns above
  serverLatencyP50Ms: null,
  inputLevelDb: null, // the microphone's last 20 ms frame, dBFS
  serverVad: { state: "off", speechStarted: 0, speechStopped: 0 },
  errors: [],
};
window.voxgateStats = stats;

function keep(list, value) {
  list.push(value);
  if (list.length > MAX_KEPT) list.shift();
}

// --- the page's own end-of-speech detector ------------------------------------------------

class SpeechEnergy {
  constructor() {
    this.floorDb = -100;
    this.lastVoicedAt = null;
  }

  // The floor follows the quietest frames at once and rises slowly, so it tracks room noise
  // and not speech.
  update(rmsDb, at) {
    const db = Math.max(rmsDb, -100);
    this.floorDb = db < this.floorDb ? db : this.floorDb + (FLOOR_RISE_DB_PER_S * FRAME_MS) / 1000;
    const voiced = db > Math.max(this.floorDb + VOICED_ABOVE_FLOOR_DB, VOICED_MIN_DB);
    if (voiced) this.lastVoicedAt = at;
    return { voiced, db };
  }
}

// --- small helpers ----------------------------------------------------------------------------

function base64FromBytes(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

function floatsFromBase64Pcm16(data) {
  const binary = atob(data);
  const samples = new Float32Array(binary.length >> 1);
  for (let i = 0; i < samples.length; i++) {
    const lo = binary.charCodeAt(2 * i);
    const hi = binary.charCodeAt(2 * i + 1);
    samples[i] = (((hi << 24) >> 16) | lo) / 32768;
  }
  return samples;
}

function setStatus(state, text) {
  stats.state = state;
  const status = $("status");
  status.dataset.state = state;
  status.textContent = text || state;
}

function median(values) {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function formatMs(ms) {
  return Math.abs(ms) < 10 && ms !== 0 ? ms.toFixed(1) : String(Math.round(ms));
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

// --- authentication -----------------------------------------------------------------------------

const params = new URLSearchParams(location.search);
const tokenUrl = params.get("token_url");
if (params.has("token")) {
  $("token").value = params.get("token");
  // Keep the secret out of the address bar, history and bookmarks.
  params.delete("token");
  const query = params.toString();
  history.replaceState(null, "", location.pathname + (query ? `?${query}` : "") + location.hash);
}

async function clientSecret() {
  if (tokenUrl) {
    const reply = await fetch(tokenUrl, { method: "POST", credentials: "same-origin" });
    if (!reply.ok) throw new Error(`${tokenUrl} answered ${reply.status}`);
    $("token").value = (await reply.json()).value;
  }
  return $("token").value.trim() || null;
}

async function loadVoices(secret) {
  const headers = secret ? { Authorization: `Bearer ${secret}` } : {};
  const reply = await fetch("/v1/audio/voices", { headers });
  if (reply.status === 401) throw new Error("the client secret was refused (wrong or expired)");
  if (!reply.ok) throw new Error(`/v1/audio/voices answered ${reply.status}`);
  const select = $("voice");
  const current = select.value;
  select.replaceChildren(
    ...(await reply.json()).data.map((v) => new Option(`${v.name} (${v.language})`, v.id)),
  );
  if (current) select.value = current;
}

async function probeServer() {
  try {
    const reply = await fetch("/web/config.json");
    if (!reply.ok) throw new Error(`/web/config.json answered ${reply.status}`);
    const secret = $("token").value.trim() || null;
    if ((await reply.json()).client_secret_required) {
      stats.authMode = "client_secret";
      $("auth-note").textContent =
        "This server needs a client secret. Your app's backend mints one with its API key " +
        "(POST /v1/realtime/client_secrets) and passes it to this page (?token=, ?token_url=, " +
        "or paste it here). The API key itself never reaches the browser.";
      if (secret) await loadVoices(secret);
    } else {
      stats.authMode = "none";
      $("auth-note").textContent =
        "This server has no API key: the page connects without a client secret.";
      $("token-row").hidden = !secret && !tokenUrl; // a secret may still carry a session config
      await loadVoices(secret);
    }
  } catch (e) {
    showError(e.message);
  }
}

// --- the conversation view ------------------------------------------------------------------------

const bubbles = new Map(); // item id -> element

function bubble(itemId, role) {
  let el = bubbles.get(itemId);
  if (!el) {
    el = document.createElement("li");
    el.className = `turn ${role}`;
    el.dataset.itemId = itemId;
    el.dataset.role = role;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = role === "user" ? "you" : "assistant";
    const text = document.createElement("span");
    text.className = "text";
    const meta = document.createElement("span");
    meta.className = "meta";
    el.append(who, text, meta);
    $("turns").append(el);
    bubbles.set(itemId, el);
    if (bubbles.size > MAX_KEPT) {
      const [oldest] = bubbles.keys();
      bubbles.get(oldest).remove();
      bubbles.delete(oldest);
    }
  }
  el.scrollIntoView({ block: "end" });
  return el;
}

function setText(el, text, pending = false) {
  el.querySelector(".text").textContent = text;
  el.classList.toggle("pending", pending);
}

// --- the connection -------------------------------------------------------------------------------

let conn = null;

class Connection {
  constructor() {
    this.ws = null;
    this.audio = null;
    this.capture = null;
    this.playback = null;
    this.stream = null;
    this.pending = [];
    this.pendingSamples = 0;
    this.session = null;
    this.energy = new SpeechEnergy();
    this.turnEnd = null; // {at, source} of the user's last finished turn, for the next response
    this.response = null; // the latest response: {id, done, record, itemId}
    this.records = new Map(); // response id -> the turn record in stats.turns
    this.playingStream = null; // the response whose audio the jitter buffer holds or plays
    this.held = null; // the response paused while the server judges an interruption
  }

  async open() {
    setStatus("connecting", "connecting…");
    showError("");
    // Created in the click handler, so the browser lets it play.
    this.audio = new AudioContext();
    await this.audio.audioWorklet.addModule("/web/audio-worklet.js");
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    const secret = await clientSecret();
    if (stats.authMode === "client_secret" && !secret) {
      throw new Error("this server needs a client secret (see above)");
    }
    if (secret) await loadVoices(secret).catch(() => {});

    this.playback = new AudioWorkletNode(this.audio, "voxgate-playback", {
      numberOfInputs: 0,
      outputChannelCount: [1],
    });
    this.playback.port.onmessage = (event) => this.onPlayback(event.data);
    this.playback.connect(this.audio.destination);
    this.capture = new AudioWorkletNode(this.audio, "voxgate-capture", { numberOfOutputs: 0 });
    this.capture.port.onmessage = (event) => this.onFrame(event.data);
    this.audio.createMediaStreamSource(this.stream).connect(this.capture);

    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/realtime`;
    const protocols = ["realtime"];
    if (secret) protocols.push(`openai-insecure-api-key.${secret}`);
    this.ws = new WebSocket(url, protocols);
    this.ws.onmessage = (event) => this.onEvent(JSON.parse(event.data));
    this.ws.onclose = (event) => this.closed(event);
    await this.audio.resume();
  }

  // Whether the event went out (false: not connected).
  send(event) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(event));
    return true;
  }

  close() {
    if (this.ws) this.ws.close(1000);
    this.teardown();
  }

  teardown() {
    if (this.stream) this.stream.getTracks().forEach((t) => t.stop());
    if (this.audio) this.audio.close();
    this.stream = null;
    this.audio = null;
    showLevel(null, false);
    showServerVad("off");
  }

  closed(event) {
    this.teardown();
    setStatus("closed", event.code === 1000 ? "disconnected" : `closed (${event.code})`);
    if (event.code !== 1000 && event.reason) showError(`${event.code}: ${event.reason}`);
    $("connect").textContent = "Connect";
    $("interrupt").disabled = true;
    $("apply").disabled = true;
    $("message").disabled = true;
    $("send").disabled = true;
    feedback.detach();
    conn = null;
  }

  // --- microphone -> server

  onFrame({ pcm, rmsDb }) {
    const at = performance.now();
    stats.micFrames += 1;
    const { voiced, db } = this.energy.update(rmsDb, at);
    if (voiced) stats.voicedFrames += 1;
    showLevel(db, voiced);
    this.pending.push(new Uint8Array(pcm));
    this.pendingSamples += pcm.byteLength / 2;
    if (this.ws?.readyState !== WebSocket.OPEN) {
      // Speech from the click on: keep the last MAX_EARLY_MS until the socket is open.
      while (this.pendingSamples * 1000 > MAX_EARLY_MS * WIRE_RATE) {
        this.pendingSamples -= this.pending.shift().length / 2;
      }
      return;
    }
    if (this.pendingSamples * 1000 >= APPEND_MS * WIRE_RATE) this.flushAppend();
  }

  flushAppend() {
    const bytes = new Uint8Array(this.pendingSamples * 2);
    let offset = 0;
    for (const piece of this.pending) {
      bytes.set(piece, offset);
      offset += piece.length;
    }
    this.send({ type: "input_audio_buffer.append", audio: base64FromBytes(bytes) });
    stats.appendsSent += 1;
    stats.audioSecondsSent += this.pendingSamples / WIRE_RATE;
    this.pending = [];
    this.pendingSamples = 0;
  }

  // --- playback

  onPlayback(message) {
    switch (message.type) {
      case "stats":
        stats.bufferedSeconds = message.bufferedSeconds;
        stats.audioSecondsPlayed = message.playedSeconds;
        stats.underruns = message.underruns;
        renderStats();
        break;
      case "started": {
        const record = this.records.get(message.stream);
        if (record && record.turnEndAt != null) {
          record.playbackStartMs = Math.round(performance.now() - record.turnEndAt);
          showLatency(record);
        }
        break;
      }
      case "drained":
        if (message.stream === this.playingStream) this.playingStream = null;
        break;
      case "flushed":
        this.onFlushed(message);
        break;
    }
  }

  // Stop the answer now: the audio the page holds is dropped (it can be seconds ahead of
  // what was heard), and from the button a response still being generated is cancelled. By
  // voice, the server cancels it itself (interrupt_response). What was heard is then told to
  // the server (`conversation.item.truncate`, when the flush reports it), so the conversation
  // keeps only the words the user actually heard.
  interrupt(why) {
    this.playback?.port.postMessage({ type: "flush" });
    this.playingStream = null;
    this.held = null;
    const active = this.response;
    if (why === "button" && active && !active.done) this.send({ type: "response.cancel" });
  }

  onFlushed({ seconds, stream, heardSeconds }) {
    if (!(seconds > 0)) return; // nothing unheard was dropped
    stats.flushes += 1;
    const record = this.records.get(stream);
    if (!record?.itemId) return;
    bubbles.get(record.itemId)?.classList.add("interrupted");
    const heardMs = Math.floor(1000 * Math.min(heardSeconds, record.receivedSeconds));
    this.send({
      type: "conversation.item.truncate",
      item_id: record.itemId,
      content_index: 0,
      audio_end_ms: heardMs,
    });
  }

  // speech_started while the answer plays. With `min_interruption_words` the server holds the
  // answer until the user's words are known (a backchannel like "mm-hm" is no interruption):
  // the page pauses, then goes on or drops it as the server decides (response.done).
  onSpeechStarted() {
    const td = this.session?.audio?.input?.turn_detection;
    if (!td || td.interrupt_response === false || this.playingStream === null) return;
    const active = this.response;
    if (td.x_voxgate?.min_interruption_words > 0 && active && !active.done) {
      this.held = active.id;
      this.playback?.port.postMessage({ type: "pause" });
    } else {
      this.interrupt("voice");
    }
  }

  release(responseId, completed) {
    if (this.held !== responseId) return;
    this.held = null;
    if (completed) this.playback?.port.postMessage({ type: "resume" });
    else this.interrupt("voice");
  }

  // --- server events

  onEvent(event) {
    const now = performance.now();
    if (feedback.onEvent(event)) return; // a candidate answer's, or feedback's own
    switch (event.type) {
      case "session.created":
      case "session.updated":
        this.session = event.session;
        stats.sessionId = event.session.id;
        showSession(event.session);
        if (!event.session.audio?.input?.turn_detection) showServerVad("off");
        else if (stats.serverVad.state === "off") showServerVad("silence");
        if (event.type === "session.created") {
          setStatus("connected", "connected: speak");
          $("interrupt").disabled = false;
          $("apply").disabled = false;
          $("message").disabled = false;
          $("send").disabled = false;
          feedback.attach(this);
        }
        feedback.configure(event.session);
        break;
      case "conversation.item.added": {
        // A typed message (spoken ones are shown from their transcription).
        const part = event.item.role === "user" ? event.item.content?.[0] : null;
        if (part?.type === "input_text") {
          setText(bubble(event.item.id, "user"), part.text);
          keep(stats.typedMessages, part.text);
        }
        break;
      }
      case "input_audio_buffer.speech_started": {
        stats.serverVad.speechStarted += 1;
        showServerVad("speech");
        setText(bubble(event.item_id, "user"), "…", true);
        this.onSpeechStarted();
        break;
      }
      case "input_audio_buffer.speech_stopped": {
        stats.serverVad.speechStopped += 1;
        showServerVad("silence");
        const heard = this.energy.lastVoicedAt;
        const silenceMs = this.session?.audio?.input?.turn_detection?.silence_duration_ms ?? 0;
        // Only a voiced frame of this turn counts (not one from a turn before it).
        this.turnEnd =
          heard != null && now - heard < silenceMs + 2000
            ? { at: heard, source: "page" }
            : { at: now - silenceMs, source: "speech_stopped" };
        break;
      }
      case "conversation.item.input_audio_transcription.completed": {
        const text = event.transcript.trim();
        setText(bubble(event.item_id, "user"), text || "(no words)");
        if (text) keep(stats.userTranscripts, text);
        break;
      }
      case "conversation.item.input_audio_transcription.failed":
        setText(bubble(event.item_id, "user"), "(transcription failed)");
        break;
      case "response.created": {
        const record = {
          responseId: event.response.id,
          status: "in_progress",
          latencyMs: null,
          latencySource: this.turnEnd?.source ?? null,
          serverLatencyMs: null,
          playbackStartMs: null,
          turnEndAt: this.turnEnd?.at ?? null,
          receivedSeconds: 0,
          timingsMs: null, // response.done's x_voxgate.timings_ms
        };
        this.turnEnd = null;
        this.response = { id: event.response.id, done: false, record, itemId: null };
        this.records.set(record.responseId, record);
        if (this.records.size > MAX_KEPT) this.records.delete(this.records.keys().next().value);
        keep(stats.turns, record);
        break;
      }
      case "response.output_item.added":
        // Only spoken or written answers are shown (function calls are the app's business).
        if (event.item.type === "message" && event.response_id === this.response?.id) {
          this.response.itemId = event.item.id;
          setText(bubble(event.item.id, "assistant"), "…", true);
        }
        break;
      case "response.output_audio.delta": {
        const samples = floatsFromBase64Pcm16(event.delta);
        stats.audioDeltas += 1;
        stats.audioSecondsReceived += samples.length / WIRE_RATE;
        renderStats();
        this.release(event.response_id, true); // a held answer that goes on was no interruption
        const record = this.records.get(event.response_id);
        if (record) record.receivedSeconds += samples.length / WIRE_RATE;
        if (record && record.latencyMs == null && record.turnEndAt != null) {
          record.latencyMs = Math.round(now - record.turnEndAt);
          showLatency(record, event.item_id);
        }
        this.playingStream = event.response_id;
        this.playback?.port.postMessage(
          { type: "audio", stream: event.response_id, samples: samples.buffer },
          [samples.buffer],
        );
        break;
      }
      case "response.output_audio.done":
        this.playback?.port.postMessage({ type: "end", stream: event.response_id });
        break;
      case "response.output_audio_transcript.delta":
      case "response.output_text.delta": {
        const el = bubble(event.item_id, "assistant");
        const text = el.classList.contains("pending") ? "" : el.querySelector(".text").textContent;
        setText(el, text + event.delta, true);
        break;
      }
      case "response.output_audio_transcript.done":
      case "response.output_text.done": {
        const text = (event.transcript ?? event.text ?? "").trim();
        setText(bubble(event.item_id, "assistant"), text || "(nothing said)");
        if (text) keep(stats.assistantTranscripts, text);
        break;
      }
      case "response.done": {
        const record = this.records.get(event.response.id);
        if (record) {
          record.status = event.response.status;
          record.timingsMs = event.x_voxgate?.timings_ms ?? null;
          record.serverLatencyMs = record.timingsMs?.turn_latency ?? null;
          const itemId = event.response.output?.[0]?.id ?? this.response?.itemId;
          showLatency(record, itemId);
          if (itemId && event.response.status === "cancelled") {
            bubble(itemId, "assistant").classList.add("interrupted");
          }
        }
        if (this.response && this.response.id === event.response.id) this.response.done = true;
        this.release(event.response.id, event.response.status === "completed");
        break;
      }
      case "conversation.item.truncated":
        keep(stats.truncations, { itemId: event.item_id, audioEndMs: event.audio_end_ms });
        break;
      case "error":
        keep(stats.errors, event.error.code);
        showError(`${event.error.code}: ${event.error.message}`);
        break;
    }
  }
}

function showLatency(record, itemId) {
  if (itemId) record.itemId = itemId;
  showP50();
  const el = record.itemId && bubbles.get(record.itemId);
  if (!el) return;
  const parts = [];
  if (record.latencyMs != null) parts.push(`turn latency ${record.latencyMs} ms`);
  if (record.serverLatencyMs != null) parts.push(`server ${Math.round(record.serverLatencyMs)} ms`);
  if (record.playbackStartMs != null) parts.push(`plays at ${record.playbackStartMs} ms`);
  const meta = el.querySelector(".meta");
  meta.textContent = parts.join(" · ");
  if (record.latencyMs != null) meta.dataset.latencyMs = String(record.latencyMs);
  if (record.serverLatencyMs != null) meta.dataset.serverLatencyMs = String(record.serverLatencyMs);
  showWaterfall(record, el);
}

// The stages measured for a turn, in order: the server's that response.done reported, then the
// page's own beyond the server's turn latency (each clamped at 0: the page's end of speech is
// its own detector's, not the server's VAD's).
function turnStages(record) {
  const measured = { ...record.timingsMs };
  const serverMs = measured.turn_latency;
  if (serverMs != null && record.latencyMs != null) {
    measured.network = Math.max(0, record.latencyMs - serverMs);
  }
  if (serverMs != null && record.latencyMs != null && record.playbackStartMs != null) {
    measured.jitter_buffer = Math.max(0, record.playbackStartMs - record.latencyMs);
  }
  return STAGES.filter((stage) => measured[stage.name] != null).map((stage) => ({
    ...stage,
    ms: measured[stage.name],
  }));
}

// One bar per answer, each stage a segment as wide as its share of the bar's total. A negative
// stage (server_overhead when stages overlapped) is drawn with no width.
function showWaterfall(record, el) {
  if (!record.timingsMs) return;
  const stages = turnStages(record);
  if (stages.length === 0) return;
  const totalMs = stages.reduce((sum, s) => sum + Math.max(0, s.ms), 0);
  let bar = el.querySelector(".waterfall");
  if (!bar) {
    bar = document.createElement("div");
    bar.className = "waterfall";
    bar.setAttribute("role", "img");
    const segments = document.createElement("div");
    segments.className = "stages";
    const total = document.createElement("span");
    total.className = "total";
    bar.append(segments, total);
    el.append(bar);
  }
  bar.dataset.responseId = record.responseId;
  bar.dataset.totalMs = String(totalMs);
  const parts = [];
  const segments = stages.map((stage) => {
    const share = totalMs > 0 ? (100 * Math.max(0, stage.ms)) / totalMs : 0;
    const segment = document.createElement("span");
    segment.className = "stage";
    segment.dataset.stage = stage.name;
    segment.dataset.ms = String(stage.ms);
    segment.style.width = `${share}%`;
    let title =
      `${stage.label}: ${formatMs(stage.ms)} ms, ${share.toFixed(0)}% of ` +
      `${formatMs(totalMs)} ms (${stage.about})`;
    if (stage.ms < 0) title += " (negative: stages overlapped)";
    const firstToken = record.timingsMs.lm_first_token;
    if (stage.name === "lm_first_sentence" && firstToken != null && stage.ms > 0) {
      title += `; first token at ${formatMs(firstToken)} ms`;
      const mark = document.createElement("span");
      mark.className = "first-token";
      mark.style.left = `${Math.min(100, (100 * firstToken) / stage.ms)}%`;
      segment.append(mark);
    }
    segment.title = title;
    parts.push(`${stage.label} ${formatMs(stage.ms)} ms`);
    return segment;
  });
  bar.querySelector(".stages").replaceChildren(...segments);
  const total = bar.querySelector(".total");
  total.textContent = `${Math.round(totalMs)} ms`;
  total.title = record.playbackStartMs != null ? "to first audio played" : "to first audio";
  bar.setAttribute("aria-label", `turn latency ${Math.round(totalMs)} ms: ${parts.join(", ")}`);
}

function showP50() {
  const answered = stats.turns.filter((t) => t.latencyMs != null);
  stats.latencyP50Ms = median(answered.map((t) => t.latencyMs));
  stats.serverLatencyP50Ms = median(
    stats.turns.filter((t) => t.serverLatencyMs != null).map((t) => t.serverLatencyMs),
  );
  const p50 = $("p50");
  if (stats.latencyP50Ms == null) return;
  p50.dataset.p50Ms = String(stats.latencyP50Ms);
  p50.dataset.turns = String(answered.length);
  const server =
    stats.serverLatencyP50Ms != null ? ` (server ${Math.round(stats.serverLatencyP50Ms)} ms)` : "";
  p50.textContent =
    `p50 ${Math.round(stats.latencyP50Ms)} ms${server} over ` +
    `${answered.length} turn${answered.length === 1 ? "" : "s"}`;
}

function showLegend() {
  const entry = (about, label, swatch) => {
    const item = document.createElement("li");
    item.title = about;
    item.append(swatch, label);
    return item;
  };
  const items = STAGES.map((stage) => {
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.dataset.stage = stage.name;
    return entry(stage.about, stage.label, swatch);
  });
  const mark = document.createElement("span");
  mark.className = "swatch first-token";
  const afterLm = STAGES.findIndex((stage) => stage.name === "lm_first_sentence") + 1;
  items.splice(afterLm, 0, entry("inside the LM's first sentence", "LM first token", mark));
  $("legend").replaceChildren(...items);
}

// The microphone's level (null: no microphone), green while the page's detector hears speech.
function showLevel(db, voiced) {
  stats.inputLevelDb = db;
  const percent =
    db == null ? 0 : Math.max(0, Math.min(100, (100 * (db - METER_FLOOR_DB)) / -METER_FLOOR_DB));
  const meter = $("meter");
  $("meter-level").style.width = `${percent}%`;
  meter.classList.toggle("voiced", voiced);
  meter.setAttribute("aria-valuenow", String(Math.round(percent)));
  meter.setAttribute("aria-valuetext", db == null ? "no microphone" : `${Math.round(db)} dBFS`);
  if (db == null) delete meter.dataset.levelDb;
  else meter.dataset.levelDb = db.toFixed(1);
}

const VAD_TEXT = {
  off: "server VAD off",
  silence: "server hears silence",
  speech: "server hears speech",
};

// What the server's VAD hears: "speech" from speech_started to speech_stopped.
function showServerVad(state) {
  stats.serverVad.state = state;
  const vad = $("vad");
  vad.dataset.vad = state;
  vad.textContent = VAD_TEXT[state];
}

function showSession(session) {
  if (document.activeElement !== $("instructions")) $("instructions").value = session.instructions ?? "";
  const voice = session.audio?.output?.voice;
  if (voice && ![...$("voice").options].some((o) => o.value === voice)) {
    $("voice").append(new Option(voice, voice));
  }
  if (voice) $("voice").value = voice;
  const td = session.audio?.input?.turn_detection;
  $("silence").value = td?.silence_duration_ms ?? "";
  $("silence").disabled = !td;
}

function renderStats() {
  $("stat-sent").textContent = `${stats.audioSecondsSent.toFixed(1)} s`;
  $("stat-received").textContent = `${stats.audioSecondsReceived.toFixed(1)} s`;
  $("stat-played").textContent = `${stats.audioSecondsPlayed.toFixed(1)} s`;
  $("stat-buffered").textContent = `${Math.round(stats.bufferedSeconds * 1000)} ms`;
  $("stat-underruns").textContent = String(stats.underruns);
}

// --- controls -----------------------------------------------------------------------------------------

$("connect").addEventListener("click", async () => {
  if (conn) {
    conn.close();
    return;
  }
  conn = new Connection();
  $("connect").textContent = "Disconnect";
  try {
    await conn.open();
  } catch (e) {
    showError(e.message);
    conn?.close();
    conn = null;
    setStatus("disconnected", "disconnected");
    $("connect").textContent = "Connect";
  }
});

$("interrupt").addEventListener("click", () => conn?.interrupt("button"));

$("say").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("message").value.trim();
  if (!conn?.session || !text) return;
  const content = [{ type: "input_text", text }];
  conn.send({ type: "conversation.item.create", item: { type: "message", role: "user", content } });
  feedback.requestAnswer();
  $("message").value = "";
});

$("settings").addEventListener("submit", (event) => {
  event.preventDefault();
  if (!conn?.session) return;
  const session = {
    type: "realtime",
    instructions: $("instructions").value,
    audio: { output: { voice: $("voice").value } },
  };
  const silence = parseInt($("silence").value, 10);
  if (conn.session.audio?.input?.turn_detection && Number.isFinite(silence)) {
    session.audio.input = { turn_detection: { type: "server_vad", silence_duration_ms: silence } };
  }
  conn.send({ type: "session.update", session });
});

const feedback = new Feedback({
  stats,
  keep,
  decode: floatsFromBase64Pcm16,
  bubbleOf: (itemId) => bubbles.get(itemId),
  sampleRate: WIRE_RATE,
});
showLegend();
probeServer();
