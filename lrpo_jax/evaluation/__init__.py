"""Evaluation pieces: task files (`tasks`), LLM-judge requests and grades (`judge`), result tables
(`report`). The runner and CLI are `lrpo_jax.evaluate`."""
