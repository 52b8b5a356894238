"""Feedback in the browser client (`clients/web/feedback.js`), in headless Chromium, against
real cascade servers: one that captures answers (started here, its feedback database in a test
folder) and the default one, which does not.

With capture on, the page says what is recorded, a spoken question is answered and rated with
a thumb, and the next spoken turn, armed with "Compare two answers", is answered twice: both
candidates shown, the second played from its kept audio and preferred. What the page sent is
checked where it ends up, in the feedback store, through `voxgate feedback export` run as an
operator would (a subprocess with the server's settings). With capture off, the page shows no
notice, no thumbs and no compare control, and a typed message is answered as usual.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from audio_checks import words
from browser_page import SCRIPTED_MIC, chromium, save_screenshot, say, watch_problems
from engine_server import RunningServer, launch
from openai import OpenAI

pytestmark = [pytest.mark.engine, pytest.mark.timeout(600)]

QUESTION = "What is the capital of France?"
FOLLOW_UP = "And what is the capital of Italy?"
ANSWER_TIMEOUT_MS = 240_000
ANSWERED = """() => {
    const s = window.voxgateStats;
    const answered = (t) => t.status === 'completed' || t.status === 'incomplete';
    return s.turns.filter(answered).length >= %d;
}"""
"""An answer ended whole (`incomplete`: it reached max_output_tokens, a whole answer too)."""


@pytest.fixture(scope="module")
def capture_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The settings of a server that captures answers and their audio, in a folder of its own."""
    folder = tmp_path_factory.mktemp("browser-feedback")
    return {
        "VOXGATE_FEEDBACK__ENABLED": "true",
        "VOXGATE_FEEDBACK__AUDIO": "true",
        "VOXGATE_FEEDBACK__DATABASE_URL": f"sqlite:///{folder / 'feedback.sqlite3'}",
        "VOXGATE_FEEDBACK__AUDIO_DIR": str(folder / "audio"),
    }


@pytest.fixture(scope="module")
def capturing_server(
    tmp_path_factory: pytest.TempPathFactory, capture_env: dict[str, str]
) -> Iterator[RunningServer]:
    with launch(tmp_path_factory, "cascade-feedback", capture_env) as running:
        yield running


def exported(env: dict[str, str], fmt: str, out: Path) -> list[dict[str, Any]]:
    """`voxgate feedback export --format FMT`, run as an operator runs it, read back."""
    command = ["feedback", "export", "--format", fmt, "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "voxgate.server.cli", *command],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]


def open_page(browser: Any, server: RunningServer) -> tuple[Any, list[str]]:
    """The page, connected with a client secret, its microphone scripted (`say`); and the
    problems it reports (uncaught errors, console errors), from its first script on."""
    sdk = OpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key)
    secret = sdk.realtime.client_secrets.create().value
    sdk.close()
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    problems = watch_problems(page)
    page.add_init_script(SCRIPTED_MIC)
    page.goto(f"{server.base_url}/?token={secret}")
    page.wait_for_function("window.voxgateStats.authMode !== 'unknown'")
    page.click("#connect")
    page.wait_for_function("voxgateStats.state === 'connected'", timeout=30_000)
    return page, problems


def test_thumbs_and_a_compared_pair(
    capturing_server: RunningServer, capture_env: dict[str, str], speak, tmp_path: Path
) -> None:
    question, follow_up = speak(QUESTION), speak(FOLLOW_UP)
    with chromium() as browser:
        page, problems = open_page(browser, capturing_server)
        try:
            rate_and_compare(page, question, follow_up)
        except BaseException:
            save_screenshot(page, "browser-feedback-failure.png")
            print("page:", page.evaluate("voxgateStats"), "\nproblems:", problems)
            print("server:", capturing_server.log_tail())
            raise
        save_screenshot(page, "browser-feedback.png")
        stats = page.evaluate("voxgateStats")
    assert not problems, problems
    assert stats["errors"] == [] and stats["feedback"]["errors"] == [], stats
    assert stats["flushes"] == 0, stats  # neither answer was interrupted

    # What the page sent is in the store: the rating, and the preferred candidate of the pair.
    (rated,) = stats["feedback"]["ratings"]
    ratings = exported(capture_env, "ratings", tmp_path / "ratings")
    assert [(r["response_id"], r["rating"], r["regime"]) for r in ratings] == [
        (rated["responseId"], 1, "realtime")
    ]
    # The rated answer's prompt ends with the user's turn as the server heard it (what it told
    # the page). Whether Whisper heard "France" is test_browser.py's business, not the store's.
    heard = [words(text) for text in stats["userTranscripts"]]
    assert words(ratings[0]["prompt"][-1]["content"]) in heard, (ratings[0]["prompt"], heard)
    (pair,) = stats["feedback"]["pairs"]
    (preferred,) = exported(capture_env, "dpo", tmp_path / "dpo")
    assert preferred["pair_id"] == pair["pairId"]
    assert preferred["chosen_response_id"] == pair["responseIds"][1]
    assert preferred["rejected_response_id"] == pair["responseIds"][0]
    assert words(preferred["chosen"][0]["content"]) == words(pair["texts"][1])
    assert words(preferred["rejected"][0]["content"]) == words(pair["texts"][0])


def rate_and_compare(page: Any, question: Any, follow_up: Any) -> None:
    # The page says what this server records, audio included.
    notice = page.locator("#feedback-notice")
    assert notice.is_visible() and "audio" in notice.inner_text(), notice.inner_text()
    assert page.evaluate("voxgateStats.feedback") == {
        "enabled": True,
        "audio": True,
        "ratings": [],
        "preferences": [],
        "pairs": [],
        "candidatePlays": 0,
        "errors": [],
    }
    assert page.is_visible("#compare") and page.is_enabled("#compare")

    # A spoken question, answered: the answer gets thumbs; thumbs up is sent and marked.
    say(page, question)
    page.wait_for_function(ANSWERED % 1, timeout=ANSWER_TIMEOUT_MS)
    page.wait_for_selector(".turn.assistant .rating .thumb", timeout=10_000)
    turn = page.evaluate("voxgateStats.turns[0]")
    rating = page.locator(f'.rating[data-response-id="{turn["responseId"]}"]')
    rating.locator('.thumb[data-rating="1"]').click()
    page.wait_for_selector('.rating[data-state="rated"] .thumb[aria-pressed="true"]')
    assert rating.locator('.thumb[data-rating="1"]').get_attribute("aria-pressed") == "true"
    assert rating.locator('.thumb[data-rating="-1"]').get_attribute("aria-pressed") == "false"
    assert page.evaluate("voxgateStats.feedback.ratings") == [
        {"responseId": turn["responseId"], "rating": 1}
    ]

    # The next spoken turn, armed, is answered twice. Spoken once the answer has played (all
    # but the jitter buffer's look-ahead of a few ms), so that it is no interruption.
    page.wait_for_function(
        "voxgateStats.audioSecondsPlayed >= voxgateStats.audioSecondsReceived - 0.05",
        timeout=60_000,
    )
    page.click("#compare")
    assert page.get_attribute("#compare", "aria-pressed") == "true"
    say(page, follow_up)
    page.wait_for_function(
        "voxgateStats.feedback.pairs.length === 1", timeout=2 * ANSWER_TIMEOUT_MS
    )
    (pair,) = page.evaluate("voxgateStats.feedback.pairs")
    first, second = pair["responseIds"]
    assert pair["pairId"] and first != second, pair
    assert set(pair["statuses"]) <= {"completed", "incomplete"}, pair
    assert all(words(text) for text in pair["texts"]), pair
    assert pair["audioSeconds"] > 0.3, pair  # candidate 1's audio, kept from its deltas
    assert page.get_attribute("#compare", "aria-pressed") == "false"  # one pair per arming
    # Candidate 0 was the turn's answer (in the conversation, spoken); candidate 1 was not.
    turns = page.evaluate("voxgateStats.turns")
    assert [t["responseId"] for t in turns] == [turn["responseId"], first], turns
    view = page.locator(".turn.compare")
    assert view.count() == 1
    for index, response_id in enumerate((first, second)):
        box = view.locator(f'.candidate[data-candidate="{index}"]')
        assert box.get_attribute("data-response-id") == response_id
        assert box.locator(".text").inner_text() == pair["texts"][index]

    # Candidate 1 is played from its kept audio, and preferred.
    view.locator(".play").click()
    page.wait_for_function("voxgateStats.feedback.candidatePlays === 1")
    view.locator('.candidate[data-candidate="1"] .prefer').click()
    page.wait_for_selector('.candidate[data-candidate="1"].preferred', timeout=10_000)
    assert page.evaluate("voxgateStats.feedback.preferences") == [
        {"pairId": pair["pairId"], "chosenResponseId": second}
    ]
    assert view.get_attribute("data-chosen") == second
    assert not page.locator('.candidate[data-candidate="0"]').evaluate(
        "box => box.classList.contains('preferred')"
    )


def test_without_capture_the_page_shows_no_feedback(server: RunningServer) -> None:
    """The default server captures nothing: no notice, no thumbs, no compare control; a typed
    message is answered as any other."""
    with chromium() as browser:
        page, problems = open_page(browser, server)
        try:
            assert not page.is_visible("#feedback-notice")
            assert not page.is_visible("#compare")
            page.fill("#message", "Hello! Who are you?")
            page.press("#message", "Enter")
            page.wait_for_function(ANSWERED % 1, timeout=ANSWER_TIMEOUT_MS)
            page.wait_for_function("voxgateStats.assistantTranscripts.length > 0")
            stats = page.evaluate("voxgateStats")
            assert page.inner_text(".turn.user .text") == "Hello! Who are you?"
            assert stats["typedMessages"] == ["Hello! Who are you?"]
            assert words(page.inner_text(".turn.assistant .text"))
            assert page.locator(".rating, .turn.compare").count() == 0
            assert stats["feedback"]["enabled"] is False and stats["errors"] == []
        except BaseException:
            save_screenshot(page, "browser-no-feedback-failure.png")
            raise
    assert not problems, problems
