"""A plugin that fails at import time, to prove one bad plugin does not take the others down."""

raise ImportError("rb_broken needs a package that is not installed")
