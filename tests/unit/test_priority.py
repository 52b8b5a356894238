"""PriorityExecutor: waiting jobs run lowest priority number first, then in submission order."""

from __future__ import annotations

import threading

import pytest

from voxgate.model.priority import Lanes, PriorityExecutor


def test_waiting_jobs_run_by_priority_then_arrival() -> None:
    executor = PriorityExecutor("test")
    gate = threading.Event()
    ran: list[str] = []
    blocker = executor.submit(10, gate.wait)  # occupies the thread
    futures = [
        executor.submit(priority, ran.append, name)
        for priority, name in [
            (10, "rest-1"),
            (10, "rest-2"),
            (0, "live-1"),
            (10, "rest-3"),
            (0, "live-2"),
        ]
    ]
    gate.set()
    for future in [blocker, *futures]:
        future.result(timeout=5)
    assert ran == ["live-1", "live-2", "rest-1", "rest-2", "rest-3"]
    executor.shutdown()


async def test_results_and_errors_reach_the_awaiter() -> None:
    executor = PriorityExecutor("test")
    assert await executor.run(0, sum, [1, 2, 3]) == 6
    with pytest.raises(ZeroDivisionError):
        await executor.run(0, lambda: 1 / 0)
    executor.shutdown()


async def test_a_cancelled_waiting_job_never_runs() -> None:
    executor = PriorityExecutor("test")
    gate = threading.Event()
    ran: list[str] = []
    executor.submit(0, gate.wait)
    waiting = executor.submit(0, ran.append, "x")
    assert waiting.cancel()  # its awaiter went away before the job started
    gate.set()
    assert await executor.run(5, ran.append, "y") is None
    assert ran == ["y"]
    executor.shutdown()


def test_shutdown_cancels_waiting_jobs_and_refuses_new_ones() -> None:
    executor = PriorityExecutor("test")
    gate, started = threading.Event(), threading.Event()

    def hold() -> bool:
        started.set()
        return gate.wait()

    running = executor.submit(0, hold)
    assert started.wait(5)
    waiting = executor.submit(0, print)
    executor.shutdown()
    gate.set()
    assert running.result(timeout=5) is True
    assert waiting.cancelled()
    with pytest.raises(RuntimeError):
        executor.submit(0, print)


async def test_whisper_and_piper_serve_live_work_before_queued_rest_work() -> None:
    """The cascade's ASR and TTS workers are priority executors: a live turn (0) waits only for
    the job in progress, not behind REST jobs (10) that queued before it."""
    import asyncio
    from types import SimpleNamespace

    import numpy as np

    from voxgate.model.asr import WhisperASR
    from voxgate.model.tts import PiperTTS

    ran: list[str] = []
    running, gate = threading.Event(), threading.Event()

    def transcribe(audio, **_: object):
        running.set()
        gate.wait(5)
        ran.append(f"asr-{int(audio[0])}")
        return iter(()), None

    asr = WhisperASR.__new__(WhisperASR)
    asr._model = asr._batch_model = SimpleNamespace(transcribe=transcribe)
    asr._lanes = Lanes("asr-test", batch_nice=None)
    asr._beam_size = 1
    asr._window_s = None
    first = asyncio.create_task(asr.transcribe(np.full(16000, 9.0), priority=10))
    assert await asyncio.to_thread(running.wait, 5)  # the first REST job holds the thread
    rest = [asyncio.create_task(asr.transcribe(np.full(16000, i), priority=10)) for i in (1, 2)]
    live = asyncio.create_task(asr.transcribe(np.full(16000, 0.0), priority=0))
    await asyncio.sleep(0)  # one loop pass: each task submits its job, in this order
    gate.set()
    await asyncio.gather(first, *rest, live)
    assert ran == ["asr-9", "asr-0", "asr-1", "asr-2"]
    asr.close()

    spoken: list[str] = []
    tts = PiperTTS.__new__(PiperTTS)
    tts._lanes = Lanes("tts-test", batch_nice=None)
    tts.voice = SimpleNamespace(sample_rate=22050)

    def sentences(text: str, speed: float):
        for word in text.split():
            spoken.append(word)
            yield np.zeros(10, np.float32)

    def hold() -> None:
        running.set()
        gate.wait(5)

    tts._sentences = sentences
    running.clear()
    gate.clear()
    blocker = tts._lanes.batch.submit(10, hold)
    assert await asyncio.to_thread(running.wait, 5)

    async def say(text: str, priority: int) -> None:
        async for _ in tts.synthesize(text, priority=priority):
            pass

    rest_speech = asyncio.create_task(say("r1 r2", 10))
    live_speech = asyncio.create_task(say("l1", 0))
    await asyncio.sleep(0)  # both have asked for their first sentence
    gate.set()
    await asyncio.gather(rest_speech, live_speech, asyncio.wrap_future(blocker))
    assert spoken[0] == "l1"
    tts.close()


def _own_nice() -> int:
    import os

    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


async def test_a_batch_lane_never_holds_up_live_work_and_yields_the_cpu() -> None:
    """With a batch lane, a REST job in progress (held here) does not delay a live job, and
    the batch thread (and threads it creates) runs at the lower CPU priority."""
    lanes = Lanes("lanes-test", batch_nice=10)
    assert lanes.separate and lanes.lane(10) is lanes.batch and lanes.lane(0) is lanes.live
    assert lanes.lane(-1) is lanes.live
    running, gate = threading.Event(), threading.Event()

    def hold() -> int:
        running.set()
        gate.wait()
        return _own_nice()

    held = lanes.batch.submit(10, hold)
    assert running.wait(5)
    assert await lanes.live.run(0, _own_nice) == 0  # ran while the batch job held its thread
    assert not held.done()

    def child_nice() -> int:
        seen: list[int] = []
        child = threading.Thread(target=lambda: seen.append(_own_nice()))
        child.start()
        child.join()
        return seen[0]

    gate.set()
    assert held.result(timeout=5) == 10
    assert await lanes.batch.run(10, child_nice) == 10  # a pool built there inherits it
    assert lanes.batch.nice == 10
    lanes.shutdown()
    with pytest.raises(RuntimeError):
        lanes.batch.submit(10, print)


async def test_piper_serves_live_sentences_beside_a_rest_synthesis_in_progress() -> None:
    """The TTS's batch lane: a REST synthesis whose sentence is in progress does not hold up a
    live answer's sentence, and the phonemizer (eSpeak's globals) runs one call at a time."""
    import asyncio
    from types import SimpleNamespace

    import numpy as np

    from voxgate.model.tts import PiperTTS, _serialised

    tts = PiperTTS.__new__(PiperTTS)
    tts._lanes = Lanes("tts-lanes-test", batch_nice=10)
    tts.voice = SimpleNamespace(sample_rate=22050)
    running, gate = threading.Event(), threading.Event()

    def sentences(text: str, speed: float):
        if text == "rest":
            running.set()
            gate.wait(5)
        yield np.full(10, _own_nice(), np.float32)

    tts._sentences = sentences

    async def say(text: str, priority: int) -> list[float]:
        return [float(c.samples[0]) async for c in tts.synthesize(text, priority=priority)]

    rest = asyncio.create_task(say("rest", 10))
    assert await asyncio.to_thread(running.wait, 5)
    assert await say("live", 0) == [0.0]  # while the REST sentence is still being computed
    assert not rest.done()
    gate.set()
    assert await rest == [10.0]
    tts.close()

    entered: list[str] = []
    second: list[threading.Thread] = []

    def phonemize(text: str) -> list[list[str]]:
        entered.append(text)
        if text == "first":  # a second call, from another thread, while this one runs
            second.append(threading.Thread(target=locked, args=("second",)))
            second[0].start()
            second[0].join(0.2)
            assert second[0].is_alive()  # it waits for the lock (without it, done at once)
            assert entered == ["first"]
        return [[text]]

    locked = _serialised(phonemize)
    assert locked("first") == [["first"]]
    second[0].join(5)
    assert entered == ["first", "second"]


def test_batch_lanes_are_a_setting_that_null_turns_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """`VOXGATE_CASCADE__BATCH_NICE=null` (as README says for the other optional numbers)
    gives one thread per model; arrival order (`WORKER_PRIORITY=false`) has no lanes either."""
    from voxgate.server.settings import Settings

    assert Settings().cascade.lane_nice == 10
    monkeypatch.setenv("VOXGATE_CASCADE__BATCH_NICE", "null")
    monkeypatch.setenv("VOXGATE_CASCADE__ASR_WINDOW_S", "null")
    settings = Settings()
    assert settings.cascade.lane_nice is None and settings.cascade.asr_window_s is None
    monkeypatch.setenv("VOXGATE_CASCADE__BATCH_NICE", "5")
    monkeypatch.setenv("VOXGATE_CASCADE__WORKER_PRIORITY", "false")
    assert Settings().cascade.batch_nice == 5 and Settings().cascade.lane_nice is None
