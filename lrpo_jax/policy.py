"""Policy loading and the per-token log-prob function the GRPO update differentiates."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lrpo_jax.models import decoder as decoder_lib
from lrpo_jax import parallel
from lrpo_jax.models import hf_import, shipped
from lrpo_jax.rl.logprobs import chunked_logprobs


def load_policy(cfg, seed: int = 0, *, abstract: bool = False):
    """`config.policy` -> (DecoderConfig, graphdef, params, tokenizer).

    `random_init` builds a randomly initialised model (smoke tests) from `overrides` over the
    source folder's config.json, or from `overrides` alone when they name a `family`; the
    tokenizer always comes from the source folder. `abstract=True` returns the params as
    ShapeDtypeStructs without reading or initialising any weight: the restore target when the
    weights come from a training checkpoint instead.
    """
    from transformers import AutoTokenizer
    folder = shipped.resolve(cfg.source, require_config=not cfg.random_init)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    over = dict(cfg.overrides) if cfg.get("overrides") else {}
    for key in ("layer_types", "eos_token_ids"):
        if key in over:
            over[key] = tuple(over[key])
    settings = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, remat=cfg.remat)
    if abstract:
        dcfg = (decoder_lib.DecoderConfig(**{**over, **settings}) if cfg.random_init and "family" in over
                else decoder_lib.DecoderConfig.from_hf(folder, **over, **settings))
        graphdef, params = hf_import.abstract_decoder(dcfg)
    elif cfg.random_init:
        if "family" in over:
            dcfg = decoder_lib.DecoderConfig(**{**over, **settings})
        else:
            dcfg = decoder_lib.DecoderConfig.from_hf(folder, **over, **settings)
        graphdef, params = nnx.split(decoder_lib.Decoder(dcfg, rngs=nnx.Rngs(seed)))
    else:
        dcfg, params = hf_import.load_decoder(folder, **over, **settings)
        graphdef, _ = hf_import.abstract_decoder(dcfg)
    if len(tokenizer) > dcfg.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the policy's vocabulary is {dcfg.vocab_size}")
    return dcfg, graphdef, params, tokenizer


PROMPT_FILE = "lrpo_prompt.json"  # written beside a warm-start export: the prompt it was taught with


def taught_prompt(source: str) -> dict[str, str]:
    """{"mode", "chat_template"} a warm-start export (`hf:<folder>`) was taught with, from its
    PROMPT_FILE; '' for what it does not record (no file, or one written before chat_template)."""
    import json
    import pathlib
    if source.startswith("shipped:"):
        return {"mode": "", "chat_template": ""}
    folder = pathlib.Path(source.split(":", 1)[1] if source.startswith("hf:") else source).expanduser()
    f = folder / PROMPT_FILE
    saved = json.loads(f.read_text()) if f.is_file() else {}
    return {"mode": saved.get("mode", ""), "chat_template": saved.get("chat_template", "")}


def check_prompt_settings(prompt, where: str = "config.prompt") -> None:
    """evaluate/sample settings, before any model loads: mode 'auto' | a mode, chat_template
    'trained' | a chat-template setting."""
    from lrpo_jax.data.prompts import CHAT_TEMPLATES, MODES as PROMPT_MODES
    if prompt.mode not in ("auto",) + PROMPT_MODES:
        raise ValueError(f"{where}.mode={prompt.mode!r}; expected auto (the model's training mode) or one of "
                         f"{PROMPT_MODES}")
    if prompt.chat_template not in ("trained",) + CHAT_TEMPLATES:
        raise ValueError(f"{where}.chat_template={prompt.chat_template!r}; expected trained (the model's training "
                         f"setting) or one of {CHAT_TEMPLATES}")


def prompt_settings(mode: str, chat_template: str, taught_mode: str, taught_chat: str) -> tuple[str, str]:
    """What evaluate/sample prompt a model with: config prompt.mode 'auto' and prompt.chat_template
    'trained' (their defaults) take the model's training settings (few-shot and 'auto' when
    unknown: the base policy); any other value is used as given."""
    return (taught_mode or "fewshot") if mode == "auto" else mode, \
        (taught_chat or "auto") if chat_template == "trained" else chat_template


def eos_ids(dcfg, tokenizer) -> tuple[int, ...]:
    ids = set(dcfg.eos_token_ids)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    for name in ("<end_of_turn>", "<|im_end|>", "<|eot_id|>"):  # chat turn ends of the families we load
        tid = tokenizer.convert_tokens_to_ids(name) if name in tokenizer.get_vocab() else None
        if tid is not None:
            ids.add(int(tid))
    return tuple(sorted(ids))


def make_logp_fn(graphdef, response_len: int, *, temperature: float = 1.0, chunk: int = 64,
                 remat_logits: bool = True):
    """(params, batch) -> (log-probs [B, R], entropy [B, R]) of the response tokens.

    batch['tokens'] is [prompt (left-padded) | response (right-padded)]; the hidden state at
    position j predicts token j + 1, so the response is predicted by positions Tp-1 .. Tp+R-2.
    Log-probs are computed chunk by chunk from hidden states; with `remat_logits` the backward
    pass recomputes each chunk's logits, so [B, T, V] logits never exist at once.
    """
    def logp_fn(params, batch):
        model = nnx.merge(graphdef, params)
        hidden, _ = model(batch["tokens"], batch["positions"], batch["attn_mask"], return_hidden=True)
        start = batch["tokens"].shape[1] - response_len
        h = jax.lax.dynamic_slice_in_dim(hidden, start - 1, response_len, axis=1)
        targets = batch["tokens"][:, start:]
        return chunked_logprobs(h, model.unembedding(), targets, temperature=temperature, chunk=chunk,
                                remat=remat_logits)

    return logp_fn


def batched_logp(logp_fn, micro_batch: int):
    """Forward-only log-probs over a whole batch, `micro_batch` rows at a time (bounded memory)."""
    def run(params, batch):
        keys = ("tokens", "positions", "attn_mask")
        xs = {k: batch[k] for k in keys}
        rows = xs["tokens"].shape[0]
        n = rows // micro_batch
        split = jax.tree.map(lambda x: parallel.split_rows(x, n), xs)  # strided: each part on every device
        lp = jax.lax.map(lambda b: logp_fn(params, b)[0], split)
        return lp.swapaxes(0, 1).reshape(rows, -1)  # back to row order

    return run


def assemble(prompt_tokens, prompt_mask, response_tokens, response_mask) -> dict:
    """Training inputs for [prompt | response] rows (numpy in, numpy out)."""
    import numpy as np
    tokens = np.concatenate([prompt_tokens, response_tokens], axis=1).astype(np.int32)
    attn = np.concatenate([prompt_mask, response_mask], axis=1).astype(np.int32)
    positions = np.maximum(np.cumsum(attn, axis=1) - 1, 0).astype(np.int32)
    return {"tokens": tokens, "attn_mask": attn, "positions": positions,
            "response_mask": response_mask.astype(np.float32)}


def cast_params(params, dtype):
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
