"""Rollout generation throughput: our jitted KV-cache sampler vs transformers PyTorch `generate`.

    python -m lrpo_jax.bench sampler [--models gemma3_270m,smollm2_135m] [--batches 1,8,32] [--iters 2]
    python -m lrpo_jax.bench sampler --tunix build     # + the Tunix peer (builds its venv once)
    python -m lrpo_jax.bench sampler --tunix build --hf off   # Tunix lines only

Lines (stdout, JSON), one per (model, batch):
  sampler/<model>_b<B>  generated tokens/s: prompt of 32 tokens, exactly 64 new tokens per row
                        (no EOS stop on either side), temperature 1.0, top-k off, top-p 1, fp32 on
                        all CPU cores, same HF folder on both sides.
Context on stderr: compile seconds, time to first token (prefill), peak RSS, achieved GFLOP/s and its
fraction of this machine's fp32 matmul peak (measured in the same run). Small batches are bound by
streaming the fp32 weights (Gemma-3-270M: 1.07 GB per decode step), not by FLOPs.
KV cache size: 2 (k, v) x layers x batch x (prompt bucket + new tokens) x kv_heads x head_dim x 4 bytes
(fp32); Gemma-3-270M at batch 32: 2 x 18 x 32 x 96 x 1 x 256 x 4 B = 113 MB.
Tunix peer: `sampler/<model>_b<B>_vs_tunix` lines time google-tunix 0.1.7's `Sampler` (Gemma 3
through its gemma3 module, SmolLM2 through its llama3 module) on the same folder and prompt ids, in
its own venv (`--tunix PATH` to its python, or `--tunix build` once under $LRPO_CACHE/tunix-venv;
Tunix pins its own dependency set), as a subprocess running lrpo_jax/bench/tunix_peer.py. Both sides
sample at T=1 with no top-k and top-p 1, which Tunix 0.1.7 serves with `jax.random.categorical` over
the whole vocabulary; ours draws one uniform per row (two-level inverse CDF). Both sides' greedy tokens on one probe prompt are
compared first (`greedy_agree` on stderr). Ours is measured in blocks (all batches, then the peer's)
so neither side runs right after the other's thread pool.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

import jax
import numpy as np

from lrpo_jax.bench import common
from lrpo_jax.bench.forward import matmul_peak
from lrpo_jax.models import hf_import, shipped
from lrpo_jax.sampling.processing import SamplingParams
from lrpo_jax.sampling.sampler import Sampler, SamplerSpec

PROMPT, NEW = 32, 64
ID_HIGH = 30000  # prompt ids are drawn from [10, ID_HIGH) on both sides (below every vocabulary here)
FOLDERS = {"gemma3_270m": shipped.gemma3_270m_dir, "smollm2_135m": shipped.smollm2_135m_dir}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def decode_flops(cfg, params) -> float:
    """FLOPs per generated token: 2 x every weight (the tied embedding counted once, as the LM head)
    plus attention over the average context (prompt + half the new tokens)."""
    n_params = sum(x.size for x in jax.tree.leaves(params))
    context = PROMPT + NEW / 2
    return 2 * n_params + 2 * 2 * cfg.num_layers * context * cfg.num_heads * cfg.head_dim


def _ours(name: str, batches: list[int]):
    """(config, params, sampler) of one model: prompt bucket PROMPT, the given batch buckets, no EOS."""
    cfg, params = hf_import.load_decoder(FOLDERS[name]())
    graphdef, _ = hf_import.abstract_decoder(cfg)
    sampler = Sampler(graphdef, cfg, SamplerSpec(max_new_tokens=NEW, eos_ids=(), pad_id=cfg.pad_token_id,
                                                 prompt_buckets=(PROMPT,), batch_buckets=tuple(batches)))
    return cfg, params, sampler


def _time_ours(sampler, params, prompts: np.ndarray, iters: int) -> tuple[float, float]:
    """(first call seconds incl. compile, median steady seconds) of sampling NEW tokens at T=1."""
    b = prompts.shape[0]
    mask = np.ones((b, PROMPT), np.int32)
    sp, key = SamplingParams.make(b, 1.0, 0, 1.0), jax.random.key(0)
    t0 = time.perf_counter()
    out = sampler.generate(params, prompts, key, sp, prompt_mask=mask)
    first = time.perf_counter() - t0
    assert int(out.lengths.min()) == NEW, out.lengths
    return first, common.timeit(lambda: sampler.generate(params, prompts, key, sp, prompt_mask=mask).tokens,
                                warmup=0, iters=iters)


def run_model(name: str, batches: list[int], iters: int, torch) -> None:
    from transformers import AutoModelForCausalLM
    cfg, params, sampler = _ours(name, batches)
    peak = matmul_peak()
    common.note(bench=f"sampler/{name}", peak_gflops=round(peak / 1e9, 1))
    rng = np.random.default_rng(0)
    cases = [(b, rng.integers(10, ID_HIGH, (b, PROMPT)).astype(np.int32)) for b in batches]
    # All of ours first, then all of the peer's: interleaved, torch's thread pool left busy after a
    # `generate` slowed our next batch by up to 1.5x (b32: 100 vs 157 tokens/s measured alone).
    ours_s = {}
    for b, prompts in cases:
        first, ours = _time_ours(sampler, params, prompts, iters)
        mask, key, sp = np.ones((b, PROMPT), np.int32), jax.random.key(0), SamplingParams.make(b, 1.0, 0, 1.0)
        ttft = common.timeit(lambda: sampler._prefill(params, prompts, mask, key, sp).tokens, warmup=1, iters=iters)
        ours_s[b] = ours
        gflops = decode_flops(cfg, params) * b * NEW / ours / 1e9
        common.note(bench=f"sampler/{name}_b{b}", compile_seconds=round(max(first - ours, 0), 2),
                    time_to_first_token_s=round(ttft, 3), peak_rss_mb=round(_rss_mb(), 1),
                    ours_gflops=round(gflops, 1), fraction_of_peak=round(gflops * 1e9 / peak, 3))
    model = AutoModelForCausalLM.from_pretrained(FOLDERS[name](), dtype=torch.float32).eval()
    for b, prompts in cases:
        ids = torch.tensor(prompts, dtype=torch.long)

        def peer():
            with torch.inference_mode():
                return model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                                      top_k=0, top_p=1.0, min_new_tokens=NEW, max_new_tokens=NEW,
                                      pad_token_id=cfg.pad_token_id)

        peer_s = common.timeit(peer, warmup=1, iters=iters)
        common.emit(f"sampler/{name}_b{b}", b * NEW / ours_s[b], b * NEW / peer_s, "tokens/s", batch=b,
                    prompt=PROMPT, new_tokens=NEW, peer_name="transformers")


TUNIX_PINS = ("google-tunix==0.1.7", "jax==0.10.2", "jaxlib==0.10.2", "flax==0.12.8")


def tunix_python(spec: str) -> str | None:
    """'off' -> None; a path -> that interpreter; 'build' -> the cached venv, created on first use."""
    if spec == "off":
        return None
    if spec != "build":
        return spec
    venv = shipped.cache_root() / "tunix-venv"
    py = venv / "bin" / "python"
    if not py.exists():
        common.note(building_tunix_venv=str(venv), pins=list(TUNIX_PINS))
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", *TUNIX_PINS], check=True)
    return str(py)


def run_tunix(python: str, name: str, batches: list[int], iters: int) -> None:
    folder = FOLDERS[name]()
    script = pathlib.Path(__file__).with_name("tunix_peer.py")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    proc = subprocess.run([python, str(script), "--folder", str(folder), "--batches", ",".join(map(str, batches)),
                           "--prompt", str(PROMPT), "--new", str(NEW), "--iters", str(iters),
                           "--id_high", str(ID_HIGH)],
                          capture_output=True, text=True, env=env, cwd="/", timeout=3600)
    if proc.returncode:
        raise RuntimeError(f"Tunix peer failed:\n{proc.stderr[-3000:]}")
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    probe = lines[0]
    cfg, params, sampler = _ours(name, batches)
    greedy = Sampler(sampler.graphdef, cfg, SamplerSpec(max_new_tokens=16, eos_ids=(), pad_id=cfg.pad_token_id,
                                                        prompt_buckets=(PROMPT,), batch_buckets=(1,)))
    ids = np.asarray([probe["probe_prompt"]], np.int32)
    ours_tok = greedy.generate(params, ids, jax.random.key(0), SamplingParams.make(1, 0.0),
                               prompt_mask=np.ones_like(ids)).tokens[0].tolist()
    agree = sum(a == b for a, b in zip(ours_tok, probe["greedy_tokens"])) / 16
    common.note(bench=f"sampler/{name}_tunix", greedy_agree=agree)
    rng = np.random.default_rng(0)
    rng.integers(10, ID_HIGH, PROMPT)  # the probe draw: keep the same stream as the peer
    for rec in lines[1:]:
        b = rec["batch"]
        _, ours = _time_ours(sampler, params, rng.integers(10, ID_HIGH, (b, PROMPT)).astype(np.int32), iters)
        common.note(bench=f"sampler/{name}_b{b}_vs_tunix", tunix_first_call_s=round(rec["first_call_s"], 2),
                    tunix_new_token_lengths=rec["new_token_lengths"])
        common.emit(f"sampler/{name}_b{b}_vs_tunix", b * NEW / ours, rec["tokens_per_s"], "tokens/s", batch=b,
                    prompt=PROMPT, new_tokens=NEW, peer_name="tunix 0.1.7", greedy_agree=agree)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m lrpo_jax.bench sampler", description=__doc__.split("\n")[0])
    p.add_argument("--models", default="gemma3_270m,smollm2_135m")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--tunix", default="off", help="off | build (venv under $LRPO_CACHE) | path to a python with tunix")
    p.add_argument("--hf", default="on", choices=("on", "off"), help="the transformers `generate` lines")
    args = p.parse_args(argv)
    models, batches = args.models.split(","), [int(b) for b in args.batches.split(",")]
    py = tunix_python(args.tunix)
    if py:
        for name in models:
            run_tunix(py, name, batches, args.iters)
    if args.hf == "off":
        return
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    common.note(**common.machine(), torch=torch.__version__)
    for name in models:
        run_model(name, batches, args.iters, torch)
