"""Every command's --help: an example of the command itself, and defaults that are the code's."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from muxdeploy.cli import main


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_help_has_an_example(name: str) -> None:
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert re.search(r"^\s*Examples?:\s*$", result.output, re.M), result.output
    assert re.search(rf"^\s+muxdeploy {re.escape(name)}\b", result.output, re.M), result.output


def test_train_help_defaults_are_the_code_defaults() -> None:
    from muxdeploy.training.retrieval import RETRIEVAL_SEQ_LEN
    from muxdeploy.training.sentiment import SENTIMENT_RECIPE, SENTIMENT_SEQ_LEN, SENTIMENT_STEPS

    text = " ".join(CliRunner().invoke(main, ["train", "--help"]).output.split())
    assert f"Default: {SENTIMENT_SEQ_LEN} for sentiment" in text
    assert f"{RETRIEVAL_SEQ_LEN} for retrieval" in text
    assert f"{SENTIMENT_STEPS:,} steps of {SENTIMENT_RECIPE['batch_groups']} groups" in text
