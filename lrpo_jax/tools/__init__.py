"""Small command-line tools (multi-process checks, asset preparation)."""
