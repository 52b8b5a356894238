"""Where a turn's latency goes: stage durations from a response's `TurnTrace`.

turn_latency runs from the arrival of the user's last voiced audio (`speech_end`) to the send of
the first response audio byte (`first_audio_sent`). It splits into the end-of-turn wait (VAD
silence), ASR, the LM's time to its first speakable clause, TTS's first chunk, and what is left:
the server's own overhead (queues, scheduling, encoding, the socket).
"""

from __future__ import annotations

from voxgate.model.types import TurnTrace

_SPANS = {
    "end_of_turn_wait": ("speech_end", "turn_end"),
    "asr": ("asr_start", "asr_end"),
    "lm_first_token": ("lm_submit", "lm_first_token"),
    "lm_first_sentence": ("lm_submit", "first_clause"),
    "tts_first_chunk": ("first_clause", "tts_first_chunk"),
    "turn_latency": ("speech_end", "first_audio_sent"),
    # Whether speech overlaps generation: first audio out before the LM is done.
    "lm_total": ("lm_submit", "lm_done"),
    "lm_to_first_audio": ("lm_submit", "first_audio_sent"),
}
TURN_STAGES = (
    "end_of_turn_wait",
    "asr",
    "lm_first_token",
    "lm_first_sentence",
    "tts_first_chunk",
    "server_overhead",
)
"""Every stage of a turn, in the order they start: the `stage` label of
`voxgate_turn_stage_seconds`, and the keys besides turn_latency that clients and benchmarks
print from `x_voxgate.timings_ms`. lm_first_token lies inside lm_first_sentence."""
TURN_PARTS = tuple(stage for stage in TURN_STAGES if stage != "lm_first_token")
"""What a turn's latency splits into, in the order they happen: they add up to turn_latency (the
browser's waterfall and the dashboard's stacked bar draw these)."""
_MEASURED = TURN_PARTS[:-1]
"""The parts with spans of their own; server_overhead is what they leave of turn_latency."""


def turn_timings(trace: TurnTrace) -> dict[str, float]:
    """Seconds per stage; stages that did not happen (or were not measured) are absent."""
    timings = {
        name: span
        for name, (start, end) in _SPANS.items()
        if (span := trace.span(start, end)) is not None
    }
    if "turn_latency" in timings and all(part in timings for part in _MEASURED):
        timings["server_overhead"] = timings["turn_latency"] - sum(timings[p] for p in _MEASURED)
    return timings
