"""Where a transformers tokenizer puts a text's words among its special tokens and padding,
read from the tokenizer itself (SigLIP's T5 tokenizer pads with its end token; others start
with a begin token and pad with their own id): what the FrozenCLIP text contract needs."""

from __future__ import annotations

import torch

from clipml.errors import BackboneError


class TokenizerLayout:
    """`leading_tokens`, `end_token_id` and each text's length for a padded HF tokenizer."""

    def __init__(self, tokenizer, what: str) -> None:
        if getattr(tokenizer, "padding_side", "right") != "right":
            raise BackboneError(f"{what}: its tokenizer pads on the {tokenizer.padding_side}; "
                                "clipml's prompts need padding on the right")
        if tokenizer.pad_token_id is None:
            raise BackboneError(f"{what}: its tokenizer has no padding token")
        self.pad_id = int(tokenizer.pad_token_id)
        with_marks = tokenizer("a", add_special_tokens=True).input_ids
        words = tokenizer("a", add_special_tokens=False).input_ids
        starts = [i for i in range(len(with_marks)) if with_marks[i: i + len(words)] == words]
        if not words or not starts:
            raise BackboneError(f"{what}: cannot find a text's words among its tokenizer's special tokens")
        self.leading_tokens = starts[0]
        self.trailing_tokens = len(with_marks) - starts[0] - len(words)  # an end token (1) or none (0)
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
