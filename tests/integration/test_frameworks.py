"""Voice-agent frameworks and the official SDK's documented examples, unchanged, against the real
server (cascade backbone, real engine): one spoken turn of recorded speech each.

pipecat and LiveKit Agents run in their own environment (`.venv-compat`, from
tests/compat/requirements.txt; `deploy/install.sh --test` makes it) through the scripts in
tests/compat/, with every setting at the framework's default but the URL and key: pipecat's
default voice is none (the server's), LiveKit's is `marin` (an alias here) with `semantic_vad`,
`gpt-4o-mini-transcribe` and `max_output_tokens: "inf"`.
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
QUESTION = Path("/usr/share/pocketsphinx/test/data/cards/001.wav")
"""A person saying "ten of clubs" (pocketsphinx-testdata), 16 kHz mono."""


def run_client(script: str, server: Any, tmp_path: Path, *args: str) -> dict[str, Any]:
    if not COMPAT_PYTHON.exists():
        pytest.fail(f"{COMPAT_PYTHON} is missing: run deploy/install.sh --test")
    if not QUESTION.exists():
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
        str(QUESTION),
        "--out",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    detail = f"{done.stderr[-3000:]}\n{server.log_tail()}"
    assert out.exists(), detail
    result = json.loads(out.read_text())
    assert done.returncode == 0, (result["errors"], detail)
    return result


def heard_the_question(result: dict[str, Any]) -> None:
    transcript = (result["user_transcript"] or "").lower()
    assert "clubs" in transcript, result["user_transcript"]
    assert result["answer_audio_s"] > 0.5, result
    assert result["answer_transcript"].strip(), result


def first_update(result: dict[str, Any]) -> dict[str, Any]:
    return next(e for e in result["client_events"] if e["type"] == "session.update")["session"]


def test_pipecat_with_its_defaults(server, tmp_path: Path) -> None:
    result = run_client("pipecat_turn.py", server, tmp_path)
    heard_the_question(result)
    assert "audio" not in first_update(result)  # pipecat's defaults: no voice, no formats


@pytest.mark.parametrize("mode", ["realtime", "agent"])
def test_livekit_with_its_defaults(server, tmp_path: Path, mode: str) -> None:
    result = run_client("livekit_turn.py", server, tmp_path, "--mode", mode)
    heard_the_question(result)
    assert result["response_status"] == "completed"
    sent = first_update(result)
    assert sent["audio"]["output"]["voice"] == "marin"
    assert sent["max_output_tokens"] == "inf"
    assert sent["audio"]["input"]["turn_detection"]["type"] == "semantic_vad"


async def test_the_sdks_documented_speech_and_transcription_examples(server, tmp_path) -> None:
    """OpenAI's own examples, with their model and voice names: speech from `gpt-4o-mini-tts`
    in `coral` with instructions, streamed to a file; that file transcribed by
    `gpt-4o-transcribe`, streamed."""
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
    await client.close()
