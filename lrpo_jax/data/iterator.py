"""Deterministic, resumable prompt batches: a permutation per (seed, epoch), position in the state.

The K rollouts of a prompt are made later by the trainer, so a group is a prompt by
construction (no hard-coded group size anywhere in the data path).
"""
from __future__ import annotations

import hashlib
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

    def digest(self) -> str:
        """Of the examples' ids and texts in order: another dataset of the same size, or one edited
        in place, does not resume at a position that meant other examples."""
        h = hashlib.sha256()
        for ex in self.examples:
            h.update(f"{ex.id}\0{ex.language}\0{ex.question}\0{ex.answer}\0".encode("utf-8"))
        return h.hexdigest()[:16]

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "size": len(self.examples),
                "digest": self.digest()}

    def restore(self, state: dict) -> None:
        mine = {"size": len(self.examples), "seed": self.seed, "digest": self.digest()}
        changed = [k for k in mine if k in state and state[k] != mine[k]]  # older states hold no digest
        if changed:
            raise ValueError(f"data iterator state {state} does not match this dataset ({len(self.examples)} examples, "
                             f"seed {self.seed}, digest {mine['digest']}): the data or seed changed since the "
                             f"checkpoint ({', '.join(changed)}); resume with the same data or use a new --workdir")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
