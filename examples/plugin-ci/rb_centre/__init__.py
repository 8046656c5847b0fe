"""A sample refbench plugin (see plugin.py)."""
