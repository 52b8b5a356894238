"""Session configuration and limits in domain terms (the server maps the wire shapes onto them)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from voxgate.model.types import TEXT_ANSWER_BUDGET, AnswerBudget, ToolSpec
from voxgate.streaming.audio import AudioFormat
from voxgate.streaming.vad import VadParams


class TurnDetection(BaseModel):
    model_config = ConfigDict(frozen=True)

    vad: VadParams = VadParams()
    create_response: bool = True
    """Answer automatically when a turn ends."""
    interrupt_response: bool = True
    """Speech while a response runs cancels it (barge-in)."""
    min_interruption_ms: int = Field(250, ge=0, le=5000)
    """While the agent talks, speech must last this long to interrupt it (coughs and short
    backchannels like "mm-hm" do not)."""
    min_interruption_words: int = Field(0, ge=0, le=20)
    """When > 0, an interruption first holds the agent's audio; it is cancelled only if the
    user's turn has at least this many words, else it is a false interruption."""
    false_interruption: Literal["resume", "silence"] = "resume"
    """After a false interruption the agent goes on where it paused, or stays silent."""
    echo_guard: bool = True
    """Take the agent's own voice (sent by this server) out of the input before the VAD."""
    speculative_start_ms: int | None = Field(None, ge=32, le=5000)
    """After this much silence, start transcribing and answering before the turn surely ends;
    kept if the turn ends, dropped if the user goes on. None (the default) is off: on the
    2-core CPU default the early work competes with the rest for the CPU and did not lower
    latency (bench/turn_taking.py); with spare compute, 200 is a good value."""
    eagerness: Literal["low", "medium", "high", "auto"] | None = None
    """Semantic end of turn (`semantic_vad`): end early after a complete thought, wait longer
    after one that trails off. None: plain silence-based end of turn (`server_vad`)."""


MAX_TRANSCRIPTION_PROMPT_CHARS = 2000
"""Longest transcription `prompt` (realtime and REST). Whisper reads at most 224 prompt tokens
(about 1,000 characters of English); a longer prompt is a mistake, not a request."""


class Transcription(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str
    language: str | None = None
    prompt: str | None = None


class SessionConfig(BaseModel):
    """What a client configures with `session.update`, in domain terms."""

    model_config = ConfigDict(frozen=True)

    instructions: str
    audio_output: bool = True
    input_format: AudioFormat = AudioFormat.PCM
    output_format: AudioFormat = AudioFormat.PCM
    voice: str
    speed: float = Field(1.0, ge=0.25, le=4.0)
    turn_detection: TurnDetection | None = TurnDetection()
    transcription: Transcription | None = None
    max_output_tokens: int | None = Field(TEXT_ANSWER_BUDGET.default_tokens, ge=1)
    """Answer length in tokens; None is the protocol's "inf": the server's cap. The server
    starts each session at its backbone's `AnswerBudget.default_tokens` instead."""
    tools: tuple[ToolSpec, ...] = ()
    """Functions the model may call."""
    tool_choice: str = "auto"
    """"auto" | "none" | "required" | a tool's name (that call is forced)."""
    reasoning_effort: Literal["minimal", "low", "medium", "high", "xhigh"] | None = None
    """Think mode (backbones that can reason): how many tokens it may think first."""
    tracing: str | dict[str, Any] | None = None
    """OpenAI's tracing setting, kept to say it back; nothing is traced."""
    include: tuple[str, ...] = ()
    """Extra fields the client asked for (OpenAI's `include`); said back, none is produced."""
    parallel_tool_calls: bool | None = None
    """Kept; a response calls at most one function, which `false` asks for and `true` allows
    (`true` is listed under `x_voxgate.not_honoured`)."""
    noise_reduction: Literal["near_field", "far_field"] | None = None
    """What the client asked of input noise reduction (OpenAI's setting). Applied when the
    server has a noise suppressor switched on (`RealtimeSettings.noise_suppressor`); else
    accepted and reported as not applied."""


class SessionLimits(BaseModel):
    """Bounds of one session (nested under `VOXGATE_REALTIME__*`)."""

    max_buffer_seconds: float = Field(60.0, gt=0)
    """Input audio held before a commit. With server VAD a longer turn is ended at this bound;
    without it, more audio is refused with `input_audio_buffer_full`."""
    audio_turns_kept: int = Field(4, ge=1)
    """User audio turns whose voice is kept (the newest; each at most `max_buffer_seconds`):
    a backbone that hears audio gets them as audio, older ones as transcripts."""
    max_items: int = Field(200, ge=2)
    """Conversation items kept; the oldest are forgotten beyond this."""
    event_queue_size: int = Field(256, ge=8)
    """Server events waiting for the socket; when full, the session waits (backpressure)."""
    output_chunk_ms: int = Field(200, ge=10)
    """Largest audio delta sent to the client."""
    max_output_tokens: int | None = Field(None, ge=1)
    """Cap on any response's max_output_tokens (including "inf"). None: the backbone's own
    (`AnswerBudget.max_tokens`: `TEXT_ANSWER_BUDGET` for the cascade's text LM, 180 s of
    speech for Step-Audio-2)."""

    def answer_cap(self, budget: AnswerBudget) -> int:
        """The largest answer a response may ask for, in the backbone's output tokens."""
        return self.max_output_tokens or budget.max_tokens

    max_reasoning_tokens: int = Field(1024, ge=16)
    """Cap on think mode's reasoning per response (the effort levels scale up to it)."""
    max_instructions_chars: int = Field(32_768, ge=64)
    """Longest `instructions` (session or response); longer is `string_above_max_length`.
    Instructions must also fit the model's context beside the answer: that is checked in
    tokens when they are set (`context_length_exceeded`)."""
    max_item_chars: int = Field(32_768, ge=64)
    """Longest text of one conversation item (a message's text or transcript, a function
    call's arguments, a function's output); longer is `string_above_max_length`."""
    max_conversation_chars: int = Field(262_144, ge=1024)
    """Text of all the items a client adds to one conversation together; an item that would
    pass it is refused with `conversation_too_large` (delete items first). The session's own
    items (transcripts, answers) are bounded by `max_items` instead."""
    max_tools: int = Field(128, ge=1)
    """Function tools per session or response (OpenAI's limit is 128)."""
    max_tool_schema_bytes: int = Field(16_384, ge=256)
    """Largest `parameters` JSON Schema of one tool, as compact JSON."""
    max_tool_description_chars: int = Field(1024, ge=64)
    """Longest `description` of one tool (OpenAI refuses a function description over 1,024
    characters). It goes whole into the prompt of every response that may call the tool."""
    max_out_of_band_responses: int = Field(2, ge=1)
    """Out-of-band responses (`conversation: "none"`) one session may run at once, beside its
    one in-conversation response; one more gets `response_limit_reached`."""
