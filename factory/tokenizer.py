"""WordPiece tokenization for text encoders, from the encoder's own vocab.txt and tokenizer.json.

The work is done by Hugging Face's `tokenizers` (lower-casing, accent stripping, punctuation
and CJK splitting, WordPiece, `[CLS]` ... `[SEP]`, truncation, padding to a fixed length).
`contract()` is what an app must reproduce to feed the exported model: it goes into the
manifest and the artifacts' metadata, and the JavaScript tokenizer for browser pages follows it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from targets.errors import FactoryError

INPUT_NAME = "input_ids"  # the exported model's one input: int32 [batch, max_length], padding 0


@dataclass(frozen=True)
class WordPiece:
    folder: Path  # holds vocab.txt and tokenizer.json
    max_length: int  # tokens per text, [CLS] and [SEP] included; longer texts are truncated

    @cached_property
    def _tokenizer(self):
        from tokenizers import Tokenizer

        path = self.folder / "tokenizer.json"
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise FactoryError(f"{path}: not a readable tokenizer ({exc})") from None
        tokenizer.no_truncation()
        tokenizer.no_padding()
        tokenizer.enable_truncation(self.max_length)
        tokenizer.enable_padding(length=self.max_length, pad_id=self.special_ids["[PAD]"], pad_token="[PAD]")
        return tokenizer

    @cached_property
    def vocab(self) -> list[str]:
        return (self.folder / "vocab.txt").read_text(encoding="utf-8").splitlines()

    @cached_property
    def special_ids(self) -> dict[str, int]:
        index = {token: i for i, token in enumerate(self.vocab)}
        return {token: index[token] for token in ("[PAD]", "[UNK]", "[CLS]", "[SEP]")}

    def encode(self, texts: list[str]) -> np.ndarray:
        """int32 token ids [len(texts), max_length]."""
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        return np.asarray([e.ids for e in encodings], dtype=np.int32).reshape(len(texts), self.max_length)

    def contract(self) -> dict:
        """What an app must do to turn text into the model's input."""
        vocab_file = self.folder / "vocab.txt"
        return {
            "tokenizer": "wordpiece", "vocab": "vocab.txt",
            "vocab_sha256": hashlib.sha256(vocab_file.read_bytes()).hexdigest(),
            "lower_case": True, "strip_accents": True, "max_length": self.max_length,
            "input": INPUT_NAME, "input_dtype": "int32",
            **{name.strip("[]").lower() + "_id": i for name, i in self.special_ids.items()},
        }
