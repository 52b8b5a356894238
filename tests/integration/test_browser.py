"""The browser client (`clients/web/`) in headless Chromium, against the real cascade server.

Debian's `chromium` runs headless, driven by Playwright (`browser_page.py`). Its fake
microphone plays a WAV file of Piper speech, so the page captures real speech through its
AudioWorklet, streams it to `/v1/realtime`, and gets the spoken answer back. The server has an
API key, so the test does what an app's backend does: it mints a client secret with the key
(the official SDK) and gives it to the page (`/?token=`).

A screenshot of the page at the end (or at a failure) is saved under `$VOXGATE_ARTIFACTS`
(default `artifacts/` in the repository) and its path printed. Feedback in the page (thumbs,
compared answers) is tested in `test_browser_feedback.py`.
"""

from __future__ import annotations

import statistics
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr
from audio_checks import words
from browser_page import SCRIPTED_MIC, chromium, save_screenshot, say, watch_problems
from openai import OpenAI

from voxgate.model.types import INPUT_SAMPLE_RATE

pytestmark = [pytest.mark.engine, pytest.mark.timeout(420)]

QUESTION = "What is the capital of France?"
INSTRUCTIONS = "You are a geography tutor. Answer in one short sentence."
MIC_RATE = 48_000
LEADING_SILENCE_S = 1.5
TRAILING_SILENCE_S = 30.0
"""Chromium loops the file (and not every build honours `%noloop`): the question, then
silence longer than the test, so the page hears it once."""
ANSWER_TIMEOUT_MS = 240_000
SERVER_STAGES = (
    "end_of_turn_wait",
    "asr",
    "lm_first_sentence",
    "tts_first_chunk",
    "server_overhead",
)
"""The parts of the server's turn latency in `x_voxgate.timings_ms`, in order
(`streaming/timings.py`); lm_first_token lies inside lm_first_sentence."""
PAGE_STAGES = ("network", "jitter_buffer")
"""What the page measured beyond the server's turn latency, drawn after the server's stages."""
WIDTH_TOLERANCE = 0.01
"""How far a segment's share of the bar's width may be from its share of the milliseconds."""

WATCH_INDICATORS = """
// What a user would have seen, recorded from before the page's scripts run: each state the
// server-VAD indicator showed, and the level meter's widest bar.
window.watched = { vad: [], meterPercent: 0 };
new MutationObserver((changes) => {
  for (const { target } of changes) {
    if (target.id === "vad" && target.dataset.vad !== watched.vad.at(-1)) {
      watched.vad.push(target.dataset.vad);
    }
    if (target.id === "meter-level") {
      watched.meterPercent = Math.max(watched.meterPercent, parseFloat(target.style.width) || 0);
    }
  }
}).observe(document, { subtree: true, attributes: true, attributeFilter: ["data-vad", "style"] });
"""

WATERFALL = """(responseId) => {
  const bar = document.querySelector(`.waterfall[data-response-id="${responseId}"]`);
  if (!bar) return null;
  return {
    itemId: bar.closest(".turn").dataset.itemId,
    totalMs: Number(bar.dataset.totalMs),
    width: bar.querySelector(".stages").getBoundingClientRect().width,
    label: bar.getAttribute("aria-label"),
    segments: [...bar.querySelectorAll("[data-stage]")].map((s) => ({
      stage: s.dataset.stage,
      ms: Number(s.dataset.ms),
      width: s.getBoundingClientRect().width,
      title: s.title,
    })),
  };
}"""


def mic_file(path: Path, *parts: np.ndarray | float) -> Path:
    """A 48 kHz mono pcm16 WAV for Chromium's fake microphone: 16 kHz speech (arrays, each
    normalised to a peak of 0.7) and seconds of silence (numbers), in order."""
    pieces = [
        np.zeros(int(p * MIC_RATE), np.float32)
        if isinstance(p, float)
        else 0.7 * soxr.resample(p, INPUT_SAMPLE_RATE, MIC_RATE) / np.abs(p).max()
        for p in parts
    ]
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(MIC_RATE)
        out.writeframes((np.clip(np.concatenate(pieces), -1, 1) * 32767).astype("<i2").tobytes())
    return path


@pytest.fixture
def fake_mic(speak, tmp_path: Path) -> Path:
    """A little silence, the question, then long silence."""
    return mic_file(
        tmp_path / "question.wav", LEADING_SILENCE_S, speak(QUESTION), TRAILING_SILENCE_S
    )


def test_the_page_talks_and_listens(server, fake_mic: Path) -> None:
    with chromium(f"--use-file-for-fake-audio-capture={fake_mic}%noloop") as browser:
        page = browser.new_page(viewport={"width": 1100, "height": 760})
        try:
            converse(page, server)
        except BaseException:
            save_screenshot(page, "browser-client-failure.png")
            raise


def converse(page: Any, server: Any) -> None:
    page.add_init_script(WATCH_INDICATORS)
    problems = watch_problems(page)
    sdk = OpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key)

    # A secret handed over in the address: the page takes it, and takes it out of the address.
    secret = sdk.realtime.client_secrets.create().value
    page.goto(f"{server.base_url}/?token={secret}")
    page.wait_for_function("window.voxgateStats.authMode !== 'unknown'")
    assert page.evaluate("voxgateStats.authMode") == "client_secret"
    assert "token" not in page.url and page.input_value("#token") == secret
    page.wait_for_function("document.querySelector('#voice').options.length > 0")

    # The production pattern: the page asks the app's backend for a secret when it connects,
    # and the backend mints one with the API key (here, the test plays the backend).
    def app_backend(route: Any) -> None:
        minted = sdk.realtime.client_secrets.create(
            expires_after={"anchor": "created_at", "seconds": 60},
            session={"type": "realtime", "instructions": INSTRUCTIONS},
        )
        route.fulfill(json=minted.to_dict())

    page.route(f"{server.base_url}/app/client-secret", app_backend)
    page.goto(f"{server.base_url}/?token_url=/app/client-secret")
    page.wait_for_function("window.voxgateStats.authMode !== 'unknown'")
    page.click("#connect")
    page.wait_for_function("voxgateStats.state === 'connected'", timeout=30_000)
    # The secret's session config is the session's: the settings panel shows its persona.
    assert page.input_value("#instructions") == INSTRUCTIONS

    # The page hears the question, the server answers, the page plays the answer. (An answer
    # that reached the session's max_output_tokens ends `incomplete`: a whole answer too.)
    page.wait_for_function(
        """() => {
            const s = window.voxgateStats;
            const answered = (t) => t.status === 'completed' || t.status === 'incomplete';
            return s.turns.some((t) => answered(t) && t.latencyMs !== null)
                && s.assistantTranscripts.length > 0;
        }""",
        timeout=ANSWER_TIMEOUT_MS,
    )
    page.wait_for_function("voxgateStats.audioSecondsPlayed > 0.5", timeout=30_000)
    stats = page.evaluate("voxgateStats")

    assert stats["appendsSent"] > 20 and stats["audioSecondsSent"] > 2.0
    assert stats["voicedFrames"] > 20  # the page's own detector heard the speech
    assert {"capital", "france"} <= set(words(" ".join(stats["userTranscripts"]))), stats
    assert stats["audioDeltas"] > 0 and stats["audioSecondsReceived"] > 0.5
    turn = next(t for t in stats["turns"] if t["status"] in ("completed", "incomplete"))
    assert turn["latencySource"] == "page"
    assert 0 < turn["latencyMs"] < 60_000
    assert turn["serverLatencyMs"] is not None and turn["serverLatencyMs"] > 0
    assert stats["errors"] == []

    # What the user sees: both transcripts and the turn's latency.
    user_text = page.inner_text(".turn.user .text")
    assert {"capital", "france"} <= set(words(user_text)), user_text
    assistant_text = page.inner_text(".turn.assistant .text")
    assert words(assistant_text), assistant_text
    assert "turn latency" in page.inner_text(".turn.assistant .meta")

    # Where the turn's time went: one segment per stage the server reported, then the page's.
    check_waterfall(page, turn)
    answered = [t["latencyMs"] for t in stats["turns"] if t["latencyMs"] is not None]
    assert stats["latencyP50Ms"] == statistics.median(answered)
    assert page.get_attribute("#p50", "data-p50-ms") == str(stats["latencyP50Ms"])
    assert page.locator("#legend [data-stage]").count() == len(SERVER_STAGES + PAGE_STAGES)

    # The user saw the server hear them (speech, then silence again) and the meter move.
    watched = page.evaluate("watched")
    assert "silence" in watched["vad"][watched["vad"].index("speech") :], watched
    assert page.get_attribute("#vad", "data-vad") == "silence"
    assert stats["serverVad"]["speechStarted"] >= 1 and stats["serverVad"]["speechStopped"] >= 1
    assert watched["meterPercent"] > 20, watched  # the question at -15 dBFS or so
    save_screenshot(page, "browser-client.png")

    # The Interrupt button drops what the jitter buffer still holds (the answer arrives
    # faster than it is spoken); the response is over, so nothing is cancelled, but the
    # answer is truncated to what was heard.
    held = page.evaluate("voxgateStats.bufferedSeconds")
    page.click("#interrupt")
    page.wait_for_function("voxgateStats.bufferedSeconds === 0", timeout=5_000)
    played = page.evaluate("voxgateStats.audioSecondsPlayed")
    page.wait_for_timeout(500)
    assert page.evaluate("voxgateStats.audioSecondsPlayed") == played  # silence now
    if held > 0.2:
        assert page.evaluate("voxgateStats.flushes") == 1
        assert played < stats["audioSecondsReceived"]
        assert "interrupted" in page.get_attribute(".turn.assistant", "class")
        # The server is told how much of the answer was heard.
        page.wait_for_function("voxgateStats.truncations.length === 1", timeout=5_000)
        (truncated,) = page.evaluate("voxgateStats.truncations")
        assert truncated["itemId"] == page.get_attribute(".turn.assistant", "data-item-id")
        assert abs(truncated["audioEndMs"] - 1000 * played) < 300, (truncated, played)
    assert page.evaluate("voxgateStats.errors") == []
    assert not problems, problems
    save_screenshot(page, "browser-client-interrupted.png")
    sdk.close()


def check_waterfall(page: Any, turn: dict[str, Any]) -> None:
    """The answer's waterfall draws what `response.done` reported for it, each segment as wide
    as its share of the turn (read back from the layout)."""
    timings = turn["timingsMs"]
    assert {"asr", "lm_first_sentence", "turn_latency"} <= timings.keys(), timings
    expected = {name: timings[name] for name in SERVER_STAGES if name in timings}
    expected["network"] = max(0, turn["latencyMs"] - timings["turn_latency"])
    expected["jitter_buffer"] = max(0, turn["playbackStartMs"] - turn["latencyMs"])

    bar = page.evaluate(WATERFALL, turn["responseId"])
    assert bar is not None, "no waterfall for the answer"
    assert bar["itemId"] == page.get_attribute(".turn.assistant", "data-item-id")
    drawn = {s["stage"]: s["ms"] for s in bar["segments"]}
    assert list(drawn) == list(expected), (bar, timings)  # one per stage, in order
    assert drawn == pytest.approx(expected), (bar, timings)
    total_ms = sum(max(0, ms) for ms in expected.values())
    assert bar["totalMs"] == pytest.approx(total_ms)
    assert sum(s["width"] for s in bar["segments"]) == pytest.approx(bar["width"], abs=1)
    for segment in bar["segments"]:
        share = max(0, segment["ms"]) / total_ms
        assert abs(segment["width"] / bar["width"] - share) < WIDTH_TOLERANCE, (segment, bar)
        assert " ms, " in segment["title"], segment  # the numbers, on hover
    assert bar["label"].startswith("turn latency ") and bar["label"].count(" ms") == len(drawn) + 1


# --- the audio thread's code, run in Chromium on synthetic signals -------------------------------

WORKLET = Path(__file__).resolve().parents[2] / "clients" / "web" / "audio-worklet.js"
WORKLET_STUBS = """
globalThis.sampleRate = 48000;
globalThis.currentTime = 0;
globalThis.AudioWorkletProcessor = class {
  constructor() { this.port = { sent: [], postMessage(m) { this.sent.push(m); } }; }
};
globalThis.registerProcessor = (name, cls) => { (globalThis.processors ??= {})[name] = cls; };
globalThis.tone = (hz, rate, n, amp = 0.5) =>
  Float32Array.from({ length: n }, (_, i) => amp * Math.sin((2 * Math.PI * hz * i) / rate));
globalThis.rms = (x, from = 0, to = x.length) => {
  let e = 0;
  for (let i = from; i < to; i++) e += x[i] * x[i];
  return Math.sqrt(e / (to - from));
};
globalThis.join = (parts) => {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
};
"""

RESAMPLER_CHECKS = """() => {
  const noise = Float32Array.from(
    { length: 48000 }, (_, i) => ((Math.sin(i * 12.9898) * 43758.5453) % 1) * 0.5);
  const whole = new Resampler(48000, 24000);
  const batch = join([whole.process(noise), whole.flush()]);
  const streaming = new Resampler(48000, 24000);
  const parts = [];
  for (let at = 0, k = 0; at < noise.length; k++) {
    const n = 1 + ((k * 7919) % 700);  // uneven pieces, as render quanta and messages come
    parts.push(streaming.process(noise.subarray(at, at + n)));
    at += n;
  }
  parts.push(streaming.flush());
  const streamed = join(parts);
  let maxDiff = 0;
  for (let i = 0; i < batch.length; i++) {
    maxDiff = Math.max(maxDiff, Math.abs(batch[i] - streamed[i]));
  }

  const down = (hz) => {
    const r = new Resampler(48000, 24000);
    const y = r.process(tone(hz, 48000, 48000));
    return rms(y, 1000, y.length - 1000) / (0.5 / Math.SQRT2);
  };
  // Up: the result must be the same tone sampled at 48 kHz (the kernel is centred: no delay).
  const up = new Resampler(24000, 48000).process(tone(1000, 24000, 24000));
  const ideal = tone(1000, 48000, up.length);
  let upError = 0;
  for (let i = 1000; i < up.length - 1000; i++) {
    upError = Math.max(upError, Math.abs(up[i] - ideal[i]));
  }
  const odd = new Resampler(44100, 24000).process(tone(1000, 44100, 44100));
  return {
    batchLength: batch.length, streamedLength: streamed.length, maxDiff,
    gain1k: down(1000), gain8k: down(8000), gain15k: down(15000),
    upError, oddLength: odd.length, oddGain: rms(odd, 1000, odd.length - 1000) / (0.5 / Math.SQRT2),
  };
}"""

JITTER_BUFFER_CHECKS = """() => {
  const player = new processors["voxgate-playback"]();
  const send = (data) => player.port.onmessage({ data });
  const audio = (stream, ms) =>
    send({ type: "audio", stream, samples: tone(440, 24000, ms * 24).buffer });
  const quantum = () => {
    const out = [[new Float32Array(128)]];
    player.process([], out);
    return out[0][0].some((v) => v !== 0);
  };
  const facts = {};
  audio("r1", 50);
  facts.silentBelowPrebuffer = !quantum();
  audio("r1", 50);  // now past the 80 ms prebuffer
  facts.playsAbovePrebuffer = quantum();
  let quanta = 1;
  while (quantum()) quanta++;
  facts.playedMs = (quanta * 128) / 48;
  facts.underrunsAfterRunningDry = player.underruns;
  facts.stateAfterRunningDry = player.state;
  send({ type: "end", stream: "r1" });  // the tail held for the resampler's look-ahead
  let tail = 0;
  while (quantum()) tail++;
  facts.tailQuanta = tail;
  facts.stateAtEnd = player.state;
  audio("r2", 1000);
  quantum();
  send({ type: "pause" });  // a possible interruption: held, silent
  facts.silentWhilePaused = !quantum() && !quantum();
  send({ type: "resume" });
  facts.playsAfterResume = quantum();
  send({ type: "flush" });
  facts.silentAfterFlush = !quantum();
  facts.sent = player.port.sent.filter((m) => m.type !== "stats");
  return facts;
}"""


def test_the_audio_worklet_resamples_and_buffers() -> None:
    """The worklet's resampler and jitter buffer, fed synthetic signals (no server, no sound
    card): streaming equals batch, the pass and stop bands, and the buffer's states."""
    with chromium() as browser:
        page = browser.new_page()
        page.add_script_tag(content=WORKLET_STUBS + WORKLET.read_text())
        resampler = page.evaluate(RESAMPLER_CHECKS)
        buffer = page.evaluate(JITTER_BUFFER_CHECKS)

    assert resampler["streamedLength"] == resampler["batchLength"], resampler
    assert abs(resampler["batchLength"] - 24_000) <= 2, resampler
    assert resampler["maxDiff"] < 1e-6, resampler
    assert abs(resampler["gain1k"] - 1) < 0.01, resampler
    assert abs(resampler["gain8k"] - 1) < 0.01, resampler  # all an ASR at 16 kHz hears
    assert resampler["gain15k"] < 0.01, resampler  # above 12 kHz: stopped, not folded back (-40 dB)
    assert resampler["upError"] < 2e-3, resampler
    assert abs(resampler["oddLength"] - 24_000) <= 40 and abs(resampler["oddGain"] - 1) < 0.01

    assert buffer["silentBelowPrebuffer"] and buffer["playsAbovePrebuffer"], buffer
    assert 90 <= buffer["playedMs"] <= 102, buffer  # 100 ms less the look-ahead still held
    assert (buffer["underrunsAfterRunningDry"], buffer["stateAfterRunningDry"]) == (1, "buffering")
    assert buffer["tailQuanta"] >= 1 and buffer["stateAtEnd"] == "idle", buffer
    assert buffer["silentWhilePaused"] and buffer["playsAfterResume"], buffer
    assert buffer["silentAfterFlush"], buffer
    kinds = [m["type"] for m in buffer["sent"]]
    assert kinds == ["started", "drained", "started", "flushed"], buffer["sent"]
    flushed = buffer["sent"][-1]
    assert 0.9 < flushed["seconds"] < 1.0, flushed  # dropped: all but what was heard
    assert flushed["stream"] == "r2" and flushed["heardSeconds"] == 256 / 48_000, flushed


INTERJECTION = "Wait. What about Germany?"


def test_speaking_interrupts_the_answer(server, speak) -> None:
    """Barge-in by voice: the user speaks while the answer plays. The page drops the audio it
    still holds, tells the server how much was heard, and the new question is answered.

    The interjection must come while the answer plays, which depends on how fast the server
    answers: so this test speaks on cue (a scripted microphone) instead of from a WAV file."""
    # Spoken beforehand: synthesising on cue can stall for seconds on a loaded machine.
    question, interjection = speak(QUESTION), speak(INTERJECTION)
    sdk = OpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key)
    secret = sdk.realtime.client_secrets.create().value
    sdk.close()
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1100, "height": 760})
        page.add_init_script(SCRIPTED_MIC)
        try:
            page.goto(f"{server.base_url}/?token={secret}")
            page.wait_for_function("window.voxgateStats.authMode !== 'unknown'")
            page.click("#connect")
            page.wait_for_function("voxgateStats.state === 'connected'", timeout=30_000)
            say(page, question)
            page.wait_for_function(
                "voxgateStats.audioSecondsPlayed > 0.2 && voxgateStats.bufferedSeconds > 0.8",
                timeout=ANSWER_TIMEOUT_MS,
            )
            say(page, interjection)
            page.wait_for_function(
                """() => {
                    const s = window.voxgateStats;
                    const answered = (t) => t.status === 'completed' || t.status === 'incomplete';
                    return s.userTranscripts.length >= 2 && s.turns.length >= 2
                        && answered(s.turns[s.turns.length - 1]);
                }""",
                timeout=ANSWER_TIMEOUT_MS,
            )
            stats = page.evaluate("voxgateStats")
            first, second = stats["turns"][0], stats["turns"][-1]
            assert stats["flushes"] == 1, stats  # the rest of the first answer was dropped
            (truncated,) = stats["truncations"]
            first_item = page.get_attribute(".turn.assistant >> nth=0", "data-item-id")
            assert truncated["itemId"] == first_item
            assert 0 < truncated["audioEndMs"] < 1000 * first["receivedSeconds"], stats
            assert "interrupted" in page.get_attribute(".turn.assistant >> nth=0", "class")
            assert "germany" in words(stats["userTranscripts"][1]), stats["userTranscripts"]
            assert second["latencyMs"] is not None and len(stats["assistantTranscripts"]) >= 2
            assert stats["errors"] == []
            save_screenshot(page, "browser-client-barge-in.png")
        except BaseException:
            save_screenshot(page, "browser-client-barge-in-failure.png")
            raise
