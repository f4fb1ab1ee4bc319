"""The bert-base-uncased WordPiece tokenizer, built from the cached vocab.txt (see `muxdeploy.training.datasets`),
and texts to token ids as the runtime makes them."""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer

from muxdeploy.core.errors import UserInputError
from muxdeploy.training.datasets import bert_vocab_path


def bert_tokenizer(max_length: int | None = None) -> Tokenizer:
    """A lowercasing bert-base-uncased tokenizer ([CLS] ... [SEP]); with `max_length`, truncate and pad to it."""
    wrapper = BertWordPieceTokenizer(str(bert_vocab_path()), lowercase=True)
    tokenizer = Tokenizer.from_str(wrapper.to_str())
    if max_length is not None:
        if max_length < 2:
            raise UserInputError(f"max_length must be at least 2 (room for [CLS] and [SEP]), got {max_length}")
        tokenizer.enable_truncation(max_length=max_length)
        tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]", length=max_length)
    return tokenizer


def tokenizer_from_json(text: str) -> Tokenizer:
    """Rebuild a tokenizer from tokenizer.json content (as written by `Tokenizer.to_str()`)."""
    try:
        return Tokenizer.from_str(text)
    except Exception as exc:  # tokenizers raises plain Exception for malformed JSON
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserInputError(f"not a valid tokenizer.json: {first}") from exc


def tokenize_texts(tokenizer: Tokenizer, texts: Sequence[str], seq_len: int) -> list[list[int]]:
    """Token ids of each text exactly as the runtime makes them: [CLS] text [SEP], truncated to `seq_len`, unpadded."""
    tok = Tokenizer.from_str(tokenizer.to_str())  # a copy: the caller's truncation/padding settings stay untouched
    tok.no_padding()
    tok.enable_truncation(max_length=seq_len)
    return [enc.ids for enc in tok.encode_batch(list(texts))]
