"""Voice-agent frameworks and the official SDK's documented examples, unchanged, against the real
server (cascade backbone, real engine): one spoken turn of recorded speech each.

pipecat and LiveKit Agents run in their own environment (`.venv-compat`, from
tests/compat/requirements.txt; `deploy/install.sh --test` makes it) through the scripts in
tests/compat/, with every setting at the framework's default but the URL and key: pipecat's
default voice is none (the server's), LiveKit's is `marin` (an alias here) with `semantic_vad`,
`gpt-4o-mini-transcribe` and `max_output_tokens: "inf"`. Beyond one turn: pipecat built the
way its examples build an app (a context and its aggregators, which set the conversation up
and ask for a greeting), and a LiveKit AgentSession spoken over while it answers.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from openai import AsyncOpenAI

pytestmark = [pytest.mark.engine, pytest.mark.timeout(900)]

ROOT = Path(__file__).parents[2]
COMPAT_PYTHON = ROOT / ".venv-compat" / "bin" / "python"
CARDS = Path("/usr/share/pocketsphinx/test/data/cards")
QUESTION = CARDS / "001.wav"
"""A person saying "ten of clubs" (pocketsphinx-testdata), 16 kHz mono."""
LATER_QUESTION = CARDS / "003.wav"
""""Seven of clubs", for a question that does not start the session's audio: the ASR hears
"ten of clubs" as "ten of close" at some offsets into the VAD's windows, this at every one."""
SPOKEN_OVER = CARDS / "005.wav"
""""Eight of spades, four of clubs, seven of hearts" (3.5 s), said over an answer."""


def run_client(
    script: str, server: Any, tmp_path: Path, *args: str, question: Path = QUESTION
) -> dict[str, Any]:
    if not COMPAT_PYTHON.exists():
        pytest.fail(f"{COMPAT_PYTHON} is missing: run deploy/install.sh --test")
    if not question.exists():
        pytest.fail("the recorded speech is missing: apt-get install -y pocketsphinx-testdata")
    out = tmp_path / "result.json"
    command = [
        str(COMPAT_PYTHON),
        str(ROOT / "tests" / "compat" / script),
        *args,
        "--url",
        f"{server.base_url}/v1",
        "--api-key",
        server.api_key,
        "--wav",
        str(question),
        "--out",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    detail = f"{done.stderr[-3000:]}\n{server.log_tail()}"
    assert out.exists(), detail
    result = json.loads(out.read_text())
    assert done.returncode == 0, (result["errors"], result.get("timeline"), detail)
    return result


def heard_the_question(result: dict[str, Any]) -> None:
    transcript = (result["user_transcript"] or "").lower()
    assert "clubs" in transcript, result["user_transcript"]
    assert result["answer_audio_s"] > 0.5, result
    assert result["answer_transcript"].strip(), result


def first_update(result: dict[str, Any]) -> dict[str, Any]:
    return next(e for e in result["client_events"] if e["type"] == "session.update")["session"]


def sent(result: dict[str, Any]) -> list[str]:
    """The types of the client events the framework sent, audio appends left out."""
    return [e["type"] for e in result["client_events"]]


def test_pipecat_with_its_defaults(server, tmp_path: Path) -> None:
    result = run_client("pipecat_turn.py", server, tmp_path)
    heard_the_question(result)
    assert "audio" not in first_update(result)  # pipecat's defaults: no voice, no formats


def test_pipecat_as_apps_build_it(server, tmp_path: Path) -> None:
    """pipecat's realtime examples: an LLMContext (a system message and "Say hello!") with its
    aggregator pair, and an LLMRunFrame at start. pipecat puts the context into the
    conversation before the first response; the greeting is spoken, then the user's turn."""
    result = run_client("pipecat_turn.py", server, tmp_path, "--context", question=LATER_QUESTION)
    assert sent(result) == [
        "session.update",
        "conversation.item.create",
        "session.update",
        "response.create",
    ]
    _, created, setup, _ = result["client_events"]
    assert created["item"]["content"] == [{"type": "input_text", "text": "Say hello!"}]
    assert setup["session"]["instructions"].startswith("You are a helpful assistant.")
    assert setup["session"]["tools"] == []
    greeting, answer = result["answers"]
    assert greeting["audio_s"] > 0.5 and greeting["transcript"].strip(), greeting
    assert "clubs" in (result["user_transcript"] or "").lower(), result["user_transcript"]
    assert answer["audio_s"] > 0.5 and answer["transcript"].strip(), answer
    assert result["server_errors"] == [] and result["errors"] == []


@pytest.mark.parametrize("mode", ["realtime", "agent"])
def test_livekit_with_its_defaults(server, tmp_path: Path, mode: str) -> None:
    result = run_client("livekit_turn.py", server, tmp_path, "--mode", mode)
    heard_the_question(result)
    assert result["response_status"] == "completed"
    sent = first_update(result)
    assert sent["audio"]["output"]["voice"] == "marin"
    assert sent["max_output_tokens"] == "inf"
    assert sent["audio"]["input"]["turn_detection"]["type"] == "semantic_vad"


def test_livekit_spoken_over_while_it_answers(server, tmp_path: Path) -> None:
    """An AgentSession whose first answer is still playing when the user asks again: LiveKit
    interrupts it (truncating it to what was heard, and cancelling it if the server is still
    at it), and answers the second question. The server refuses a cancel that comes after
    the response has ended as OpenAI does ("Cancellation failed: ..."), and LiveKit takes that
    as no failure: it emits no `error` event. Whether LiveKit's cancel comes in time to find
    the response running depends on how fast the server wrote the answer, so either is fine.

    The server has to keep up with the audio: one seconds behind (a starved CPU) says
    speech_started so late that LiveKit's cancels reach it after it has begun answering the
    second question, and cancel that answer (the timeline in a failure shows it)."""
    result = run_client(
        "livekit_turn.py",
        server,
        tmp_path,
        "--mode",
        "barge-in",
        "--second-wav",
        str(SPOKEN_OVER),
    )
    assert result["errors"] == []  # LiveKit's own error events, its model session's included
    for refused in result["server_errors"]:
        assert refused["code"] == "response_cancel_not_active", refused
        assert refused["message"].startswith("Cancellation failed"), refused
    interrupted, *_, last = result["speeches_interrupted"]
    assert interrupted is True and last is False, result["speeches_interrupted"]
    truncate = next(e for e in result["client_events"] if e["type"] == "conversation.item.truncate")
    assert truncate["audio_end_ms"] > 0
    asked, *asked_again = result["user_messages"]
    assert "clubs" in asked.lower(), asked
    assert any("spades" in m.lower() or "hearts" in m.lower() for m in asked_again), asked_again
    answer = result["assistant_messages"][-1]
    assert answer["text"].strip() and not answer["interrupted"], result["assistant_messages"]
    assert result["segments_audio_s"][-1] > 0.5, result["segments_audio_s"]
    assert result["response_statuses"][-1] == "completed"


async def test_the_sdks_documented_speech_and_transcription_examples(server, tmp_path) -> None:
    """OpenAI's own examples, with their model and voice names: speech from `gpt-4o-mini-tts`
    in `coral` with instructions, streamed to a file; that file transcribed by
    `gpt-4o-transcribe`, streamed. Then the SDK's examples/audio.py: `tts-1` in `alloy`,
    streamed to a file, transcribed by `whisper-1` (its translation by `whisper-1` needs a
    multilingual ASR, which the default backbone is not: refused by design)."""
    client = AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key)
    speech_file = tmp_path / "speech.mp3"
    async with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts",
        voice="coral",
        input="Today is a wonderful day to build something people love!",
        instructions="Speak in a cheerful and positive tone.",
    ) as response:
        await response.stream_to_file(speech_file)
    assert speech_file.stat().st_size > 5000
    with speech_file.open("rb") as audio_file:
        stream = await client.audio.transcriptions.create(
            model="gpt-4o-transcribe", file=audio_file, response_format="text", stream=True
        )
        kinds, text = [], ""
        async for event in stream:
            kinds.append(event.type)
            if event.type == "transcript.text.done":
                text = event.text
    assert kinds[-1] == "transcript.text.done"
    assert "wonderful day" in text.lower(), text

    alloy_file = tmp_path / "alloy.mp3"
    async with client.audio.speech.with_streaming_response.create(
        model="tts-1",
        voice="alloy",
        input="the quick brown fox jumped over the lazy dogs",
    ) as response:
        await response.stream_to_file(alloy_file)
    assert alloy_file.stat().st_size > 5000
    transcription = await client.audio.transcriptions.create(model="whisper-1", file=alloy_file)
    assert "brown fox" in transcription.text.lower(), transcription.text
    await client.close()
