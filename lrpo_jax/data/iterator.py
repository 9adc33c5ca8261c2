"""Deterministic, resumable prompt batches: a permutation per (seed, epoch), position in the state.

The K rollouts of a prompt are made later by the trainer, so a group is a prompt by
construction (no hard-coded group size anywhere in the data path).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from lrpo_jax.data.schema import Example


class PromptIterator:
    def __init__(self, examples: Sequence[Example], batch_size: int, seed: int = 0):
        if batch_size > len(examples):
            raise ValueError(f"data.prompts_per_step={batch_size} exceeds the {len(examples)} available examples")
        self.examples, self.batch_size, self.seed = list(examples), batch_size, seed
        self.epoch, self.index = 0, 0

    def _order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.examples))

    def next(self) -> list[Example]:
        """The next batch; incomplete tail batches are dropped and a new epoch reshuffles."""
        if self.index + self.batch_size > len(self.examples):
            self.epoch, self.index = self.epoch + 1, 0
        order = self._order()
        batch = [self.examples[i] for i in order[self.index:self.index + self.batch_size]]
        self.index += self.batch_size
        return batch

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "size": len(self.examples)}

    def restore(self, state: dict) -> None:
        if state.get("size", len(self.examples)) != len(self.examples) or state.get("seed", self.seed) != self.seed:
            raise ValueError(f"data iterator state {state} does not match this dataset "
                             f"({len(self.examples)} examples, seed {self.seed}): the data or seed changed since the checkpoint")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
