"""`/metrics` of the real servers, scraped before and after real spoken turns: the turn histograms
move by exactly the turns and the timings `response.done` reported, the stage and real-time-factor
histograms move, vLLM's engine metrics are there, and every metric the Grafana dashboard queries
exists on a live server.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from audio_checks import pcm24, silence, wav_bytes
from dashboard import metric_names, queries
from prometheus_client.parser import text_string_to_metric_families
from realtime_helpers import answer_to, collect, eventually, sdk_client
from realtime_wire import text_item

from voxgate.model import artifacts
from voxgate.streaming.timings import TURN_STAGES

pytestmark = [pytest.mark.engine, pytest.mark.timeout(400)]

ROUNDING_S = 0.00006
"""response.done's timings are rounded to 0.1 ms."""


def sample(server, name: str, **labels: str) -> float:
    try:
        return server.metric(name, **labels)
    except KeyError:  # a labelled series not created yet
        return 0.0


def turn_samples(server, backbone: str) -> dict[str, float]:
    values = {
        "count": sample(server, "voxgate_turn_latency_seconds_count", backbone=backbone),
        "sum": sample(server, "voxgate_turn_latency_seconds_sum", backbone=backbone),
        "asr_rtf": sample(server, "voxgate_asr_real_time_factor_count", backbone=backbone),
        "audio_in": sample(server, "voxgate_session_audio_input_seconds_total"),
        "completed": sample(server, "voxgate_responses_total", status="completed"),
    }
    for stage in TURN_STAGES:
        labels = {"backbone": backbone, "stage": stage}
        values[f"{stage}_count"] = sample(server, "voxgate_turn_stage_seconds_count", **labels)
        values[f"{stage}_sum"] = sample(server, "voxgate_turn_stage_seconds_sum", **labels)
    return values


async def test_turn_histograms_move_by_each_spoken_turn(server, speak) -> None:
    questions = ("What is the capital of France?", "How many days are in a week?")
    before = turn_samples(server, "cascade")
    sent = 0
    turns = []
    async with sdk_client(server).realtime.connect(model="voxgate") as conn:
        await conn.session.update(session={"type": "realtime", "max_output_tokens": 40})
        await collect(conn, until="session.updated")
        for question in questions:
            pcm = pcm24(speak(question)) + silence(1.5)
            sent += len(pcm)
            turn = await answer_to(conn, pcm, realtime=True)
            done = turn.first("response.done")
            assert done["response"]["status"] in ("completed", "incomplete")
            turns.append(done["x_voxgate"]["timings_ms"])
            n = len(turns)

            # Each answer adds one turn latency, equal to the one response.done reported.
            def moved(n: int = n) -> bool:
                now = turn_samples(server, "cascade")
                return now["count"] - before["count"] == n and all(
                    now[f"{s}_count"] - before[f"{s}_count"] == n
                    for s in ("asr", "tts_first_chunk")
                )

            assert await eventually(moved), turn_samples(server, "cascade")
        # Everything appended has been read once the server answers a later event.
        await conn.session.update(session={"type": "realtime"})
        await collect(conn, until="session.updated")

    after = turn_samples(server, "cascade")
    assert after["count"] - before["count"] == len(questions)
    reported_s = sum(t["turn_latency"] for t in turns) / 1000
    assert after["sum"] - before["sum"] == pytest.approx(reported_s, abs=ROUNDING_S * len(turns))
    for stage in TURN_STAGES:
        seen = [t[stage] for t in turns if stage in t]
        assert after[f"{stage}_count"] - before[f"{stage}_count"] == len(seen), stage
        moved_s = after[f"{stage}_sum"] - before[f"{stage}_sum"]
        assert moved_s == pytest.approx(sum(seen) / 1000, abs=ROUNDING_S * len(turns)), stage
    assert {"end_of_turn_wait", "asr", "lm_first_token", "tts_first_chunk"} <= turns[0].keys()
    assert after["completed"] - before["completed"] >= 1
    assert after["asr_rtf"] - before["asr_rtf"] >= len(questions)
    assert after["audio_in"] - before["audio_in"] == pytest.approx(sent / 48_000)
    assert await eventually(lambda: server.metric("voxgate_sessions_active") == 0)


def test_rest_speech_moves_the_tts_and_http_metrics(server, speak) -> None:
    headers = {"Authorization": f"Bearer {server.api_key}"}
    route = {"endpoint": "/v1/audio/speech", "method": "POST", "status": "200"}
    before = {
        "requests": sample(server, "voxgate_http_requests_total", **route),
        "tts_rtf": sample(server, "voxgate_tts_real_time_factor_count", backbone="cascade"),
        "first": sample(server, "voxgate_synthesis_first_chunk_seconds_count", backbone="cascade"),
        "asr_rtf": sample(server, "voxgate_asr_real_time_factor_count", backbone="cascade"),
    }
    body = {"model": "tts-1", "voice": "joe", "input": "Hello there. Nice to meet you."}
    reply = httpx.post(f"{server.base_url}/v1/audio/speech", json=body, headers=headers, timeout=60)
    assert reply.status_code == 200
    files = {"file": ("q.wav", wav_bytes(speak("What is the capital of France?")), "audio/wav")}
    reply = httpx.post(
        f"{server.base_url}/v1/audio/transcriptions",
        headers=headers,
        files=files,
        data={"model": "whisper-1"},
        timeout=60,
    )
    assert reply.status_code == 200
    assert sample(server, "voxgate_http_requests_total", **route) - before["requests"] == 1
    # One synthesize() per sentence; one transcribe() for a short clip.
    tts = sample(server, "voxgate_tts_real_time_factor_count", backbone="cascade")
    assert tts - before["tts_rtf"] == 2
    first = sample(server, "voxgate_synthesis_first_chunk_seconds_count", backbone="cascade")
    assert first - before["first"] == 2
    asr = sample(server, "voxgate_asr_real_time_factor_count", backbone="cascade")
    assert asr - before["asr_rtf"] == 1
    # Real CPU models run well faster than real time here.
    assert server.metric("voxgate_tts_real_time_factor_sum", backbone="cascade") > 0


def dashboard_names(prefix: str) -> set[str]:
    return {n for expr in queries() for n in metric_names(expr) if n.startswith(prefix)}


def auth(server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.api_key}"}


def exported_names(server) -> set[str]:
    text = httpx.get(f"{server.base_url}/metrics", headers=auth(server), timeout=10).text
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}


async def test_engine_metrics_and_every_dashboard_name_on_the_cascade_server(server) -> None:
    generated_before = server.metric("vllm:generation_tokens_total")
    async with sdk_client(server).realtime.connect(model="voxgate") as conn:
        await conn.send(text_item("Name a colour."))
        answer = {"output_modalities": ["text"], "max_output_tokens": 16}
        await conn.response.create(response=answer)
        turn = await collect(conn)
    written = turn.first("response.done")["response"]["usage"]["output_tokens"]
    assert 0 < written <= 16

    # The engine counted exactly the tokens of this one text answer (the cascade's ASR and TTS
    # run outside vLLM, and nothing else was asked of it).
    def generated() -> float:
        return server.metric("vllm:generation_tokens_total") - generated_before

    assert await eventually(lambda: generated() == written), (generated(), written)
    exported = exported_names(server)
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
        assert name in exported
    assert 0 <= server.metric("vllm:kv_cache_usage_perc") <= 1
    spec = {n for n in dashboard_names("vllm:") if n.startswith("vllm:spec_decode")}
    # The cascade does not speculate: vLLM has no spec-decode metrics and none are invented.
    assert not any(n.startswith("vllm:spec_decode") for n in exported)
    assert "voxgate_spec_decode_acceptance_rate" not in exported
    missing = {n for n in dashboard_names("vllm:") - spec if n not in exported}
    # histogram names appear as _bucket/_sum/_count
    missing = {n for n in missing if f"{n}_count" not in exported}
    assert missing == set()


def test_no_metric_label_names_a_local_path(server) -> None:
    """vLLM labels its metrics with the served model's name, by default the model's local
    path: it would tell whoever scrapes /metrics where this server keeps its files, and the
    user's home. The server names its model `voxgate-<backbone>` instead."""
    text = httpx.get(f"{server.base_url}/metrics", headers=auth(server), timeout=10).text
    labelled = [
        (sample.name, value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        for value in sample.labels.values()
    ]
    # The launch's VOXGATE_HOME (where the models are) and the user's home directory.
    local = {f"{artifacts.default_home()}", f"{Path.home()}/"}
    leaks = [(name, value) for name, value in labelled if any(p in value for p in local)]
    assert leaks == []
    engine_labels = {value for name, value in labelled if name.startswith("vllm:")}
    assert "voxgate-cascade" in engine_labels, sorted(engine_labels)


async def test_speculative_decoding_metrics_on_the_unified_server(unified_server, speak) -> None:
    async with httpx.AsyncClient(base_url=unified_server.base_url, timeout=120) as http:
        reply = await http.post(
            "/v1/audio/transcriptions",
            headers={"Authorization": f"Bearer {unified_server.api_key}"},
            files={
                "file": ("q.wav", wav_bytes(speak("What is the capital of France?")), "audio/wav")
            },
            data={"model": "voxgate-stepaudio2"},
        )
    assert reply.status_code == 200
    exported = exported_names(unified_server)
    for name in dashboard_names("vllm:spec_decode") | {"voxgate_spec_decode_acceptance_rate"}:
        assert name in exported, name
    asr = sample(unified_server, "voxgate_asr_real_time_factor_count", backbone="stepaudio2")
    assert asr >= 1
    # A realtime turn on this backbone is timed under its own label.
    before = sample(unified_server, "voxgate_turn_latency_seconds_count", backbone="stepaudio2")
    pcm = pcm24(speak("Hello there.")) + silence(1.5)
    async with sdk_client(unified_server).realtime.connect(model="voxgate") as conn:
        await conn.session.update(session={"type": "realtime", "max_output_tokens": 60})
        turn = await answer_to(conn, pcm, realtime=False)
    assert turn.audio, turn.types
    assert await eventually(
        lambda: sample(unified_server, "voxgate_turn_latency_seconds_count", backbone="stepaudio2")
        == before + 1
    )
