"""The REST speech API's requests as models: the upload forms, the speech body, and the model
names each endpoint answers to. Parsed once, at the edge (`server/rest_bodies.py`).

The `model` field takes this server's own model id (`voxgate-<backbone>`, see /v1/models) or
one of OpenAI's model names, all served by the one backbone: `whisper-1`, `gpt-4o-transcribe`,
`gpt-4o-mini-transcribe` (...) for transcriptions, translations and descriptions, `tts-1`,
`tts-1-hd`, `gpt-4o-mini-tts` (...) for speech. Anything else is 404 `model_not_found`.

voxgate's own fields of a request sit under `x_voxgate` (`SpeechExtension`), as in the
realtime protocol.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from voxgate.server.audio_files import SpeechFormat
from voxgate.streaming.config import MAX_TRANSCRIPTION_PROMPT_CHARS

TRANSCRIPTION_MODELS = (
    "whisper-1",
    "gpt-4o-transcribe",
    "gpt-4o-mini-transcribe",
    "gpt-4o-mini-transcribe-2025-12-15",
    "gpt-transcribe",
)
"""OpenAI's transcription model names (translations and descriptions take them too); each is
served by this server's backbone."""
MAX_SPEECH_CANDIDATES = 2
"""Most candidate answers of one speech request (`x_voxgate.candidates`): a preference pair."""
SPEECH_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-mini-tts-2025-12-15")
"""OpenAI's speech model names; each is served by this server's backbone."""


class UploadForm(BaseModel):
    """The form fields every upload endpoint has, besides `file`. Fields OpenAI has and
    voxgate does not use (`include[]`, `chunking_strategy`, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="ignore", use_attribute_docstrings=True)

    model: str = Field(examples=["whisper-1"])
    """This server's model id or an OpenAI transcription model name (an alias)."""


class _AudioForm(UploadForm):
    """The form fields that transcriptions and translations share, besides `file`."""

    prompt: str | None = Field(None, max_length=MAX_TRANSCRIPTION_PROMPT_CHARS)
    """Text to guide the spelling and style; refused (400 `unsupported_parameter`) by
    backbones whose ASR prompt is fixed."""
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    response_format: Literal["json", "text", "srt", "vtt", "verbose_json"] = "json"


class TranscriptionForm(_AudioForm):
    """The form fields of `/v1/audio/transcriptions` besides `file`."""

    language: str | None = Field(None, pattern=r"^[a-z]{2,3}$", examples=["en"])
    """ISO-639-1 code of the spoken language (`en`)."""
    timestamp_granularities: list[Literal["word", "segment"]] = Field(
        default_factory=list,
        validation_alias=AliasChoices("timestamp_granularities[]", "timestamp_granularities"),
    )
    """With `verbose_json`: `segment` (the default), `word`, or both."""
    stream: bool = False
    """Stream `transcript.text.delta` events (Server-Sent Events), one per piece of audio, then
    `transcript.text.done`. Only with `json` or `text`."""


class TranslationForm(_AudioForm):
    """The form fields of `/v1/audio/translations` besides `file`: speech in, English text out."""

    stream: bool = False
    """Translations are not streamed (OpenAI's are not either): `true` is refused."""


class DescriptionForm(UploadForm):
    """The form fields of `/v1/audio/descriptions` (voxgate's) besides `file`."""

    kind: Literal["caption", "paralinguistic"] = "caption"
    """`caption`: what happens in the clip; `paralinguistic`: the speakers' voices (gender,
    age, emotion), the background and the setting."""
    response_format: Literal["json", "text"] = "json"
    """`json`: `{"text": ...}`; `text`: the description alone."""


class SpeechExtension(BaseModel):
    """voxgate's fields of a speech request, `x_voxgate`."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    candidates: int = Field(1, ge=1, le=MAX_SPEECH_CANDIDATES, strict=True)
    """2: speak the text twice, as two candidates to compare, and answer both in one JSON
    object (`speech.candidates`, base64 audio in `response_format`) instead of streaming;
    say which is preferred with `POST /v1/feedback/preferences`. The second is synthesised
    after the first, at a lower priority. Only on a server that captures feedback
    (`VOXGATE_FEEDBACK__ENABLED`), and not with `stream_format: "sse"`."""


class SpeechRequest(BaseModel):
    """The JSON body of `/v1/audio/speech`, with OpenAI's field names."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    model: str = Field(examples=["tts-1"])
    """This server's model id or an OpenAI speech model name (an alias)."""
    input: str = Field(min_length=1, examples=["Hello there. How can I help?"])
    """The text to speak."""
    voice: str = Field(examples=["joe"])
    """One of `GET /v1/audio/voices` (`joe` is the CPU default's voice)."""
    instructions: str | None = None
    """How to say it; honoured by backbones that can (the response header
    `X-Voxgate-Instructions` says `followed` or `ignored`)."""
    response_format: SpeechFormat = SpeechFormat.MP3
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"
    """`audio`: the encoded audio as chunked bytes; `sse`: `speech.audio.delta` events with
    base64 pieces of it, then `speech.audio.done`."""
    x_voxgate: SpeechExtension | None = None
    """voxgate's extension (candidates to compare)."""

    @property
    def candidates(self) -> int:
        return self.x_voxgate.candidates if self.x_voxgate is not None else 1
