"""The Tunix side of `bench sampler`, run inside Tunix's own venv (it imports nothing from lrpo_jax).

    <tunix venv>/bin/python lrpo_jax/bench/tunix_peer.py --folder HF_DIR --batches 1,8,32 --prompt 32 --new 64

Loads the same HF folder with Tunix's safetensors loader (fp32): Gemma 3 through `tunix.models.gemma3`,
Llama-architecture folders (SmolLM2) through `tunix.models.llama3` with the folder's config.json; times
`tunix.generate.sampler.Sampler` on the same random prompt ids `bench sampler` uses (seeded), at
temperature 1.0 with top-p 1.0 (Tunix samples only in its top-p mode; top-k off) and no EOS stop, so
every row generates exactly `--new` tokens. Prints one JSON object per batch size.
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np


class FixedIds:
    """A 'tokenizer' whose texts are space-separated token ids: both sides see identical prompts."""

    def encode(self, text, **kwargs):
        return [int(x) for x in text.split()]

    def decode(self, ids, **kwargs):
        return ""

    def bos_id(self):
        return 0  # falsy: the sampler prepends nothing; the prompt already is what we pass

    def eos_id(self):
        return -1

    def pad_id(self):
        return 0


def load(folder):
    """(config, model) of the HF folder in Tunix's own classes."""
    with open(f"{folder}/config.json") as f:
        hf = json.load(f)
    if hf["model_type"].startswith("gemma3"):
        from tunix.models.gemma3 import model as model_lib
        from tunix.models.gemma3 import params_safetensors
        cfg = model_lib.ModelConfig.gemma3_270m()
        return cfg, params_safetensors.create_model_from_safe_tensors(folder, cfg, mesh=None, dtype=jnp.float32)
    if hf["model_type"] == "llama":
        from tunix.models.llama3 import model as model_lib
        from tunix.models.llama3 import params as params_lib
        rope = hf.get("rope_parameters") or {"rope_type": "default", "rope_theta": hf.get("rope_theta", 10000.0)}
        if rope.get("rope_type", "default") != "default":
            raise SystemExit(f"Tunix's llama3 applies plain RoPE; {folder} uses {rope['rope_type']!r} scaling")
        cfg = model_lib.ModelConfig(
            num_layers=hf["num_hidden_layers"], vocab_size=hf["vocab_size"], embed_dim=hf["hidden_size"],
            hidden_dim=hf["intermediate_size"], num_heads=hf["num_attention_heads"],
            head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
            num_kv_heads=hf["num_key_value_heads"], rope_theta=int(rope["rope_theta"]), norm_eps=hf["rms_norm_eps"],
            weight_tying=hf.get("tie_word_embeddings", False))
        return cfg, params_lib.create_model_from_safe_tensors(folder, cfg, mesh=None, dtype=jnp.float32)
    raise SystemExit(f"no Tunix model for model_type={hf['model_type']!r}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--folder", required=True)
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--id_high", type=int, default=30000, help="prompt ids are drawn from [10, id_high)")
    a = p.parse_args()
    from tunix.generate import sampler as sampler_lib
    cfg, model = load(a.folder)
    cache = sampler_lib.CacheConfig(cache_size=a.prompt + a.new, num_layers=cfg.num_layers,
                                    num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim)
    sampler = sampler_lib.Sampler(model, FixedIds(), cache)
    rng = np.random.default_rng(0)
    probe = rng.integers(10, a.id_high, a.prompt)  # greedy tokens on one prompt: proves both sides load the same weights
    out = sampler([" ".join(map(str, probe))], max_generation_steps=16, max_prompt_length=a.prompt, temperature=0.0,
                  eos_tokens=[-1])
    print(json.dumps({"probe_prompt": probe.tolist(), "greedy_tokens": np.asarray(out.tokens[0]).tolist()}), flush=True)
    for b in (int(x) for x in a.batches.split(",")):
        ids = rng.integers(10, a.id_high, (b, a.prompt))
        texts = [" ".join(map(str, row)) for row in ids]

        def run():
            out = sampler(texts, max_generation_steps=a.new, max_prompt_length=a.prompt, temperature=1.0,
                          top_p=1.0, top_k=None, seed=0, eos_tokens=[-1])
            jax.block_until_ready(out.tokens)
            return out

        t0 = time.perf_counter()
        out = run()
        first = time.perf_counter() - t0
        lengths = sorted({len(t) for t in out.tokens})
        times = []
        for _ in range(a.iters):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        med = float(np.median(times))  # median, like bench.common.timeit on our side
        print(json.dumps({"batch": b, "tokens_per_s": b * a.new / med, "first_call_s": first,
                          "seconds": med, "new_token_lengths": lengths}), flush=True)


if __name__ == "__main__":
    main()
