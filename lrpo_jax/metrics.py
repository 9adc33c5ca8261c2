"""Run logging: TensorBoard event files (scalars, images, text) mirrored to JSONL, phase timers.

TensorFlow is not needed: events are written with tensorboard's own protos and file writer.
The caller passes `enabled=(process 0)`: other processes then hold a no-op writer, so multi-host
code needs no branches.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import time
from collections import defaultdict
from typing import Mapping, Sequence

import numpy as np


def _to_float(v) -> float | None:
    try:
        f = float(np.asarray(v))
    except (TypeError, ValueError):
        return None
    return f


class MetricWriter:
    """Scalars/images/text to TensorBoard under `logdir`, and every scalar row to `metrics.jsonl`."""

    def __init__(self, logdir: str | os.PathLike, *, enabled: bool = True, restart_step: int | None = None):
        """`restart_step`: the first step a resumed run logs again. Its event files hold the crashed
        run's steps from there on; a SessionLog START event makes TensorBoard drop them (as
        metrics.jsonl is truncated), instead of showing the replayed steps twice."""
        self.logdir = os.fspath(logdir)
        self.enabled = enabled
        self._events = None
        self._jsonl = None
        if enabled:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
            os.makedirs(self.logdir, exist_ok=True)
            self._events = EventFileWriter(self.logdir)
            self._jsonl = open(os.path.join(self.logdir, "metrics.jsonl"), "a", encoding="utf-8")
            if restart_step is not None:
                from tensorboard.compat.proto import event_pb2
                self._events.add_event(event_pb2.Event(wall_time=time.time(), step=int(restart_step),
                                                       session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

    # --- TensorBoard protos -------------------------------------------------------------------
    def _write(self, step: int, values: list) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        event = event_pb2.Event(wall_time=time.time(), step=int(step),
                                summary=summary_pb2.Summary(value=values))
        self._events.add_event(event)

    def scalars(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        from tensorboard.compat.proto import summary_pb2
        row, values = {"step": int(step)}, []
        for tag, v in metrics.items():
            f = _to_float(v)
            if f is None:
                continue
            row[tag] = f if math.isfinite(f) else str(f)
            values.append(summary_pb2.Summary.Value(tag=tag, simple_value=f))
        self._write(step, values)
        self._jsonl.write(json.dumps(row, ensure_ascii=False) + "\n")

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        """`image`: uint8 [H, W, 3] (or [H, W, 4])."""
        if not self.enabled:
            return
        import matplotlib.image
        from tensorboard.compat.proto import summary_pb2
        buf = io.BytesIO()
        matplotlib.image.imsave(buf, np.asarray(image), format="png")
        h, w = image.shape[:2]
        img = summary_pb2.Summary.Image(height=h, width=w, colorspace=image.shape[2],
                                        encoded_image_string=buf.getvalue())
        self._write(step, [summary_pb2.Summary.Value(tag=tag, image=img)])

    def text(self, step: int, tag: str, text: str) -> None:
        if not self.enabled:
            return
        from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2
        meta = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="text"))
        tensor = tensor_pb2.TensorProto(dtype=7, string_val=[text.encode("utf-8")],  # 7 = DT_STRING
                                        tensor_shape=tensor_shape_pb2.TensorShapeProto())
        self._write(step, [summary_pb2.Summary.Value(tag=tag, metadata=meta, tensor=tensor)])

    def flush(self) -> None:
        if self.enabled:
            self._events.flush()
            self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._events.close()
            self._jsonl.close()
            self.enabled = False


def truncate_jsonl(path: str | os.PathLike, max_step: int, key: str = "step") -> int:
    """Drops rows with row[key] > max_step (atomic rewrite); returns how many were dropped.

    On resume, logs may hold rows from steps after the restored checkpoint (the crash came between
    the log write and the save); those steps run again, so their old rows must go.
    """
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]

    def step_of(i, line):
        try:
            return json.loads(line).get(key, 0)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # a crash mid-write left half a last row: it belongs to a lost step
                return max_step + 1
            raise ValueError(f"{path}: row {i + 1} (of its non-blank lines) is not JSON; only a half-written last "
                             f"row is dropped") from None
    keep = [line for i, line in enumerate(lines) if step_of(i, line) <= max_step]
    if len(keep) < len(lines):
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(keep)
        os.replace(tmp, path)
    return len(lines) - len(keep)


def append_jsonl(path: str | os.PathLike, rows: Sequence[Mapping]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def heatmap(matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str = "",
            vmin: float = 0.0, vmax: float | None = None) -> np.ndarray:
    """Renders a labelled heatmap (e.g. router probabilities, topic x language) as uint8 RGB."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(0.45 * len(cols) + 2.5, 0.35 * len(rows) + 1.5), dpi=80)
    im = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.canvas.draw()
    out = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return out


class PhaseTimer:
    """Wall time per named phase (route, sample, reward, update...), summed between `pop()`s."""

    def __init__(self):
        self._totals: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._totals[phase] += time.perf_counter() - t0

    def pop(self) -> dict[str, float]:
        out = {f"time/{k}": v for k, v in self._totals.items()}
        self._totals.clear()
        return out


class CompileCounter:
    """Counts XLA compilations (jax's `/jax/core/compile/backend_compile_duration` events).

    The trainer logs it every step; after warm-up it must stay flat (shapes are bucketed).
    """

    def __init__(self):
        import jax.monitoring
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration: float, **kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            self.count += 1
