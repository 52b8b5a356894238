"""Compacted memory: the running summary that stands in for turns the context no longer holds.

A long conversation outgrows the context budget; the turns that fall out are folded, by the same
engine at low priority and off the turn's critical path, into a short summary that goes into
every later prompt right after the persona. The persona (instructions) is never summarised.
"""

from __future__ import annotations

from collections.abc import Sequence

from voxgate.model.types import Role, Turn

SUMMARY_PRIORITY = 20
"""Below REST (10) and realtime (0): compaction never delays a live turn."""
SUMMARY_TOKENS = 160
SUMMARY_INSTRUCTIONS = (
    "You keep the memory of a conversation. Rewrite the summary so that it also covers the "
    "new messages. Keep every name, number, date, preference and fact the user stated. "
    "Write at most 80 words, in plain sentences."
)
_SPEAKERS = {Role.USER: "User", Role.ASSISTANT: "Assistant", Role.TOOL: "Tool", Role.SYSTEM: "Note"}


def summary_request(summary: str, turns: Sequence[Turn]) -> Turn:
    """The one user message that asks for the new summary."""
    lines = "\n".join(f"{_SPEAKERS[t.role]}: {t.text}" for t in turns if t.text)
    return Turn(
        Role.USER, f"Summary so far: {summary or '(nothing yet)'}\n\nNew messages:\n{lines}"
    )


def with_summary(instructions: str, summary: str) -> str:
    """The system prompt: the persona first, then what is remembered of the conversation."""
    if not summary:
        return instructions
    return f"{instructions}\n\nEarlier in this conversation: {summary}"
