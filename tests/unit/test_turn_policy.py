"""The turn-taking policy on synthetic event sequences: no audio, no model, no asyncio.

Each test feeds `TurnPolicy` what happened and asserts the exact decisions it returns."""

from __future__ import annotations

import pytest

from voxgate.streaming.config import TurnDetection
from voxgate.streaming.turn_decisions import (
    Adopt,
    Answer,
    AnswerEarly,
    AnswerOnRequest,
    Commit,
    Configured,
    Decision,
    DropDraft,
    DropSpeculation,
    EarlyTranscript,
    EndTurnNow,
    Hold,
    Interrupt,
    Release,
    ReleaseDraft,
    ResponseBegan,
    ResponseDone,
    ResponseEnded,
    ResponseRequested,
    SetMinSpeech,
    SetSilence,
    Speculate,
    StopHeld,
    Transcript,
    TurnInput,
    Unanswered,
    UserCleared,
    UserCommitted,
    UserFinished,
    UserPaused,
    UserResumed,
    UserStarted,
    Why,
)
from voxgate.streaming.turn_policy import SEMANTIC_EARLY_MS, Reply, TurnPolicy, pause_ms
from voxgate.streaming.vad import VadParams

VAD = VadParams(min_speech_ms=96, silence_duration_ms=500)
PLAIN = TurnDetection(vad=VAD, min_interruption_ms=250, speculative_start_ms=None)
SPECULATIVE = PLAIN.model_copy(update={"speculative_start_ms": 200})
SEMANTIC = PLAIN.model_copy(update={"eagerness": "high"})
JUDGING = PLAIN.model_copy(update={"min_interruption_words": 2})


def policy_for(detection: TurnDetection | None) -> TurnPolicy:
    """A policy configured with `detection` (its first thresholds checked and put aside)."""
    policy = TurnPolicy()
    expected = [] if detection is None else [SetMinSpeech(96), SetSilence(500)]
    assert policy.step(Configured(detection)) == expected
    return policy


def run(policy: TurnPolicy, *events: TurnInput) -> list[Decision]:
    return [decision for event in events for decision in policy.step(event)]


def test_a_plain_turn_is_committed_then_answered_once_its_words_are_known() -> None:
    policy = policy_for(PLAIN)
    assert run(policy, UserStarted("u1"), UserFinished("u1")) == [Commit("u1")]
    assert policy.replies == {"u1": Reply.WHEN_TRANSCRIBED}
    assert policy.step(Transcript("u1", "hello there")) == [Answer("u1")]
    assert policy.replies == {}
    # While the agent speaks, a short sound must not start a turn; after, it may again.
    assert policy.step(ResponseBegan("r1", audio=True)) == [SetMinSpeech(250)]
    assert run(policy, ResponseEnded("r1"), ResponseDone("r1")) == [SetMinSpeech(96)]


def test_a_turn_without_words_is_not_answered() -> None:
    policy = policy_for(PLAIN)
    run(policy, UserStarted("u1"), UserFinished("u1"))
    assert policy.step(Transcript("u1", "  ")) == [Unanswered("u1", Why.NO_WORDS)]


def test_a_speculation_is_adopted_when_the_turn_ends_at_the_pause() -> None:
    policy = policy_for(SPECULATIVE)
    assert run(policy, UserStarted("u1"), UserPaused("u1")) == [Speculate("u1", 1)]
    assert policy.step(EarlyTranscript(1, "good morning")) == [AnswerEarly(1)]
    assert policy.step(UserFinished("u1")) == [Adopt("u1", 1)]
    assert policy.replies == {"u1": Reply.DRAFTED}
    assert policy.step(Transcript("u1", "good morning")) == [ReleaseDraft("u1")]
    assert policy.step(ResponseBegan("r1", audio=True)) == [SetMinSpeech(250)]


def test_a_speculation_is_dropped_when_the_user_goes_on() -> None:
    policy = policy_for(SPECULATIVE)
    run(policy, UserStarted("u1"), UserPaused("u1"), EarlyTranscript(1, "good morning"))
    assert policy.step(UserResumed()) == [DropSpeculation(1)]
    # A late transcript of the dropped speculation changes nothing.
    assert policy.step(EarlyTranscript(1, "good morning")) == []
    assert policy.step(UserPaused("u1")) == [Speculate("u1", 2)]
    assert policy.step(EarlyTranscript(2, "good morning good morning")) == [AnswerEarly(2)]
    assert policy.step(UserFinished("u1")) == [Adopt("u1", 2)]


def test_no_early_answer_while_the_agent_speaks() -> None:
    policy = policy_for(SPECULATIVE.model_copy(update={"interrupt_response": False}))
    run(policy, ResponseBegan("r1", audio=True), UserStarted("u2"), UserPaused("u2"))
    assert policy.step(EarlyTranscript(1, "and then")) == []
    assert policy.step(UserFinished("u2")) == [Adopt("u2", 1)]
    assert policy.replies == {"u2": Reply.WHEN_TRANSCRIBED}


def test_one_early_answer_at_a_time() -> None:
    policy = policy_for(SPECULATIVE.model_copy(update={"interrupt_response": False}))
    run(policy, UserStarted("u1"), UserPaused("u1"), EarlyTranscript(1, "hi"), UserFinished("u1"))
    # u1's early answer still waits for u1's words: u2 is answered the usual way.
    run(policy, UserStarted("u2"), UserPaused("u2"))
    assert policy.step(EarlyTranscript(2, "there")) == []
    assert policy.step(UserFinished("u2")) == [Adopt("u2", 2)]
    assert policy.replies == {"u1": Reply.DRAFTED, "u2": Reply.WHEN_TRANSCRIBED}


def test_a_complete_thought_ends_the_turn_early() -> None:
    policy = policy_for(SEMANTIC)
    assert run(policy, UserStarted("u1"), UserPaused("u1")) == [Speculate("u1", 1)]
    assert policy.step(EarlyTranscript(1, "Good morning.")) == [EndTurnNow(1)]
    assert policy.step(UserFinished("u1")) == [Adopt("u1", 1)]
    assert policy.step(Transcript("u1", "Good morning.")) == [Answer("u1")]


@pytest.mark.parametrize("words", ["Good morning and", "Well, um", "So...", "..."])
def test_a_thought_that_trails_off_waits_twice_the_silence(words: str) -> None:
    policy = policy_for(SEMANTIC)
    run(policy, UserStarted("u1"), UserPaused("u1"))
    assert policy.step(EarlyTranscript(1, words)) == [SetSilence(1000)]
    # The silence comes back to its own value when the turn ends (or the user goes on).
    assert policy.step(UserFinished("u1")) == [SetSilence(500), Adopt("u1", 1)]
    run(policy, UserStarted("u2"), UserPaused("u2"), EarlyTranscript(2, words))
    assert policy.step(UserResumed()) == [SetSilence(500), DropSpeculation(2)]


def test_a_patient_listener_does_not_end_a_complete_thought_early() -> None:
    policy = policy_for(SEMANTIC.model_copy(update={"eagerness": "low"}))
    run(policy, UserStarted("u1"), UserPaused("u1"))
    assert policy.step(EarlyTranscript(1, "Good morning.")) == []


def test_the_pause_is_reported_for_speculation_or_semantic_end_only() -> None:
    assert pause_ms(PLAIN) is None
    assert pause_ms(SPECULATIVE) == 200
    assert pause_ms(SEMANTIC) == SEMANTIC_EARLY_MS


def test_barge_in_interrupts_the_answer() -> None:
    policy = policy_for(PLAIN)
    run(policy, UserStarted("u1"), UserFinished("u1"), Transcript("u1", "hi"))
    policy.step(ResponseBegan("r1", audio=True))
    assert policy.step(UserStarted("u2")) == [Interrupt("r1")]
    assert run(policy, ResponseEnded("r1"), ResponseDone("r1")) == [SetMinSpeech(96)]
    assert policy.step(UserFinished("u2")) == [Commit("u2")]
    assert policy.step(Transcript("u2", "stop")) == [Answer("u2")]


def test_barge_in_held_then_judged_an_interruption() -> None:
    policy = policy_for(JUDGING)
    run(policy, UserStarted("u1"), UserFinished("u1"), Transcript("u1", "hi"))
    policy.step(ResponseBegan("r1", audio=True))
    assert policy.step(UserStarted("u2")) == [Hold("r1", "u2")]
    assert policy.step(UserFinished("u2")) == [Commit("u2")]
    # Enough words: the held answer ends as interrupted, and the interruption is answered.
    assert policy.step(Transcript("u2", "no stop talking")) == [StopHeld("r1"), Answer("u2")]
    assert run(policy, ResponseEnded("r1"), ResponseDone("r1")) == [SetMinSpeech(96)]


def test_barge_in_held_then_judged_a_backchannel_and_released() -> None:
    policy = policy_for(JUDGING)
    run(policy, UserStarted("u1"), UserFinished("u1"), Transcript("u1", "hi"))
    policy.step(ResponseBegan("r1", audio=True))
    run(policy, UserStarted("u2"), UserFinished("u2"))
    assert policy.step(Transcript("u2", "yeah")) == [
        Release("r1"),
        Unanswered("u2", Why.FALSE_INTERRUPTION),
    ]
    assert policy.replies == {}


def test_a_backchannel_silences_the_agent_when_asked_to() -> None:
    policy = policy_for(JUDGING.model_copy(update={"false_interruption": "silence"}))
    run(policy, ResponseBegan("r1", audio=True), UserStarted("u2"), UserFinished("u2"))
    assert policy.step(Transcript("u2", "mm")) == [
        StopHeld("r1"),
        Unanswered("u2", Why.FALSE_INTERRUPTION),
    ]


def test_speaking_again_while_held_is_an_interruption() -> None:
    policy = policy_for(JUDGING)
    run(policy, ResponseBegan("r1", audio=True), UserStarted("u2"), UserFinished("u2"))
    assert policy.step(UserStarted("u3")) == [
        Unanswered("u2", Why.USER_WENT_ON),
        StopHeld("r1"),
    ]
    # The words of the turn that started the hold come too late to judge anything.
    assert policy.step(Transcript("u2", "yeah")) == []


def test_a_turn_that_arrives_while_answering_is_answered_after_the_current_answer() -> None:
    policy = policy_for(PLAIN.model_copy(update={"interrupt_response": False}))
    policy.step(ResponseBegan("r1", audio=True))
    assert run(policy, UserStarted("u2"), UserFinished("u2")) == [Commit("u2")]
    assert policy.step(Transcript("u2", "and another thing")) == []
    assert policy.replies == {"u2": Reply.AFTER_CURRENT}
    # It stopped talking; once the client is told it is done, the turn is answered.
    assert policy.step(ResponseEnded("r1")) == []
    assert policy.step(ResponseDone("r1")) == [Answer("u2")]
    assert policy.replies == {}


def test_only_the_newest_turn_waits_after_the_current_answer() -> None:
    policy = policy_for(PLAIN.model_copy(update={"interrupt_response": False}))
    policy.step(ResponseBegan("r1", audio=True))
    run(policy, UserStarted("u2"), UserFinished("u2"), Transcript("u2", "one"))
    run(policy, UserStarted("u3"), UserFinished("u3"))
    assert policy.step(Transcript("u3", "two")) == [Unanswered("u2", Why.SUPERSEDED)]
    assert run(policy, ResponseEnded("r1"), ResponseDone("r1")) == [Answer("u3")]


def test_speech_drops_the_answers_still_waiting_for_words() -> None:
    policy = policy_for(SPECULATIVE)
    run(policy, UserStarted("u1"), UserPaused("u1"), EarlyTranscript(1, "hi"), UserFinished("u1"))
    assert policy.replies == {"u1": Reply.DRAFTED}
    assert policy.step(UserStarted("u2")) == [DropDraft("u1"), Unanswered("u1", Why.USER_WENT_ON)]
    policy.step(UserFinished("u2"))
    assert policy.step(UserStarted("u3")) == [Unanswered("u2", Why.USER_WENT_ON)]
    assert run(policy, Transcript("u1", "hi"), Transcript("u2", "there")) == []


def test_an_early_answer_is_dropped_when_the_words_come_too_late() -> None:
    policy = policy_for(SPECULATIVE.model_copy(update={"interrupt_response": False}))
    run(policy, UserStarted("u1"), UserPaused("u1"), EarlyTranscript(1, "hi"), UserFinished("u1"))
    policy.step(ResponseBegan("r9", audio=True))  # the client's own response.create, meanwhile
    assert policy.step(Transcript("u1", "hi")) == [DropDraft("u1")]
    assert policy.replies == {"u1": Reply.AFTER_CURRENT}


def test_without_automatic_answers_the_next_response_create_answers_the_turn() -> None:
    policy = policy_for(PLAIN.model_copy(update={"create_response": False}))
    assert run(policy, UserStarted("u1"), UserFinished("u1")) == [Commit("u1")]
    assert policy.step(Transcript("u1", "hello")) == []
    assert policy.replies == {"u1": Reply.ON_REQUEST}
    assert policy.step(ResponseRequested()) == [AnswerOnRequest("u1")]
    assert policy.step(ResponseRequested()) == []


def test_a_manual_commit_supersedes_the_turn_left_for_response_create() -> None:
    policy = policy_for(None)
    assert policy.step(UserCommitted("u1")) == [Commit("u1")]
    assert policy.step(UserCommitted("u2")) == [Unanswered("u1", Why.SUPERSEDED), Commit("u2")]
    assert policy.step(ResponseRequested()) == [AnswerOnRequest("u2")]


def test_a_commit_or_clear_ends_the_early_work_of_the_turn() -> None:
    policy = policy_for(SEMANTIC)
    run(policy, UserStarted("u1"), UserPaused("u1"), EarlyTranscript(1, "well, um"))
    assert policy.step(UserCommitted("u1")) == [SetSilence(500), DropSpeculation(1), Commit("u1")]
    run(policy, UserStarted("u2"), UserPaused("u2"))
    assert policy.step(UserCleared()) == [DropSpeculation(2)]


def test_a_new_turn_detection_retunes_the_vad() -> None:
    policy = policy_for(PLAIN)
    policy.step(ResponseBegan("r1", audio=True))
    patient = PLAIN.model_copy(update={"vad": VAD.model_copy(update={"silence_duration_ms": 800})})
    assert policy.step(Configured(patient)) == [SetMinSpeech(250), SetSilence(800)]
    assert policy.step(Configured(None)) == []


def test_a_text_answer_does_not_raise_the_bar_for_speech() -> None:
    policy = policy_for(PLAIN)
    assert policy.step(ResponseBegan("r1", audio=False)) == []
    assert policy.step(UserStarted("u2")) == [Interrupt("r1")]


def test_an_illegal_reply_change_fails_loudly() -> None:
    policy = policy_for(PLAIN)
    run(policy, UserStarted("u1"), UserFinished("u1"))
    with pytest.raises(RuntimeError, match="illegal reply transition"):
        policy.step(UserFinished("u1"))  # the same turn committed twice
