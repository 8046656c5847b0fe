"""Reading REFER's ``refs(<splitBy>).p`` without letting a pickle run code.

The refs files are pickles of plain lists and dicts. A pickle can name any importable callable
and have it called on load, so a tampered file downloaded from a mirror could run arbitrary
code. This unpickler admits only plain containers and scalars and refuses every other global.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

from refbench.errors import UserError, one_line

def _bytes_from_latin1(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol 2 calls it to rebuild a bytes object, and nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"it calls _codecs.encode with {encoding!r}, which is not "
                                     f"how plain bytes are stored")
    return codecs.encode(text, "latin1")


# Constructors of plain data only.
_ALLOWED_GLOBALS = {
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set, ("__builtin__", "frozenset"): frozenset,
    ("_codecs", "encode"): _bytes_from_latin1,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        raise pickle.UnpicklingError(f"it references {module}.{name}, which is not plain data")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("it refers to outside objects by persistent id, which is not "
                                     "plain data")


def load_plain_pickle(path: Path) -> Any:
    """Load a pickle that may hold only dicts, lists, tuples, sets, strings and numbers."""
    try:
        with open(path, "rb") as handle:
            # utf-8: Python 2 pickles (REFER's) store text as byte strings.
            return _RestrictedUnpickler(handle, encoding="utf-8").load()
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as error:
        if "plain" in str(error):
            raise UserError(f"refused to load {path}: {error}; a refs file holds only lists and "
                            f"dicts, so this one is not genuine: replace it with a clean copy") from None
        raise UserError(f"{path} is corrupt ({one_line(error)}): re-download or regenerate it") from None
    except (EOFError, ValueError, TypeError, UnicodeDecodeError, IndexError, KeyError, LookupError,
            AttributeError, OverflowError, MemoryError, RecursionError) as error:
        raise UserError(f"{path} is corrupt ({type(error).__name__}: {one_line(error)}): "
                        f"re-download or regenerate it") from None
