"""Prompts and tokens: which token positions a word or span of a prompt occupies.

Works for any Hugging Face tokenizer by tokenizing growing prefixes that end at word boundaries:
the count of pieces up to a word's end, minus the count before it, is that word's pieces. That
handles BPE words split into several pieces, repeated words and the BOS offset without relying
on a tokenizer-specific offset mapping. A prompt longer than the model's context is reported
(``truncated`` and ``lost_words``), never silently cut.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

import torch

_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class TokenAlignment:
    """Token positions (in the model's input sequence, BOS included) of each word of a prompt."""

    prompt: str
    word_spans: tuple[tuple[int, int], ...]
    word_positions: tuple[tuple[int, ...], ...]
    n_tokens: int  # with special tokens, before truncation
    max_length: int

    @property
    def truncated(self) -> bool:
        return self.n_tokens > self.max_length

    @property
    def last_kept_position(self) -> int:
        """The last content position that survives truncation (the final slot holds EOS)."""
        return self.max_length - 2

    def positions(self, start: int, end: int) -> list[int]:
        """Positions of the words overlapping the character span [start, end)."""
        out: list[int] = []
        for (ws, we), pos in zip(self.word_spans, self.word_positions):
            if ws < end and we > start:
                out.extend(pos)
        return out

    def lost(self, positions: list[int]) -> bool:
        return any(p > self.last_kept_position for p in positions)

    def lost_words(self) -> list[str]:
        return [self.prompt[s:e] for (s, e), pos in zip(self.word_spans, self.word_positions)
                if self.lost(list(pos))]


def _content_ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"]


def _prefix_offset(tokenizer: Any) -> int:
    """How many special tokens precede the content (1 for CLIP's BOS)."""
    probe = "a"
    with_special = tokenizer(probe, truncation=False)["input_ids"]
    content = _content_ids(tokenizer, probe)
    for offset in range(len(with_special) - len(content) + 1):
        if with_special[offset:offset + len(content)] == content:
            return offset
    return 0


def align(tokenizer: Any, prompt: str) -> TokenAlignment:
    """Map each whitespace-separated word of ``prompt`` to its token positions."""
    offset = _prefix_offset(tokenizer)
    spans, positions = [], []
    before = 0
    for match in _WORD.finditer(prompt):
        count = len(_content_ids(tokenizer, prompt[:match.end()]))
        spans.append((match.start(), match.end()))
        positions.append(tuple(range(offset + before, offset + count)))
        before = count
    n_tokens = len(tokenizer(prompt, truncation=False)["input_ids"])
    return TokenAlignment(prompt, tuple(spans), tuple(positions), n_tokens,
                          int(tokenizer.model_max_length))


@dataclass(frozen=True)
class TokenSegment:
    """One tokenizer's tokens in a denoiser's text sequence: ``length`` positions from ``offset``
    (SD3 lays CLIP's 77 tokens, then T5's, side by side)."""

    tokenizer: Any
    offset: int
    length: int


@dataclass(frozen=True)
class JointAlignment:
    """A prompt aligned in every segment of a layout: the same words, a position for each of
    their pieces in each tokenizer. Answers what ``TokenAlignment`` answers, over all segments;
    positions come sorted (segment by segment, in token order)."""

    parts: tuple[tuple[TokenAlignment, TokenSegment], ...]

    @property
    def prompt(self) -> str:
        return self.parts[0][0].prompt

    @property
    def word_spans(self) -> tuple[tuple[int, int], ...]:
        return self.parts[0][0].word_spans

    @property
    def word_positions(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(self.positions(*span)) for span in self.word_spans)

    def _first_truncated(self) -> TokenAlignment:
        return next((a for a, _ in self.parts if a.truncated), self.parts[0][0])

    @property
    def n_tokens(self) -> int:
        return self._first_truncated().n_tokens

    @property
    def max_length(self) -> int:
        return self._first_truncated().max_length

    @property
    def truncated(self) -> bool:
        return any(a.truncated for a, _ in self.parts)

    @property
    def last_kept_position(self) -> int:
        alignment, segment = self.parts[0]
        return segment.offset + alignment.last_kept_position

    def positions(self, start: int, end: int) -> list[int]:
        """A piece cut off by its encoder's length is placed at that segment's last slot (its
        EOS), where ``lost`` reports it, so it never lands in the next segment."""
        return sorted(seg.offset + min(p, seg.length - 1)
                      for a, seg in self.parts for p in a.positions(start, end))

    def lost(self, positions: list[int]) -> bool:
        return any(seg.offset <= p < seg.offset + seg.length and a.lost([p - seg.offset])
                   for p in positions for a, seg in self.parts)

    def lost_words(self) -> list[str]:
        return [self.prompt[s:e] for (s, e), pos in zip(self.word_spans, self.word_positions)
                if self.lost(list(pos))]


def align_layout(layout: tuple[TokenSegment, ...], prompt: str) -> TokenAlignment | JointAlignment:
    """``align`` in each tokenizer of a layout; a single segment at offset 0 is plain ``align``."""
    parts = tuple((replace(align(seg.tokenizer, prompt), max_length=seg.length), seg) for seg in layout)
    if len(parts) == 1 and layout[0].offset == 0:
        return parts[0][0]
    return JointAlignment(parts)


def tokenize(tokenizer: Any, prompts: list[str], device: torch.device,
             max_length: int | None = None) -> torch.Tensor:
    """Input ids padded (and cut) to ``max_length`` tokens, BOS and EOS included; by default the
    model's context length, as Stable Diffusion feeds its encoder."""
    return tokenizer(prompts, padding="max_length", max_length=max_length or tokenizer.model_max_length,
                     truncation=True, return_tensors="pt")["input_ids"].to(device)


def encode(text_encoder: Any, tokenizer: Any, prompts: list[str],
           max_length: int | None = None) -> torch.Tensor:
    """Per-token embeddings (B, L, D), the last hidden state, without an attention mask: the
    UNet's cross-attention context."""
    ids = tokenize(tokenizer, prompts, text_encoder.device, max_length)
    return text_encoder(ids)[0]
