"""refbench's built-in methods. Each module here is a plugin registered through the ``refbench``
entry-point group, exactly as a third-party package would register its own."""
