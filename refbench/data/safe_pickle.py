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

from refbench.errors import UserError

# Constructors of plain data only. _codecs.encode is how protocol 2 rebuilds bytes objects.
_ALLOWED_GLOBALS = {
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set, ("__builtin__", "frozenset"): frozenset,
    ("_codecs", "encode"): codecs.encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        raise pickle.UnpicklingError(f"it references {module}.{name}, which is not plain data")


def load_plain_pickle(path: Path) -> Any:
    """Load a pickle that may hold only dicts, lists, tuples, sets, strings and numbers."""
    try:
        with open(path, "rb") as handle:
            # utf-8: Python 2 pickles (REFER's) store text as byte strings.
            return _RestrictedUnpickler(handle, encoding="utf-8").load()
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as error:
        if "not plain data" in str(error):
            raise UserError(f"refused to load {path}: {error}; a refs file holds only lists and "
                            f"dicts, so this one is not genuine: replace it with a clean copy") from None
        raise UserError(f"{path} is corrupt ({error}): re-download or regenerate it") from None
    except (EOFError, ValueError, TypeError, UnicodeDecodeError, IndexError, KeyError,
            AttributeError, OverflowError, MemoryError) as error:
        raise UserError(f"{path} is corrupt ({type(error).__name__}: {error}): "
                        f"re-download or regenerate it") from None
