"""Benchmarks: `python -m lrpo_jax.bench NAME [options]`.

Each benchmark module `lrpo_jax/bench/<NAME>.py` defines `main(argv: list[str]) -> None` and prints one
JSON object per line and measurement through `common.emit` (ours and peer measured in the same run).
"""
