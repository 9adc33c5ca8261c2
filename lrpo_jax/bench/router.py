"""Language router: jitted assign / observe / update vs a pure-Python port of the reference loop.

    python -m lrpo_jax.bench router [--prompts 256] [--K 8] [--steps-per-update 5] [--iters 50]

Lines (stdout, JSON, microseconds per call, lower is better; context on stderr):
  router/assign_256x8     languages for 256 prompts x 8 rollouts (K_on 2, eps 0.2, default 15
                          languages / 6 topics / 24 regions, ~half the prompts regional)
  router/observe_2048     buffering one step's 2,048 rollout rewards
  router/update_10240     one router update over the buffer of 5 steps (10,240 rollouts), zscore
  router/update_compat    the same with reference_compat=True (sequential per-cell EMAs)
  router/per_step_M5      router work per training step: observe + update / 5. The reference only
                          appends in its per-step hook and aggregates in the update; we aggregate
                          when observing, so this is the like-for-like line for observe and update.
Peer: the reference's per-row Python, ported faithfully (lrpo_reference.md §1.4-§1.7): a
defaultdict of numpy rows per topic / region, per rollout a uniform draw for eps and
`np.random.choice` over softmax(z / tau); rollouts appended to a list; the update loops over the
buffer into a dict of cells, normalises per (topic, region) with np.mean / np.std and EMA-updates
one cell at a time (its per-cell prints removed, they would dominate the time).
Both sides get the same rows. Ours is timed after compilation, blocked on the result.
"""
from __future__ import annotations

import argparse
import collections
import time

import jax
import jax.numpy as jnp
import numpy as np

from lrpo_jax import router, vocab
from lrpo_jax.bench import common


class ReferenceRouterPort:
    """The reference bandit and its trainer hooks, restated in plain Python + numpy."""

    def __init__(self, langs, alpha, tau, eps, regional="Regional Knowledge"):
        self.langs, self.alpha, self.tau, self.eps, self.regional = list(langs), alpha, tau, eps, regional
        self.topic_q = collections.defaultdict(lambda: np.zeros(len(self.langs), np.float32))
        self.region_q = collections.defaultdict(lambda: np.zeros(len(self.langs), np.float32))
        self.buffer = []

    def sample(self, topic, regions):
        logits = np.zeros(len(self.langs), np.float32) + self.topic_q[topic]
        if topic == self.regional:
            for rg in regions:
                logits = logits + self.region_q[rg]
        if self.eps > 0 and np.random.rand() < self.eps:
            return int(np.random.choice(len(self.langs)))
        z = logits / max(self.tau, 1e-6)
        z = z - z.max()
        p = np.exp(z)
        p = p / p.sum()
        return int(np.random.choice(len(self.langs), p=p))

    def assign(self, rows, K, K_on, fixed_topics=("Translation",)):
        """rows: (uid, topic, regions, orig lang index); K consecutive rows per uid, as the reference."""
        out, seen = [], {}
        for uid, topic, regions, orig in rows:
            if topic in fixed_topics:
                out.append(orig)
                continue
            count = seen.get(uid, 0)
            if count < K_on:
                seen[uid] = count + 1
                out.append(orig)
            else:
                out.append(self.sample(topic, regions))
        return out

    def observe(self, rows, langs, rewards):
        for (_, topic, regions, _), lang, reward in zip(rows, langs, rewards):
            if lang >= 0:
                self.buffer.append((topic, regions, lang, float(reward)))

    def update(self, norm="zscore", norm_eps=1e-6):
        agg = {}
        for topic, regions, lang, reward in self.buffer:
            for rg in (regions or ["None"]):
                cell = agg.setdefault((topic, rg, lang), [0.0, 0])
                cell[0] += reward
                cell[1] += 1
        stats = {}
        if norm in ("center", "zscore"):
            groups = {}
            for (t, g, _), (s, c) in agg.items():
                groups.setdefault((t, g), []).append(s / max(c, 1))
            stats = {k: (float(np.mean(v)), float(np.std(v))) for k, v in groups.items()}
        for (t, g, lang), (s, c) in agg.items():
            x = s / max(c, 1)
            if norm == "center":
                x -= stats[(t, g)][0]
            elif norm == "zscore":
                x = (x - stats[(t, g)][0]) / (stats[(t, g)][1] + norm_eps)
            self.topic_q[t][lang] = (1 - self.alpha) * self.topic_q[t][lang] + self.alpha * x
            if t == self.regional:
                self.region_q[g][lang] = (1 - self.alpha) * self.region_q[g][lang] + self.alpha * x
        self.buffer.clear()


def _inputs(spec: router.RouterSpec, prompts: int, seed: int):
    """Random prompts: ~half regional with 1-2 regions, the rest spread over the other topics."""
    rng = np.random.default_rng(seed)
    topics = [spec.topics.names[0] if rng.random() < 0.5 else spec.topics.names[rng.integers(1, len(spec.topics))]
              for _ in range(prompts)]
    regions = [list(rng.choice(spec.regions.names, rng.integers(1, 3), replace=False)) if t in spec.regional_topics
               else [] for t in topics]
    langs = [spec.languages.names[i] for i in rng.integers(0, len(spec.languages), prompts)]
    return topics, regions, langs


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m lrpo_jax.bench router")
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--K", type=int, default=8)
    ap.add_argument("--K-on", type=int, default=2)
    ap.add_argument("--steps-per-update", type=int, default=5)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--peer-iters", type=int, default=3)
    args = ap.parse_args(argv)
    P, K, M = args.prompts, args.K, args.steps_per_update
    spec = router.RouterSpec(vocab.language_vocab(), vocab.topic_vocab(), vocab.region_vocab())
    mask = spec.regional_topic_mask
    topics, regions, langs = _inputs(spec, P, 0)
    enc = spec.encode(topics, regions, langs)
    tau, eps, alpha = 0.9, 0.2, 0.1
    rng = np.random.default_rng(1)
    state = router.init_state(spec)
    state = state.replace(A=jnp.asarray(rng.normal(size=state.A.shape), jnp.float32),
                          B=jnp.asarray(rng.normal(size=state.B.shape), jnp.float32))
    common.note(bench="router", machine=common.machine(), prompts=P, K=K, K_on=args.K_on, steps_per_update=M,
                languages=len(spec.languages), topics=len(spec.topics), regions=len(spec.regions))

    # ---- ours --------------------------------------------------------------------------------
    assign = jax.jit(lambda s, key: router.assign(
        s, enc["topic"], enc["regions"], enc["orig_lang"], enc["fixed"], key, K=K, K_on=args.K_on,
        tau=jnp.float32(tau), eps=jnp.float32(eps), regional_topic_mask=mask))
    observe = jax.jit(lambda s, lang_ids, rewards: router.observe_groups(
        s, enc["topic"], enc["regions"], lang_ids, rewards, jnp.ones(lang_ids.shape, bool),
        fixed_lang_mask=enc["fixed"], K_on=args.K_on))
    update = jax.jit(lambda s: router.update(s, alpha, "zscore", mask))
    update_compat = jax.jit(lambda s: router.update(s, alpha, "zscore", mask, reference_compat=True))

    key = jax.random.key(0)
    t0 = time.perf_counter()
    lang_ids = common.block(assign(state, key))
    compile_s = {"assign": time.perf_counter() - t0}
    rewards = jnp.asarray(rng.random((P, K)), jnp.float32)
    buffered = state
    for step in range(M):  # the buffer of one update: M steps of P x K rollouts
        t0 = time.perf_counter()
        buffered = common.block(observe(buffered, assign(buffered, jax.random.key(step)), rewards))
        compile_s.setdefault("observe", time.perf_counter() - t0)
    for name, fn in (("update", update), ("update_compat", update_compat)):
        t0 = time.perf_counter()
        common.block(fn(buffered))
        compile_s[name] = time.perf_counter() - t0
    common.note(compile_seconds={k: round(v, 3) for k, v in compile_s.items()})

    ours = {
        "assign": common.timeit(lambda: assign(state, key), warmup=3, iters=args.iters, min_time=0.5),
        "observe": common.timeit(lambda: observe(state, lang_ids, rewards), warmup=3, iters=args.iters, min_time=0.5),
        "update": common.timeit(lambda: update(buffered), warmup=3, iters=args.iters, min_time=0.5),
        "update_compat": common.timeit(lambda: update_compat(buffered), warmup=3, iters=args.iters, min_time=0.5),
    }

    # ---- peer: the reference loop on the same rows ---------------------------------------------
    peer_router = ReferenceRouterPort(spec.languages.names, alpha, tau, eps)
    for i, t in enumerate(spec.topics.names):
        peer_router.topic_q[t] = np.asarray(state.A[i]).copy()
    for i, g in enumerate(spec.regions.names):
        peer_router.region_q[g] = np.asarray(state.B[i]).copy()
    rows = [(p, topics[p], regions[p], int(enc["orig_lang"][p])) for p in range(P) for _ in range(K)]
    flat_rewards = np.asarray(rewards).reshape(-1)
    np.random.seed(0)
    peer_langs = peer_router.assign(rows, K, args.K_on)

    def peer_observe():
        peer_router.observe(rows, peer_langs, flat_rewards)
        peer_router.buffer.clear()

    def peer_update():
        for _ in range(M):
            peer_router.observe(rows, peer_langs, flat_rewards)
        t0 = time.perf_counter()
        peer_router.update("zscore")
        return time.perf_counter() - t0

    peer = {
        "assign": common.timeit(lambda: peer_router.assign(rows, K, args.K_on), warmup=1, iters=args.peer_iters),
        "observe": common.timeit(peer_observe, warmup=1, iters=args.peer_iters),
        "update": float(np.median([peer_update() for _ in range(args.peer_iters)])),
    }
    extra = dict(prompts=P, K=K, backend=jax.default_backend())
    common.emit(f"router/assign_{P}x{K}", ours["assign"] * 1e6, peer["assign"] * 1e6, "us",
                higher_is_better=False, **extra)
    common.emit(f"router/observe_{P * K}", ours["observe"] * 1e6, peer["observe"] * 1e6, "us",
                higher_is_better=False, **extra)
    common.emit(f"router/update_{P * K * M}", ours["update"] * 1e6, peer["update"] * 1e6, "us",
                higher_is_better=False, norm="zscore", **extra)
    common.emit("router/update_compat", ours["update_compat"] * 1e6, peer["update"] * 1e6, "us",
                higher_is_better=False, norm="zscore", reference_compat=True, **extra)
    common.emit(f"router/per_step_M{M}", (ours["observe"] + ours["update"] / M) * 1e6,
                (peer["observe"] + peer["update"] / M) * 1e6, "us", higher_is_better=False, **extra)
