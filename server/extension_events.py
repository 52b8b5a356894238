"""voxgate's own server events (`voxgate.*`), documented extensions of the OpenAI Realtime
protocol: what think mode reasons, the summary of a long conversation, and the replies to the
feedback events (`voxgate.feedback.create`, `voxgate.preference.create`).

Same shape as the SDK's events (`server/server_events.py`): one class per event type, checked
when made. `server/outgoing.py` builds the session's; `server/feedback_capture.py` the replies.
"""

from __future__ import annotations

from typing import Literal

from voxgate.server.feedback_types import FeedbackRecord, PairRecord
from voxgate.server.server_events import ServerEvent


class ResponseReasoningDeltaEvent(ServerEvent):
    """Think mode: reasoning text of a response (never spoken)."""

    type: Literal["voxgate.response.reasoning.delta"] = "voxgate.response.reasoning.delta"
    response_id: str
    delta: str


class ResponseReasoningDoneEvent(ServerEvent):
    type: Literal["voxgate.response.reasoning.done"] = "voxgate.response.reasoning.done"
    response_id: str
    text: str


class ConversationSummaryUpdatedEvent(ServerEvent):
    """Older turns were folded into the conversation's running summary."""

    type: Literal["voxgate.conversation.summary.updated"] = "voxgate.conversation.summary.updated"
    summary: str
    items_folded: int


class FeedbackCreatedEvent(ServerEvent):
    """A rating was stored (the reply to `voxgate.feedback.create`)."""

    type: Literal["voxgate.feedback.created"] = "voxgate.feedback.created"
    feedback: FeedbackRecord
    """As `POST /v1/feedback` answers it."""


class PreferenceCreatedEvent(ServerEvent):
    """A preferred candidate was stored (the reply to `voxgate.preference.create`)."""

    type: Literal["voxgate.preference.created"] = "voxgate.preference.created"
    pair: PairRecord
    """As `POST /v1/feedback/preferences` answers it."""
