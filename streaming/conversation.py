"""A session's conversation: its items, in order, with the rules for changing them.

`Conversation` holds the items (bounded by `max_items`), the summary of what was folded out of
them (compacted memory) and where the backbone's prompts start (`ContextWindow`). It checks
what a client adds, truncates or deletes, and refuses with OpenAI's error codes
(`SessionRejected`) before anything changes. No events and no I/O: the session says what
changed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from voxgate.model.types import ContextWindow, Role
from voxgate.streaming.config import SessionLimits
from voxgate.streaming.events import Item
from voxgate.streaming.requests import SessionRejected, too_long


def older_voices_kept(voices: int, limit: int) -> int:
    """How many of the `voices` user turns kept as audio stay so when a new one arrives.

    They are dropped in a block, not one per turn: when the new voice would pass `limit`, only
    the newest `limit // 2` stay. A turn that goes from audio to transcript changes the prompt
    from that turn on, so dropping one per turn would make every prompt differ from the last
    one there (vLLM's prefix cache then reuses only what comes before); in a block, the prompt
    changes there once every `limit // 2` turns. bench/stepaudio2_prompts.py measures it."""
    if voices + 1 <= limit:
        return voices
    return max(0, limit // 2 - 1)


class Conversation:
    """One session's items, summary and context window."""

    def __init__(self, limits: SessionLimits) -> None:
        self._limits = limits
        self.items: list[Item] = []
        self.summary = ""
        """What the conversation said before its oldest item still kept (compacted memory)."""
        self.window = ContextWindow()
        """Where this conversation's prompts start (the backbone moves it; see model.lm)."""
        self._answers: dict[str, str] = {}
        """The response that wrote each answer item still kept, by item id."""

    def append(
        self, item: Item, after: str | None = None, *, answer_of: str | None = None
    ) -> str | None:
        """Insert `item` (at the end, or after the item `after`); return its predecessor's id.
        `answer_of`: the response that wrote it."""
        if answer_of is not None:
            self._answers[item.id] = answer_of
        index = len(self.items)
        if after is not None:
            index = 0 if after == "root" else self.index_of(after) + 1
        self.items.insert(index, item)
        if (excess := len(self.items) - self._limits.max_items) > 0:
            # Forget the oldest items, never the one just added (it may go in at the root).
            forgotten = [old for old in self.items if old is not item][:excess]
            self._remove(forgotten)
            index = self.items.index(item)
        return self.items[index - 1].id if index > 0 else None

    def index_of(self, item_id: str, param: str = "previous_item_id", action: str = "") -> int:
        """The item's index; an unknown id is refused with OpenAI's code for the action
        (`item_retrieve_invalid_item_id`, ...: frameworks key on them, pipecat waits for
        its retrieval's), `item_not_found` for a `previous_item_id`."""
        for i, existing in enumerate(self.items):
            if existing.id == item_id:
                return i
        if action:
            raise SessionRejected(
                f"item_{action}_invalid_item_id",
                f"Error {action.removesuffix('e')}ing item: the item with id {item_id!r} "
                "does not exist.",
                param,
            )
        raise SessionRejected("item_not_found", f"no conversation item with id {item_id!r}", param)

    def get(self, item_id: str, action: str) -> Item:
        return self.items[self.index_of(item_id, "item_id", action)]

    def delete(self, item_id: str) -> None:
        del self.items[self.index_of(item_id, "item_id", "delete")]
        self._answers.pop(item_id, None)

    def holds(self, item: Item) -> bool:
        return any(item is kept for kept in self.items)

    def keep_voice(self, item: Item, samples: np.ndarray) -> None:
        """Keep the audio of the newest user turns (the backbone hears how they were said),
        at most `audio_turns_kept`: older turns live on as transcripts (see `older_voices_kept`)."""
        voices = [i for i in self.items if i.samples is not None and i is not item]
        keep = older_voices_kept(len(voices), self._limits.audio_turns_kept)
        for older in voices[: len(voices) - keep]:
            older.samples = None
        item.samples = samples

    def check_item(self, item: Item, param: str) -> None:
        """Every text of an item within `max_item_chars`."""
        limit = self._limits.max_item_chars
        for name in ("text", "transcript", "arguments", "output"):
            value = getattr(item, name) or ""
            if len(value) > limit:
                raise too_long(f"{param}.{name}", value, limit)

    def check_new(self, item: Item) -> None:
        """`conversation.item.create`: refuse an item that cannot be added (changes nothing but
        the name of a function's output, taken from its call)."""
        if any(existing.id == item.id for existing in self.items):
            raise SessionRejected(
                "item_create_duplicate_item_id", f"item id {item.id!r} already exists", "item.id"
            )
        self.check_item(item, "item")
        held = sum(len(i.content_text) for i in self.items)
        if held + len(item.content_text) > self._limits.max_conversation_chars:
            raise SessionRejected(
                "conversation_too_large",
                f"the conversation holds {held} characters of text; this item would pass the "
                f"limit of {self._limits.max_conversation_chars}: delete items first",
                "item",
            )
        if item.kind == "function_call_output":
            calls = [
                i for i in self.items if i.kind == "function_call" and i.call_id == item.call_id
            ]
            if not calls:
                raise SessionRejected(
                    "invalid_value",
                    f"no function call with call_id {item.call_id!r} in the conversation",
                    "item.call_id",
                )
            item.name = calls[-1].name

    def truncatable(self, item_id: str, content_index: int) -> Item:
        """The assistant audio message that `conversation.item.truncate` may cut."""
        item = self.get(item_id, "truncate")
        if item.role is not Role.ASSISTANT or not item.audio:
            raise SessionRejected(
                "invalid_value", "only assistant audio messages can be truncated", "item_id"
            )
        if content_index != 0:
            raise SessionRejected(
                "invalid_value", "the message has one content part", "content_index"
            )
        return item

    def truncate(self, item: Item, audio_end_ms: int) -> str | None:
        """The user heard only `audio_end_ms` of this answer, so its transcript (and the context
        of later turns) keeps only what was heard. Returns the id of the response that wrote
        it (None: the client added it)."""
        if not 0 <= audio_end_ms <= item.audio_ms:
            raise SessionRejected(
                "invalid_value",
                f"audio_end_ms {audio_end_ms} is outside the item's {item.audio_ms} ms of audio",
                "audio_end_ms",
            )
        item.transcript = item.heard_transcript(audio_end_ms)
        item.audio_ms = audio_end_ms
        item.tokens = None  # what the model wrote is no longer what was said
        item.spoken = [(ms, off) for ms, off in item.spoken if ms < audio_end_ms]
        return self._answers.get(item.id)

    def fold(self, summary: str, items: Sequence[Item]) -> list[Item]:
        """`items` are now told by `summary`: forget those still kept; return them."""
        self.summary = summary
        folded = [i for i in items if self.holds(i)]
        self._remove(folded)
        return folded

    def _remove(self, gone: Sequence[Item]) -> None:
        self.items = [kept for kept in self.items if all(kept is not g for g in gone)]
        for item in gone:
            self._answers.pop(item.id, None)
