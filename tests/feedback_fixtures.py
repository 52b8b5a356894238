"""Fixtures of the feedback tests (a pytest plugin: `pytest_plugins = ["postgres",
"feedback_fixtures"]`): a feedback store on each database, SQLite and a real PostgreSQL
(`postgres.py`), with a clock the test moves (`feedback_data.py`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from feedback_data import Clock

from voxgate.server.feedback_settings import FeedbackSettings
from voxgate.server.feedback_store import FeedbackStore


@pytest.fixture(params=["sqlite", "postgresql"])
def feedback_settings(request: pytest.FixtureRequest) -> FeedbackSettings:
    """Feedback on, audio kept, on the embedded SQLite file or a fresh PostgreSQL database."""
    url = request.getfixturevalue("postgres_database") if request.param == "postgresql" else None
    return FeedbackSettings(enabled=True, audio=True, database_url=url)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(
    feedback_settings: FeedbackSettings, tmp_path: Path, clock: Clock
) -> AsyncIterator[FeedbackStore]:
    async with FeedbackStore.start(feedback_settings, tmp_path, clock) as store:
        yield store
