"""Scores: entity spans (one implementation for NER training and validation), entity F1 and token scores,
checked by hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from muxdeploy.evaluation.metrics import IGNORE_LABEL as IGNORE
from muxdeploy.evaluation.metrics import entity_scores, entity_spans, is_bio, token_scores


def test_entity_spans_and_scores_follow_seqeval_default_mode() -> None:
    assert entity_spans(["B-per", "I-per", "O", "B-loc"]) == {("per", 0, 2), ("loc", 3, 4)}
    assert entity_spans(["O", "I-per", "I-per"]) == {("per", 1, 3)}  # I after O opens a chunk
    assert entity_spans(["B-per", "I-loc"]) == {("per", 0, 1), ("loc", 1, 2)}
    assert entity_spans(["B-per", "B-per"]) == {("per", 0, 1), ("per", 1, 2)}
    s = entity_scores([["B-per", "I-per", "O", "B-loc"]], [["B-per", "O", "O", "B-loc"]])
    assert (s["correct"], s["gold"], s["predicted"]) == (1, 2, 2) and s["f1"] == pytest.approx(0.5)


def test_entity_spans_follow_conll_bio() -> None:
    tags = ["B-per", "I-per", "O", "I-loc", "I-loc", "B-loc", "B-per", "I-loc"]
    assert entity_spans(tags) == {("per", 0, 2), ("loc", 3, 5), ("loc", 5, 6), ("per", 6, 7), ("loc", 7, 8)}
    assert entity_spans(["O", "O"]) == set()
    assert is_bio(["O", "B-x", "I-x"]) and not is_bio(["neg", "pos"]) and not is_bio(None)


def test_token_scores_count_only_scored_positions_and_whole_spans() -> None:
    labels = ["O", "B-x", "I-x"]
    gold = [np.array([IGNORE, 1, 2, 0, 1, IGNORE]), np.array([0, 0])]
    pred = [np.array([0, 1, 2, 0, 1, 0]), np.array([1, 0])]
    # scored: [1,2,0,1] vs [1,2,0,1] -> 4/4; [0,0] vs [1,0] -> 1/2; spans gold {x(0,2), x(3,4)} all found,
    # predicted spurious x in sentence 2: P = 2/3, R = 2/2, F1 = 0.8
    scores = token_scores(gold, pred, labels)
    assert scores["token_accuracy"] == pytest.approx(5 / 6)
    assert scores["entity_f1"] == pytest.approx(0.8)
    # a prediction cut short (truncated instance) scores only what it covers
    assert token_scores([np.array([1, 2, 0])], [np.array([1, 2])], labels)["token_accuracy"] == 1.0


def test_without_any_entity_f1_is_zero_for_ner_and_none_for_validation() -> None:
    assert entity_scores([["O", "O"]], [["O", "O"]])["f1"] == 0.0
    assert token_scores([np.array([0, 0])], [np.array([0, 0])], ["O", "B-x", "I-x"])["entity_f1"] is None
    assert token_scores([np.array([0, 1])], [np.array([0, 1])], ["a", "b"])["entity_f1"] is None  # not BIO
    (span,) = entity_spans(["O", "B-x"])
    assert (span.kind, span.start, span.end) == ("x", 1, 2)
