"""A small T5-format tokenizer, built offline from the shipped CLIP vocabulary.

SD3 and Flux read T5's tokens, and T5's real tokenizer is a sentencepiece model that cannot be
downloaded here (nor does refbench want the sentencepiece dependency). The tiny MM-DiT presets
need a tokenizer that behaves as T5's does where refbench looks: word pieces marked by a
leading "▁" (sentencepiece's Metaspace), no BOS, one ``</s>`` at the end, ``<pad>`` as id 0 and
``<unk>`` for what it cannot spell. This builds exactly that as a ``tokenizers`` Unigram model
wrapped in ``T5TokenizerFast``: its pieces are the CLIP BPE vocabulary's (each with and without
the word-start mark), every piece scored alike, so a word is cut into as few pieces as the
vocabulary allows. It saves and loads back as any T5 tokenizer (``tokenizer.json``).
"""

from __future__ import annotations

import json
from typing import Any

from refbench.diffusion.bpe import ASSET_DIR

WORD_START = "▁"
SPECIAL = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2, as T5's


def small_t5_tokenizer(max_length: int) -> Any:
    """The tokenizer; ``max_length`` is its ``model_max_length`` (what the pipelines pad to)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    clip_vocab = json.loads((ASSET_DIR / "vocab.json").read_text())
    pieces: dict[str, None] = {WORD_START: None}
    for token in clip_vocab:
        if token.startswith("<|"):
            continue
        piece = token.removesuffix("</w>")
        pieces.setdefault(WORD_START + piece, None)
        pieces.setdefault(piece, None)
    vocab = [(s, 0.0) for s in SPECIAL] + [(p, -1.0) for p in pieces]
    raw = Tokenizer(models.Unigram(vocab, unk_id=SPECIAL.index("<unk>"), byte_fallback=False))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme="always")
    raw.decoder = decoders.Metaspace(replacement=WORD_START, prepend_scheme="always")
    raw.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", SPECIAL.index("</s>"))])
    return T5TokenizerFast(tokenizer_object=raw, eos_token="</s>", unk_token="<unk>",
                           pad_token="<pad>", extra_ids=0, model_max_length=max_length)
