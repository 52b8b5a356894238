"""What the routes share, built once by the lifespan (`server/app.py`) and kept in
`app.state.services`: the backbone, the models beside it, the feedback store, and the counts
that bound their use."""

from __future__ import annotations

from dataclasses import dataclass, field

from voxgate.model.backbone import Backbone
from voxgate.model.voices import VoiceBook
from voxgate.server.admission import RestAdmission
from voxgate.server.client_secret_store import ClientSecretStore
from voxgate.server.drain import Drain
from voxgate.server.engine_watch import EngineWatch
from voxgate.server.feedback_store import FeedbackStore
from voxgate.server.settings import Settings
from voxgate.streaming.config import SessionConfig, Transcription
from voxgate.streaming.denoise import RNNoiseLibrary
from voxgate.streaming.slots import Slots
from voxgate.streaming.vad import SileroModel, SileroVad


@dataclass
class Services:
    """Built once by the lifespan (`server/app.py`) and kept in `app.state.services`."""

    settings: Settings
    backbone: Backbone
    vad_model: SileroModel
    client_secrets: ClientSecretStore
    voices: VoiceBook
    """The backbone's voices and the aliases clients may use for them."""
    feedback: FeedbackStore
    """Captured answers and people's feedback on them (off unless `feedback.enabled`)."""
    rnnoise: RNNoiseLibrary | None = None
    """The noise suppressor sessions run when they ask for `noise_reduction` (None: off)."""
    sessions: Slots = field(init=False)
    """Realtime sessions open (`realtime.max_sessions`)."""
    out_of_band_responses: Slots = field(init=False)
    """Out-of-band realtime responses running, over all sessions."""
    rest: RestAdmission = field(init=False)
    """REST requests let in: bodies being received, requests being served
    (`server/admission.py`)."""
    drain: Drain = field(init=False)
    """Graceful shutdown: whether the server still takes new work (`server/drain.py`)."""
    engine_watch: EngineWatch = field(init=False)
    """Whether the engine has died (`server/engine_watch.py`)."""

    def __post_init__(self) -> None:
        self.sessions = Slots(self.settings.realtime.max_sessions)
        self.out_of_band_responses = Slots(self.settings.realtime.max_out_of_band_responses)
        self.rest = RestAdmission(self.settings.rest)
        self.drain = Drain(self.settings.drain_deadline_s, self.sessions, self.rest.requests)
        self.engine_watch = EngineWatch(lambda: self.backbone.is_healthy)

    @property
    def model_name(self) -> str:
        return f"voxgate-{self.backbone.name}"

    def new_vad(self) -> SileroVad:
        return SileroVad(self.vad_model)

    def default_session_config(self) -> SessionConfig:
        return SessionConfig(
            instructions=self.settings.realtime.instructions,
            voice=self.voices.default,
            # The transcript is computed anyway (the cascade's LM reads it): send it by default.
            transcription=Transcription(model=self.model_name),
            # The backbone's default answer (a few sentences; Step-Audio-2: a minute of
            # speech), within the operator's cap; a session may ask for more up to the cap.
            max_output_tokens=min(
                self.backbone.answer_budget.default_tokens,
                self.settings.realtime.session.answer_cap(self.backbone.answer_budget),
            ),
        )
