"""Voice names: the backbone's own voices, and aliases for them (OpenAI's voice names).

Clients written for OpenAI ask for its voices (`alloy`, `marin`, ...) by default, and frameworks
treat an unknown voice as fatal. So each of OpenAI's names is an alias of one of this server's
voices (by default the backbone's default voice; `Settings.voice_aliases` maps them as the
operator likes). A session keeps the name its client chose (and says it back); the backbone is
always given the voice the name stands for. A name that is neither a voice nor an alias is still
refused, with the list of names that are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from voxgate.model.types import UnknownVoiceError, Voice

OPENAI_VOICES = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "onyx",
    "nova",
    "sage",
    "shimmer",
    "verse",
    "marin",
    "cedar",
)
"""The voice names of OpenAI's speech and realtime models (their SDK's `voice` literals)."""


class VoiceBook:
    """The voices a backbone has and the aliases clients may use for them."""

    def __init__(self, voices: Sequence[Voice], aliases: Mapping[str, str] | None = None) -> None:
        if not voices:
            raise ValueError("the backbone has no voices")
        self.voices = tuple(voices)
        names = {v.name for v in voices}
        if aliases is None:
            aliases = {alias: voices[0].name for alias in OPENAI_VOICES if alias not in names}
        for alias, voice in aliases.items():
            if voice not in names:
                raise ValueError(
                    f"voice alias {alias!r} names {voice!r}, which is not a voice of this "
                    f"backbone ({', '.join(sorted(names))})"
                )
            if alias in names:
                raise ValueError(f"{alias!r} is a voice of this backbone, not an alias")
        self.aliases = dict(aliases)

    @property
    def default(self) -> str:
        return self.voices[0].name

    def accepted(self) -> list[str]:
        """Every name a client may ask for: the voices, then the aliases."""
        return [v.name for v in self.voices] + sorted(self.aliases)

    def resolve(self, name: str) -> str:
        """The voice `name` stands for; `UnknownVoiceError` if it is neither voice nor alias."""
        if any(v.name == name for v in self.voices):
            return name
        if name in self.aliases:
            return self.aliases[name]
        raise UnknownVoiceError(name, self.accepted())

    def aliases_of(self, voice: str) -> list[str]:
        return sorted(alias for alias, target in self.aliases.items() if target == voice)
