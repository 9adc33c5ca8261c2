"""Bandit simulator for the language router: a synthetic world with a known best language per cell.

    python -m lrpo_jax.router_sim --config configs/router_sim.py --workdir /tmp/router_sim

A cell is a non-regional topic, or the regional topic asked about one region. Each cell has a
question-language mix and a true mean quality per answer language. Every step draws P prompts,
routes them with the real `router.assign`, draws rewards, and feeds them to `router.observe_groups`
and `router.maybe_update`, all inside one `lax.scan` under `jax.jit`.

Rewards: Bernoulli(quality), or Gaussian similarity-like rewards
    raw = quality[cell, l] + bias[question language, l] + noise,
where `bias` holds a same-language bonus on its diagonal (raw cosines of same-language pairs are
higher, lrpo_reference.md §2.2) and small pair biases elsewhere. Mean calibration subtracts
shift[q, l] = mu_eq[q, l] - mean(mu_eq), with mu_eq the average similarity of `calib_pairs`
synthetic equivalent pairs per language pair (a small table of our own, the §2.2 recipe), and
`sim_to_reward` maps clip(s, -1, 1) to (s + 1) / 2 as the reference.

Regret is measured on the true quality of routed rollouts (quota and fixed rows are not routed):
quality[cell, best] - quality[cell, chosen], summed. The scenarios and their expected results are
in configs/router_sim.py.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lrpo_jax import config_lib, router, router_log

NOISES = ("bernoulli", "gaussian")
REWARD_MAPS = ("identity", "sim_to_reward")
CALIBRATIONS = ("none", "mean")


@dataclasses.dataclass(frozen=True)
class World:
    """Host-side description of the synthetic world (numpy), one row per cell."""

    spec: router.RouterSpec
    names: tuple[str, ...]          # "topic:<name>" / "region:<name>"
    topic: np.ndarray               # i32 [C] topic id of the cell's prompts
    region: np.ndarray              # i32 [C] region id, -1 for topic cells
    share: np.ndarray               # f32 [C] probability that a prompt comes from the cell
    question_langs: np.ndarray      # f32 [C, L] question-language distribution
    quality: np.ndarray             # f32 [C, L] true mean quality of answering in each language
    best: np.ndarray                # i32 [C] best language, -1 for fixed (unscored) cells
    bias: np.ndarray                # f32 [L, L] additive raw-reward bias [question lang, answer lang]
    shift: np.ndarray               # f32 [L, L] calibration shift subtracted from the raw reward

    @property
    def scored(self) -> np.ndarray:
        return self.best >= 0


def _mix(mix: str, spec: router.RouterSpec, where: str) -> np.ndarray:
    w = np.exp(router.parse_mix(mix, spec.languages, where).astype(np.float64))
    w[w < 1e-5] = 0.0  # unlisted languages (log 1e-6) get no prompts
    return (w / w.sum()).astype(np.float32)


def build_world(cfg, scenario) -> World:
    """The world of `cfg.world` under one scenario's reward settings (seeded by cfg.world.seed)."""
    spec = router.RouterSpec.from_config(cfg.router)
    if len(spec.regional_topics) != 1:
        raise ValueError(f"router_sim needs exactly one regional topic, got {spec.regional_topics}")
    for key, allowed in (("noise", NOISES), ("reward_map", REWARD_MAPS), ("calibration", CALIBRATIONS)):
        if scenario[key] not in allowed:
            raise ValueError(f"scenario {key}={scenario[key]!r}; expected one of {allowed}")
    regional = spec.topics.index(spec.regional_topics[0])
    rows = []
    for i, (name, best, mix, share) in enumerate(cfg.world.topic_cells):
        where = f"world.topic_cells[{i}]"
        t = spec.topics.index(name, where)
        if t == regional:
            raise ValueError(f"{where}: {name!r} is the regional topic; give its prompts in world.region_cells")
        fixed = bool(spec.fixed_topic_mask[t])
        if fixed == bool(best):
            raise ValueError(f"{where}: best language must be empty exactly for fixed topics ({name!r}, {best!r})")
        rows.append((f"topic:{name}", t, -1, share, _mix(mix, spec, where),
                     spec.languages.index(best, where) if best else -1))
    for i, (name, best, mix, share) in enumerate(cfg.world.region_cells):
        where = f"world.region_cells[{i}]"
        rows.append((f"region:{name}", regional, spec.regions.index(name, where), share, _mix(mix, spec, where),
                     spec.languages.index(best, where)))
    n_cells, n_langs = len(rows), len(spec.languages)
    rng = np.random.default_rng(cfg.world.seed)
    u = rng.random((n_cells, n_langs))
    best = np.array([r[5] for r in rows], np.int32)
    quality = scenario["quality_low"] + (scenario["quality_high"] - scenario["quality_low"]) * u
    for c, b in enumerate(best):
        if b >= 0:
            quality[c, b] = np.delete(quality[c], b).max() + scenario["gap"]
    pair = rng.uniform(-1.0, 1.0, (n_langs, n_langs)) * scenario["pair_spread"]
    bias = np.triu(pair, 1) + np.triu(pair, 1).T + np.eye(n_langs) * scenario["same_lang_bonus"]
    shift = np.zeros((n_langs, n_langs))
    if scenario["calibration"] == "mean":
        noise = rng.normal(0.0, max(scenario["noise_scale"], 1e-12), (cfg.world.calib_pairs, n_langs, n_langs))
        mu_pair = (cfg.world.equivalent_sim + bias + noise).mean(0)
        shift = mu_pair - mu_pair.mean()
    share = np.array([r[3] for r in rows], np.float64)
    return World(spec=spec, names=tuple(r[0] for r in rows), topic=np.array([r[1] for r in rows], np.int32),
                 region=np.array([r[2] for r in rows], np.int32), share=(share / share.sum()).astype(np.float32),
                 question_langs=np.stack([r[4] for r in rows]), quality=quality.astype(np.float32), best=best,
                 bias=bias.astype(np.float32), shift=shift.astype(np.float32))


@dataclasses.dataclass(frozen=True)
class Settings:
    """Static settings of one simulation (shapes and code branches); hashable for `jax.jit`.
    Everything numeric (rewards, schedules, alpha, min_count) is an array argument, so scenarios
    that differ only in numbers share one compilation."""

    steps: int
    prompts: int
    K: int
    K_on: int
    update_every: int
    norm: str
    reference_compat: bool
    observe_quota: bool


@functools.partial(jax.jit, static_argnames=("settings",))
def simulate(arrays: dict[str, jax.Array], state: router.RouterState, key, *, settings: Settings):
    """Runs `settings.steps` steps. Returns the final state and per-step traces:
    probs [S, C, L] (effective routing distribution of each cell after the step, at the next step's
    tau/eps [S], as the trainer's router.jsonl), A [S, T, L], B [S, G, L], regret [S] (summed over
    routed rollouts), routed [S] (their count)."""
    num_g = state.B.shape[0]
    cell_mh = jax.nn.one_hot(jnp.maximum(arrays["region"], 0), num_g) * (arrays["region"] >= 0)[:, None]

    def step(state, key):
        k_cell, k_lang, k_route, k_reward = jax.random.split(key, 4)
        tau = router.schedule(state.step, arrays["tau_init"], arrays["tau_min"], arrays["tau_decay"])
        eps = router.schedule(state.step, arrays["eps_init"], arrays["eps_min"], arrays["eps_decay"])
        cell = jax.random.categorical(k_cell, jnp.log(arrays["share"]), shape=(settings.prompts,))
        own = jax.random.categorical(k_lang, jnp.log(jnp.maximum(arrays["question_langs"][cell], 1e-30)))
        topic, mh = arrays["topic"][cell], cell_mh[cell]
        fixed = arrays["fixed_mask"][topic]
        langs = router.assign(state, topic, mh, own, fixed, k_route, K=settings.K, K_on=settings.K_on,
                              tau=tau, eps=eps, regional_topic_mask=arrays["regional_mask"])
        quality = arrays["quality"][cell[:, None], langs]                         # [P, K]
        mean = quality + arrays["bias"][own[:, None], langs]
        k_bern, k_gauss = jax.random.split(k_reward)
        raw = jnp.where(arrays["bernoulli"],
                        jax.random.bernoulli(k_bern, jnp.clip(mean, 0.0, 1.0)).astype(jnp.float32),
                        mean + arrays["noise_scale"] * jax.random.normal(k_gauss, mean.shape))
        calibrated = raw - arrays["shift"][own[:, None], langs]
        reward = jnp.where(arrays["sim_to_reward"], (jnp.clip(calibrated, -1.0, 1.0) + 1.0) / 2.0, calibrated)
        state = router.observe_groups(state, topic, mh, langs, reward, jnp.ones(langs.shape, bool),
                                      fixed_lang_mask=fixed, K_on=settings.K_on,
                                      observe_quota=settings.observe_quota)
        state = router.maybe_update(state, state.step, settings.update_every, arrays["alpha"], settings.norm,
                                    arrays["regional_mask"], reference_compat=settings.reference_compat,
                                    norm_eps=arrays["norm_eps"], min_count=arrays["min_count"])
        routed = (jnp.arange(settings.K) >= settings.K_on)[None, :] & ~fixed[:, None]
        best = arrays["quality"][cell, arrays["best"][cell]]
        regret = jnp.sum(jnp.where(routed, best[:, None] - quality, 0.0))
        # After the update, at the next step's tau/eps: what the next step routes with, as the trainer logs.
        tau_next = router.schedule(state.step, arrays["tau_init"], arrays["tau_min"], arrays["tau_decay"])
        eps_next = router.schedule(state.step, arrays["eps_init"], arrays["eps_min"], arrays["eps_decay"])
        probs = router.probabilities(state, arrays["topic"], cell_mh, arrays["regional_mask"], tau_next, eps_next)[1]
        trace = dict(probs=probs, A=state.A, B=state.B, regret=regret, routed=routed.sum(), tau=tau_next, eps=eps_next)
        return state, trace

    return jax.lax.scan(step, state, jax.random.split(key, settings.steps))


def scenario_config(cfg, name: str):
    """cfg with the scenario's `router` overrides applied (e.g. min_count for an ablation)."""
    if name not in cfg.scenario:
        raise ValueError(f"unknown scenario {name!r}; configured: {sorted(cfg.scenario)}")
    cfg = cfg.copy_and_resolve_references()
    scenario = dict(cfg.scenario[name])
    with cfg.unlocked():
        for key, value in dict(scenario.pop("router", {})).items():
            if key not in cfg.router:
                raise ValueError(f"scenario {name!r}: unknown router override {key!r}")
            cfg.router[key] = value
    return cfg, scenario


def run_scenario(cfg, name: str) -> dict[str, Any]:
    """Builds the world of scenario `name` and simulates it; returns numpy traces and metrics."""
    cfg, scenario = scenario_config(cfg, name)
    router.check_config(cfg.router)  # before the world is built: a bad key fails at once, naming it
    config_lib.check_ranges(cfg, {"steps": (1, float("inf"), True), "prompts_per_step": (1, float("inf"), True),
                                  "log_every": (1, float("inf"), True)})
    world = build_world(cfg, scenario)
    spec, r = world.spec, cfg.router
    settings = Settings(steps=cfg.steps, prompts=cfg.prompts_per_step, K=r.K, K_on=r.K_on,
                        update_every=r.update_every, norm=r.norm, reference_compat=r.reference_compat,
                        observe_quota=r.observe_quota)
    arrays = {k: jnp.asarray(v) for k, v in dict(
        topic=world.topic, region=world.region, share=world.share, question_langs=world.question_langs,
        quality=world.quality, best=np.maximum(world.best, 0), bias=world.bias, shift=world.shift,
        regional_mask=spec.regional_topic_mask, fixed_mask=spec.fixed_topic_mask,
        bernoulli=np.bool_(scenario["noise"] == "bernoulli"), noise_scale=np.float32(scenario["noise_scale"]),
        sim_to_reward=np.bool_(scenario["reward_map"] == "sim_to_reward"),
        alpha=np.float32(r.alpha), norm_eps=np.float32(r.norm_eps), min_count=np.float32(r.min_count),
        tau_init=np.float32(r.tau_init), tau_min=np.float32(r.tau_min), tau_decay=np.float32(r.tau_decay),
        eps_init=np.float32(r.eps_init), eps_min=np.float32(r.eps_min), eps_decay=np.float32(r.eps_decay)).items()}
    t0 = time.perf_counter()
    state, trace = simulate(arrays, router.init_state(spec), jax.random.key(cfg.seed), settings=settings)
    trace = jax.tree.map(np.asarray, trace)
    seconds = time.perf_counter() - t0
    return {"name": name, "world": world, "settings": settings, "state": state, "trace": trace,
            "metrics": metrics(world, trace, r.update_every), "seconds": seconds}


def metrics(world: World, trace: dict[str, np.ndarray], update_every: int) -> dict[str, Any]:
    """Final routing probabilities, best-arm probability per scored cell, regret vs a uniform router."""
    probs = trace["probs"][-1]
    codes = world.spec.languages.names
    share_scored = world.share * world.scored
    # Expected regret per routed rollout of a uniform router, averaged over the scored prompts.
    uniform_gap = (world.quality.max(-1) - world.quality.mean(-1))
    uniform_per_rollout = float((share_scored * uniform_gap).sum() / share_scored.sum())
    routed = trace["routed"].astype(np.float64)
    cells = {}
    for c, name in enumerate(world.names):
        if not world.scored[c]:
            continue
        cells[name] = {"best": codes[world.best[c]], "best_prob": float(probs[c, world.best[c]]),
                       "argmax": codes[int(probs[c].argmax())],
                       "probs": {code: round(float(p), 4) for code, p in zip(codes, probs[c])}}
    return {
        "steps": int(len(routed)), "updates": int(len(routed) // update_every),
        "final_tau": float(trace["tau"][-1]), "final_eps": float(trace["eps"][-1]),
        "min_best_prob": min(v["best_prob"] for v in cells.values()),
        "mean_best_prob": float(np.mean([v["best_prob"] for v in cells.values()])),
        "cumulative_regret": float(trace["regret"].sum()),
        "uniform_cumulative_regret": uniform_per_rollout * float(routed.sum()),
        "final_regret_per_rollout": float(trace["regret"][-10:].sum() / routed[-10:].sum()),
        "uniform_regret_per_rollout": uniform_per_rollout,
        "cells": cells,
    }


# ------------------------------------------------------------------------------------------------
# Outputs.
# ------------------------------------------------------------------------------------------------
def write_jsonl(result: dict, path: str, log_every: int, max_keys: int) -> None:
    world, trace = result["world"], result["trace"]
    log = router_log.RouterLog(path, world.spec, max_keys=max_keys)
    state = result["state"]
    for s in range(log_every - 1, len(trace["tau"]), log_every):
        log.write(state.replace(A=trace["A"][s], B=trace["B"][s], step=s + 1), trace["tau"][s], trace["eps"][s])


def plot(result: dict, folder: str) -> list[str]:
    """regret.png, probs.png, heatmaps.png in `folder`; returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    world, trace, m = result["world"], result["trace"], result["metrics"]
    codes = world.spec.languages.names
    steps = np.arange(1, len(trace["regret"]) + 1)
    paths = []

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(steps, np.cumsum(trace["regret"]), label="router")
    ax1.plot(steps, np.cumsum(trace["routed"]) * m["uniform_regret_per_rollout"], "--", label="uniform router")
    ax1.set(xlabel="step", ylabel="cumulative regret (quality units)", title=f"{result['name']}: regret")
    ax1.legend()
    ax2.plot(steps, trace["regret"] / np.maximum(trace["routed"], 1))
    ax2.axhline(m["uniform_regret_per_rollout"], ls="--", c="gray")
    ax2.set(xlabel="step", ylabel="regret per routed rollout", title="instantaneous regret")
    fig.tight_layout()
    paths.append(os.path.join(folder, "regret.png"))
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)

    scored = np.flatnonzero(world.scored)
    cols = 5
    rows = -(-len(scored) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.5 * rows), sharex=True, sharey=True, squeeze=False)
    for ax, c in zip(axes.flat, scored):
        for lang in range(len(codes)):
            if lang != world.best[c]:
                ax.plot(steps, trace["probs"][:, c, lang], c="0.75", lw=0.7)
        ax.plot(steps, trace["probs"][:, c, world.best[c]], c="C3", lw=2, label=f"best: {codes[world.best[c]]}")
        top = int(world.question_langs[c].argmax())
        if top != world.best[c]:
            ax.plot(steps, trace["probs"][:, c, top], c="C0", lw=1.2, label=f"main question lang: {codes[top]}")
        ax.set_title(world.names[c], fontsize=9)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, loc="upper left")
    for ax in list(axes.flat)[len(scored):]:
        ax.axis("off")
    fig.suptitle(f"{result['name']}: effective routing probability per cell (grey: other languages)")
    fig.tight_layout()
    paths.append(os.path.join(folder, "probs.png"))
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)

    probs = trace["probs"][-1]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(world.names) + 1.6))
    im = ax.imshow(probs, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    for c in scored:
        ax.add_patch(plt.Rectangle((world.best[c] - 0.5, c - 0.5), 1, 1, fill=False, ec="red", lw=1.5))
    ax.set_xticks(range(len(codes)), codes)
    ax.set_yticks(range(len(world.names)), world.names, fontsize=8)
    ax.set_title(f"{result['name']}: final routing probabilities (red box: best arm)")
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    paths.append(os.path.join(folder, "heatmaps.png"))
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)
    return paths


def run(cfg, workdir: str) -> dict[str, Any]:
    """All scenarios of `cfg`: simulate, write outputs, print a summary; returns the summary."""
    os.makedirs(workdir, exist_ok=True)
    summary = {}
    for name in cfg.scenarios:
        result = run_scenario(cfg, name)
        folder = os.path.join(workdir, name)
        os.makedirs(folder, exist_ok=True)
        jsonl = os.path.join(folder, "router.jsonl")
        if os.path.exists(jsonl):
            os.remove(jsonl)  # a re-run replaces, not appends
        write_jsonl(result, jsonl, cfg.log_every, cfg.router.log_max_keys)
        m = result["metrics"]
        with open(os.path.join(folder, "metrics.json"), "w", encoding="utf-8") as f:
            json.dump(m, f, indent=1, ensure_ascii=False)
        plot(result, folder)
        summary[name] = {k: m[k] for k in ("min_best_prob", "mean_best_prob", "cumulative_regret",
                                           "uniform_cumulative_regret", "final_regret_per_rollout")}
        summary[name]["best_prob"] = {c: round(v["best_prob"], 3) for c, v in m["cells"].items()}
        summary[name]["seconds"] = round(result["seconds"], 2)
        print(f"[{name}] {m['updates']} updates: best-arm probability min {m['min_best_prob']:.3f} "
              f"mean {m['mean_best_prob']:.3f}; cumulative regret {m['cumulative_regret']:.1f} "
              f"(uniform {m['uniform_cumulative_regret']:.1f}); {result['seconds']:.1f} s")
        for cell, v in m["cells"].items():
            print(f"    {cell:28s} best {v['best']}: p={v['best_prob']:.3f}  argmax {v['argmax']}")
    with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1, ensure_ascii=False)
    print(f"wrote {workdir}/{{summary.json, <scenario>/router.jsonl, metrics.json, regret.png, probs.png, "
          f"heatmaps.png}}")
    return summary


def main(argv):
    from absl import app
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":  # flags defined here only: lrpo_jax.train defines the same names
    from absl import app, flags
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file("config", None, "configs/router_sim.py[:args]", lock_config=True)
    _WORKDIR = flags.DEFINE_string("workdir", None, "Output folder.")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
