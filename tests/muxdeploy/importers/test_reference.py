"""What both reference importers share: task inference, the config values that map one to one, the GELU check."""

from __future__ import annotations

import pytest

from muxdeploy.core.errors import UserInputError
from muxdeploy.importers.reference import (
    CONFIG_KEYS,
    other_config_values,
    require_exact_gelu,
    resolve_task,
    shared_config_values,
)


def test_task_comes_from_the_argument_else_from_architectures() -> None:
    token = {"architectures": ["MuxedBertForTokenClassification"]}
    assert resolve_task(token, None) == "token_classification"
    assert resolve_task({"architectures": ["RobertaSequenceClassificationMuxed"]}, None) == "sequence_classification"
    assert resolve_task({}, None) == "sequence_classification"
    assert resolve_task(token, "retrieval") == "retrieval"


def test_num_labels_is_given_or_counted_from_id2label() -> None:
    assert shared_config_values({"num_labels": 5, "id2label": {"0": "a"}})["num_labels"] == 5
    assert shared_config_values({"id2label": {"0": "a", "1": "b"}})["num_labels"] == 2
    assert "num_labels" not in shared_config_values({"hidden_size": 8})


def test_config_values_split_into_mapped_keys_and_the_rest() -> None:
    ref = {"hidden_size": 8, "num_instances": 2, "model_type": "bert", "architectures": ["X"]}
    assert shared_config_values(ref) == {"hidden_size": 8, "num_instances": 2}
    assert other_config_values(ref) == {"model_type": "bert", "architectures": ["X"]}
    assert set(shared_config_values(ref)) <= set(CONFIG_KEYS)


def test_only_exact_gelu_is_accepted() -> None:
    require_exact_gelu({}, "DataMUX")
    require_exact_gelu({"hidden_act": "gelu"}, "DataMUX")
    with pytest.raises(UserInputError, match="hidden_act 'gelu_new' is not supported; MUX-BERT uses exact 'gelu'"):
        require_exact_gelu({"hidden_act": "gelu_new"}, "MUX-BERT")
