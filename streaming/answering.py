"""An answer as the client hears it: what the backbone says (`ResponseOutput`s), turned into
the response's items and the session events that stream them.

The backbone's text and audio become one output item (spoken or written) made at its first
output, a tool call an item of its own; audio is encoded in the response's output format and
sent in slices of `output_chunk_ms`. Reasoning (think mode) is streamed as text before the
answer. The stream's end sets the response's usage and status.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing

from voxgate.model.types import (
    AudioChunk,
    ReasoningDelta,
    ResponseEnd,
    ResponseOutput,
    Role,
    TextDelta,
    ToolCall,
)
from voxgate.streaming import audio
from voxgate.streaming.answer_log import SpokenAudio
from voxgate.streaming.audio import AudioFormat, OutputEncoder
from voxgate.streaming.config import SessionLimits
from voxgate.streaming.events import (
    FunctionCallArgumentsDelta,
    Item,
    ItemStatus,
    OutputAudioDelta,
    OutputTextDelta,
    ReasoningDeltaEvent,
    ReasoningDone,
    Response,
    ResponseStatus,
    SessionEvent,
)
from voxgate.streaming.requests import new_id


async def stream_answer(
    outputs: AsyncIterator[ResponseOutput],
    response: Response,
    emit: Callable[[SessionEvent], Awaitable[None]],
    begin_item: Callable[[Response, Item], Awaitable[None]],
    limits: SessionLimits,
    spoken: SpokenAudio | None = None,
) -> None:
    """Stream `outputs` (closed when this ends, or is cancelled) as `response`'s items and
    events: `emit` queues an event, `begin_item` adds an output item to the response (and the
    conversation); `spoken`, when given, keeps the audio as it is sent."""
    fmt = AudioFormat(response.audio_format)
    encoder = OutputEncoder(fmt)
    chunk_ms = limits.output_chunk_ms
    sent = 0  # samples of audio sent, at the output rate
    item: Item | None = None  # the spoken (or written) answer, made at its first output
    async with aclosing(outputs):
        async for output in outputs:
            if (
                response.reasoning
                and not response.reasoning_done
                and not isinstance(output, ReasoningDelta)
            ):
                response.reasoning_done = True  # over: say so before the answer begins
                await emit(ReasoningDone(response))
            if isinstance(output, TextDelta | AudioChunk) and item is None:
                item = Item(
                    new_id("item"),
                    Role.ASSISTANT,
                    audio=response.audio,
                    transcript="" if response.audio else None,
                    status=ItemStatus.IN_PROGRESS,
                )
                await begin_item(response, item)
            match output:
                case ReasoningDelta(text=text):
                    response.reasoning += text
                    await emit(ReasoningDeltaEvent(response, text))
                case ToolCall(call_id=call_id, name=name, arguments=arguments):
                    call = Item(
                        new_id("item"),
                        Role.ASSISTANT,
                        kind="function_call",
                        call_id=call_id,
                        name=name,
                        status=ItemStatus.IN_PROGRESS,
                    )
                    await begin_item(response, call)
                    call.arguments = arguments
                    await emit(FunctionCallArgumentsDelta(response, call, arguments))
                case TextDelta(text=text) if item is not None:
                    if response.audio:
                        item.spoken.append((item.audio_ms, len(item.transcript or "")))
                        item.transcript = (item.transcript or "") + text
                    else:
                        item.text += text
                    await emit(OutputTextDelta(response, item, text))
                case AudioChunk() if item is not None:
                    for piece in audio.iter_slices(encoder.encode(output), fmt, chunk_ms):
                        if spoken is not None:
                            spoken.add(piece)
                        sent += len(piece) // fmt.bytes_per_sample
                        item.audio_ms = audio.samples_to_ms(sent, fmt.sample_rate)
                        await emit(OutputAudioDelta(response, item, piece))
                case ResponseEnd():
                    if item is not None and output.spoken_tokens is not None:
                        item.tokens = output.spoken_tokens
                    response.input_tokens = output.input_tokens
                    response.output_tokens = output.output_tokens
                    response.output_audio_tokens = output.output_audio_tokens
                    response.context_start = output.context_start
                    if output.finish_reason == "length":
                        response.status = ResponseStatus.INCOMPLETE
                        response.reason = "max_output_tokens"
                    else:
                        response.status = ResponseStatus.COMPLETED
    if item is not None and response.audio and (tail := encoder.flush()):
        if spoken is not None:
            spoken.add(tail)
        sent += len(tail) // fmt.bytes_per_sample
        item.audio_ms = audio.samples_to_ms(sent, fmt.sample_rate)
        await emit(OutputAudioDelta(response, item, tail))
    if response.status == ResponseStatus.IN_PROGRESS:
        response.status = ResponseStatus.COMPLETED
