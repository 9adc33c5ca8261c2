"""Checkpoints: the whole TrainState pytree plus JSON side data, atomic, keep-N, auto-resume.

Orbax writes each step into a temporary directory and renames it only once complete, so a crash
or SIGKILL mid-save leaves the previous checkpoint as the latest. The JSON side data holds what is
not an array: the data iterator position, host-side metric history and, with online calibration,
the adapted table means (the resolved config is written once, to `<workdir>/config.json`).
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` with the conventions of our trainer."""

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, every: int = 0,
                 async_save: bool = True):
        self.directory = os.path.abspath(os.fspath(directory))
        self.every = every
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def _step_or_latest(self, step: int | None) -> int:
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        return step

    def should_save(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def save(self, step: int, state: Any, extra: dict | None = None) -> None:
        """Saves `state` (a pytree of arrays) and `extra` (JSON-serialisable) as `step`."""
        if step in self._manager.all_steps():
            return  # already saved (e.g. a periodic save followed by the final save)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  extra=ocp.args.JsonSave(extra or {}))
        self._manager.save(step, args=args, force=True)

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restores onto `abstract_state` (ShapeDtypeStructs carrying the target shardings)."""
        step = self._step_or_latest(step)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                  extra=ocp.args.JsonRestore())
        try:
            out = self._manager.restore(step, args=args)
        except Exception as e:  # orbax/TensorStore errors name neither the folder nor the step
            raise RuntimeError(f"cannot restore checkpoint {self.directory}/{step}: {type(e).__name__}: {e}; "
                               f"remove that step folder to resume from an earlier one") from e
        return out["state"], dict(out["extra"] or {})

    def restore_fields(self, abstract_fields: dict, step: int | None = None) -> dict:
        """Restores only some top-level fields of a saved state, e.g. {"step": ..., "params": ...}.

        Evaluation and sampling need the policy, not the optimizer moments (2x the params on disk):
        orbax's partial restore reads just the named subtrees. `abstract_fields` maps field names of
        the saved TrainState to ShapeDtypeStruct trees carrying the target shardings.
        """
        step = self._step_or_latest(step)
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_fields)
        args = ocp.args.Composite(state=ocp.args.PyTreeRestore(abstract_fields, restore_args=restore_args,
                                                               partial_restore=True))
        # A separate reader: our manager has the state item bound to the Standard handler, which
        # has no partial restore; the on-disk format is the same.
        reader = ocp.CheckpointManager(self.directory)
        try:
            out = dict(reader.restore(step, args=args)["state"])
        finally:
            reader.close()
        # Partial restore hands back the abstract leaf for a path the checkpoint lacks: make it an error.
        missing = [jax.tree_util.keystr(path) for path, leaf in jax.tree_util.tree_flatten_with_path(out)[0]
                   if isinstance(leaf, jax.ShapeDtypeStruct)]
        if missing:
            raise KeyError(f"checkpoint {self.directory} step {step} has no {', '.join(missing[:5])}"
                           + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""))
        return out

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(tree: Any, shardings: Any = None) -> Any:
    """ShapeDtypeStructs of a pytree of arrays (or of ShapeDtypeStructs): restore targets for orbax.

    Shardings come from the leaves themselves, or from `shardings`: a tree with one sharding per
    leaf, or per subtree (param_shardings gives one per nnx.Variable, which wraps its leaf)."""
    if shardings is None:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                            tree)
    return jax.tree.map(lambda s, sub: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), sub),
                        shardings, tree)


class StopRequest:
    """Turns SIGTERM / SIGINT into a flag the training loop polls between steps.

    Cluster schedulers send SIGTERM before preemption; the loop then saves a final checkpoint and
    exits cleanly instead of dying mid-step. A second signal falls through to the default handler.
    """

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self._event = threading.Event()
        self.signal: int | None = None  # the first signal received
        self._previous = {}
        self._signals = signals

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self._signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        return False

    def _handle(self, signum, frame):
        logging.warning("received %s: will checkpoint and stop after this step", signal.Signals(signum).name)
        self.signal = signum
        self._event.set()
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    @property
    def requested(self) -> bool:
        return self._event.is_set()


def local_workdir(path: str | os.PathLike, flag: str = "--workdir"):
    """A workdir as a local path. URLs are refused: pathlib would turn "gs://b/x" into a local folder
    "gs:/b/x" and the run would write there without a word."""
    import pathlib
    if "://" in str(path):
        raise ValueError(f"{flag} {path}: URLs (gs://, s3://) are not supported; logs and checkpoints are written "
                         f"through the local file system. Mount the bucket (e.g. gcsfuse) and pass the mount path")
    return pathlib.Path(path)
