"""The OpenAPI schema the app publishes, fuzzed with schemathesis over the fake backbone.

Every documented HTTP operation gets a bounded number of generated requests, valid and invalid
(random files, out-of-range numbers, wrong types, unknown fields); none may get a 5xx. The
examples are derandomised, so a run is reproducible, and kept few, so the test stays quick.
Feedback capture is on (its SQLite database in a temporary folder), so the feedback routes and
speech candidates do their work instead of refusing it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fakes import FakeBackbone, backbone_factory
from hypothesis import HealthCheck, settings
from in_process import TEST_HOSTS, feedback_on
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode

from voxgate.model.artifacts import default_home
from voxgate.server.app import create_app
from voxgate.server.settings import RestSettings, Settings

pytestmark = pytest.mark.timeout(120)

MAX_EXAMPLES = 12
"""Per operation and generation mode."""
FEEDBACK_FOLDER = tempfile.TemporaryDirectory(prefix="voxgate-fuzz-")
"""The feedback database's folder: made at import (so is the app, for schemathesis), removed
once the module's tests are done."""

APP = create_app(
    Settings(
        home=default_home(),
        fetch_missing_models=False,
        allowed_hosts=TEST_HOSTS,
        api_key=None,
        # Small limits, so that generated bodies also run into them.
        rest=RestSettings(max_upload_bytes=64 << 10, max_text_chars=200, max_audio_seconds=5),
        feedback=feedback_on(Path(FEEDBACK_FOLDER.name), audio=True),
    ),
    backbone_factory=backbone_factory(FakeBackbone()),
)
SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", APP)
SCHEMA.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])


@pytest.fixture(scope="module", autouse=True)
def _remove_feedback_folder() -> Iterator[None]:
    yield
    FEEDBACK_FOLDER.cleanup()


@SCHEMA.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_operation_answers_with_a_server_error(case) -> None:
    case.call_and_validate(checks=[not_a_server_error])
