"""A small CLIP-format byte-level BPE vocabulary, trained here from a word list.

Real CLIP vocabularies cannot be downloaded on machines without network access, yet the preset
backbones need a real tokenizer (``CLIPTokenizer`` with vocab.json and merges.txt) so that word
pieces, BOS/EOS and padding behave as they do with Stable Diffusion. This module learns merges
for the words referring expressions and COCO classes use; any other word still tokenizes, into
smaller pieces, exactly as CLIP's BPE would treat a rare word.

Regenerate the shipped files with ``python -m refbench.diffusion.bpe``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

ASSET_DIR = Path(__file__).parent / "assets" / "clip-bpe-small"

COCO_CLASSES = (
    "person bicycle car motorcycle airplane bus train truck boat traffic light fire hydrant stop "
    "sign parking meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack "
    "umbrella handbag tie suitcase frisbee skis snowboard sports ball kite baseball bat glove "
    "skateboard surfboard tennis racket bottle wine glass cup fork knife spoon bowl banana apple "
    "sandwich orange broccoli carrot hot pizza donut cake chair couch potted plant bed dining "
    "table toilet tv laptop mouse remote keyboard cell phone microwave oven toaster sink "
    "refrigerator book clock vase scissors teddy hair drier toothbrush")
REFERRING_WORDS = (
    "a an the of in on at to with and or by from for near next behind front top bottom middle "
    "center centre left right above below under over between beside far closest nearest first "
    "second third last one two three four five other another that is are which who this those "
    "these it its his her their man woman men women boy girl kid child children baby guy lady "
    "player people shirt jacket hat head hand face arm leg side part half corner edge back white "
    "black red green blue yellow purple orange pink brown gray grey dark light big small large "
    "little tall short long wide round square circle triangle shape object thing photograph photo "
    "picture image standing sitting holding wearing playing looking walking smaller bigger larger "
    "biggest smallest leftmost rightmost upper lower partial full visible whole only same")
EXTRA_WEIGHT = 4  # referring words outrank class names when frequencies tie


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible map from bytes to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def train_merges(word_counts: Counter[str], max_merges: int = 4000) -> list[tuple[str, str]]:
    """Plain BPE: repeatedly merge the most frequent adjacent pair (ties broken by the pair)."""
    words = {tuple(w[:-1]) + (w[-1] + "</w>",): c for w, c in word_counts.items() if w}
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in words.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged = {}
        for symbols, count in words.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + count
        words = merged
    return merges


def build_files(out_dir: Path, words: Counter[str] | None = None) -> Path:
    """Write vocab.json and merges.txt in CLIP's format to ``out_dir``."""
    if words is None:
        words = Counter(COCO_CLASSES.split())
        for w in REFERRING_WORDS.split():
            words[w] += EXTRA_WEIGHT
    merges = train_merges(words)
    alphabet = list(bytes_to_unicode().values())
    vocab_tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
    vocab_tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(vocab_tokens))}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return out_dir


if __name__ == "__main__":
    print(build_files(ASSET_DIR))
