"""Where a transformers tokenizer puts a text's words among its special tokens and padding,
read from the tokenizer itself (SigLIP's T5 tokenizer pads with its end token; SigLIP 2's Gemma
tokenizer starts with a begin token, may end without an end token and pads with its own id):
what the FrozenCLIP text contract needs. One reader for every adapter of such a tokenizer
(open_clip's SigLIP / SigLIP 2, transformers' SiglipModel / Siglip2Model)."""

from __future__ import annotations

from typing import Optional

import torch

from clipml.errors import BackboneError

PROBE_TEXT = "a photo of a dog"  # the tokenizer of a model must know these words (an offline one may be empty)


class TokenizerLayout:
    """`leading_tokens`, `end_token_id` and each text's length for a tokenizer that pads on the right.

    Padding policy: a tokenizer set to pad (or truncate) on the left is refused, not switched. SigLIP
    towers were trained on texts padded on the right to 64 tokens and read at the last position;
    the libraries' own `encode_text` / `get_text_features` take the ids the tokenizer gives as its
    files configure it, so clipml's prompts equal the library's features only for the side those
    files name. The hub's SigLIP tokenizers are saved with right padding."""

    def __init__(self, tokenizer, what: str, vocab_size: Optional[int] = None) -> None:
        sides = {key: getattr(tokenizer, key, "right") for key in ("padding_side", "truncation_side")}
        left = [f'"{key}": "{side}"' for key, side in sides.items() if side != "right"]
        if left:
            raise BackboneError(
                f"{what}: its tokenizer is set to {', '.join(left)} in {_config_file(tokenizer)}; SigLIP towers "
                "were trained on texts padded on the right and read at the last position, and the library's own "
                "text features are those only for a tokenizer that pads on the right: set \"padding_side\": "
                "\"right\" and \"truncation_side\": \"right\" there, as the hub's SigLIP tokenizers ship")
        if tokenizer.pad_token_id is None:
            raise BackboneError(f"{what}: its tokenizer has no padding token; SigLIP pads every text")
        self.pad_id = int(tokenizer.pad_token_id)
        with_marks = tokenizer(PROBE_TEXT, add_special_tokens=True).input_ids
        words = tokenizer(PROBE_TEXT, add_special_tokens=False).input_ids
        if vocab_size is not None:
            _check_vocabulary(tokenizer, words, vocab_size, what)
        starts = [i for i in range(len(with_marks)) if with_marks[i: i + len(words)] == words]
        if not words or not starts:
            raise BackboneError(f"{what}: cannot find a text's words among its tokenizer's special tokens")
        self.leading_tokens = starts[0]
        self.trailing_tokens = len(with_marks) - starts[0] - len(words)  # an end token (1) or none (0)
        # Without an end token the padding ends a text (SigLIP 2's Gemma tokenizer as the tiny one).
        self.end_token_id = int(with_marks[-1]) if self.trailing_tokens else self.pad_id

    def text_lengths(self, ids: torch.Tensor) -> torch.Tensor:
        """Real tokens of each text [T]: up to its end token (or its last word), before the padding.

        Where the end token is also the padding (SigLIP), the first one ends the text."""
        is_pad = ids == self.pad_id
        length = ids.shape[1]
        first = torch.where(is_pad.any(dim=-1), is_pad.int().argmax(dim=-1), torch.full_like(ids[:, 0], length))
        if self.pad_id == self.end_token_id and self.trailing_tokens:
            first = (first + 1).clamp(max=length)
        return first

    def word_slice(self, ids: torch.Tensor) -> torch.Tensor:
        """The word ids of one tokenized text [1, L]: no start, end or padding token."""
        end = int(self.text_lengths(ids)[0]) - self.trailing_tokens
        return ids[0, self.leading_tokens: end]


def _config_file(tokenizer) -> str:
    """Where the tokenizer's settings were read from, to name in an error."""
    source = getattr(tokenizer, "name_or_path", "") or "the tokenizer's folder"
    return f"{source}/tokenizer_config.json"


def _check_vocabulary(tokenizer, words, vocab_size: int, what: str) -> None:
    """A tokenizer of another model gives unknown words or ids past the model's embedding table."""
    known = [i for i in words if i != tokenizer.unk_token_id and i < vocab_size]
    if not words or len(known) != len(words):
        raise BackboneError(f"{what}: the tokenizer does not fit the model (it gives {words} for {PROBE_TEXT!r}, "
                            f"with a vocabulary of {vocab_size}); download the model's own tokenizer files")
