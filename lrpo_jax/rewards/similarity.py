"""Cross-lingual similarity of responses and references with a jitted Flax encoder.

Texts are tokenised on the host, sorted by length and cut into fixed-size batches padded to a
length bucket, so a whole run compiles at most one program per bucket. Embeddings are masked
mean-pooled (LRPO) or CLS-pooled, L2-normalised, and compared by dot product. References go
through a keyed cache (`ReferenceCache`: a key's text must never change); the trainer clears it every
step, so a step's rewards never depend on which steps came before (exact resume), and embeds each
step's distinct references once.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Hashable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lrpo_jax import parallel
from lrpo_jax.models import encoder as encoder_lib
from lrpo_jax.sampling import buckets as buckets_lib


class SimilarityModel:
    """Embeds texts with an encoder; `similarity(a, b)` is the cosine of their embeddings."""

    def __init__(self, cfg: encoder_lib.EncoderConfig, params, tokenizer, *, max_length: int = 512,
                 length_buckets: Sequence[int] = (64, 128, 256, 512), batch_size: int = 32,
                 pooling: str = "mean", prefix: str = "", mesh=None, chunk_tokens: int | None = None):
        if max_length > max(length_buckets):
            raise ValueError(f"reward.max_length={max_length} exceeds the largest length bucket "
                             f"{max(length_buckets)}")
        self.cfg, self.params, self.tokenizer = cfg, params, tokenizer
        self.max_length, self.batch_size, self.prefix, self.mesh = max_length, batch_size, prefix, mesh
        # lax.map chunks pay off on CPU (cache-resident activations); accelerators want one wide pass.
        self.chunk_tokens = (1024 if jax.default_backend() == "cpu" else 0) if chunk_tokens is None else chunk_tokens
        self.length_buckets = tuple(sorted(b for b in length_buckets if b <= max_length)) or (max_length,)
        if self.length_buckets[-1] < max_length:
            self.length_buckets += (max_length,)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # Structure only (eval_shape): no second copy of the weights is ever initialised.
        self._graphdef = nnx.graphdef(nnx.eval_shape(lambda: encoder_lib.Encoder(cfg, rngs=nnx.Rngs(0))))

        def embed(params, tokens, mask, micro_batch):
            model = nnx.merge(self._graphdef, params)
            return encoder_lib.sentence_embeddings(model, tokens, mask, pooling=pooling, micro_batch=micro_batch)

        self._embed = jax.jit(embed, static_argnums=(3,))

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, **kwargs) -> "SimilarityModel":
        """Loads an HF encoder folder (config.json, safetensors, tokenizer files)."""
        from transformers import AutoTokenizer

        from lrpo_jax.models import encoder_import
        cfg, params = encoder_import.load_encoder(folder)
        tokenizer = AutoTokenizer.from_pretrained(os.fspath(folder))
        if "prefix" not in kwargs and is_e5(folder):
            # multilingual-e5 is trained with prefixes; "query: " on both sides is its recipe for
            # symmetric similarity. mmBERT (the reference's encoder), XLM-R, LaBSE take raw text.
            kwargs["prefix"] = "query: "
        return cls(cfg, params, tokenizer, **kwargs)

    def micro_batch(self, rows: int, length: int) -> int:
        """Rows per lax.map chunk: ~`chunk_tokens` tokens, whose activations stay in cache (on CPU 1.3-1.8x
        faster than one 64-row pass; bench/encoder.py), as the largest power of two dividing `rows`.
        Sharded (mesh) runs spread the rows over devices instead and take them in one pass."""
        if not self.chunk_tokens or self.mesh is not None:
            return rows
        mb = 1
        while mb * 2 <= max(1, self.chunk_tokens // length) and rows % (mb * 2) == 0:
            mb *= 2
        return mb

    def num_compiles(self) -> int:
        return self._embed._cache_size()  # <= 2 batch sizes x len(length_buckets)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids with the prefix, cut to max_length (the end of a longer text, "</s>" kept, is not
        scored: as in the reference; raise reward.max_length, up to the encoder's positions, if
        responses run longer)."""
        texts = [self.prefix + str(t).strip() for t in texts]
        enc = self.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=self.max_length)
        return enc["input_ids"]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 embeddings [N, D] of `texts` (order preserved)."""
        if not len(texts):
            return np.zeros((0, self.cfg.hidden_size), np.float32)
        ids = self.tokenize(texts)
        order = np.argsort([len(x) for x in ids], kind="stable")
        out = np.zeros((len(ids), self.cfg.hidden_size), np.float32)
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            chunk = [ids[i] for i in rows]
            length = buckets_lib.pick_bucket(max(len(x) for x in chunk), self.length_buckets, "encoder length")
            rows_b = self.batch_size if len(rows) > self.batch_size // 4 else self.batch_size // 4  # small tail batches
            tokens = np.full((rows_b, length), self.pad_id, np.int32)
            mask = np.zeros((rows_b, length), np.int32)
            for r, x in enumerate(chunk):  # right padding: positions start at 0 for every row
                tokens[r, :len(x)] = x
                mask[r, :len(x)] = 1
            if self.mesh is not None:
                tokens, mask = parallel.shard_batch((tokens, mask), self.mesh)
            emb = self._embed(self.params, tokens, mask, self.micro_batch(rows_b, length))
            out[rows] = np.asarray(emb)[:len(rows)]
        return out

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """Row-wise cosine similarity of a[i] and b[i]."""
        if len(a) != len(b):
            raise ValueError(f"similarity needs equal-length lists, got {len(a)} and {len(b)}")
        ea, eb = self.embed(list(a) + list(b)).reshape(2, len(a), -1)
        return np.einsum("nd,nd->n", ea, eb)


def is_e5(folder: str | os.PathLike) -> bool:
    """An (m)e5 checkpoint, by its folder name or config `_name_or_path` ("multilingual-e5-small",
    "intfloat/e5-base-v2"): the encoders that expect a "query: " / "passage: " prefix."""
    config = pathlib.Path(folder) / "config.json"
    names = [pathlib.Path(folder).resolve().name]
    if config.is_file():
        names.append(str(json.loads(config.read_text()).get("_name_or_path", "")))
    return any(re.search(r"(?<![a-z0-9])e5(?![a-z0-9])", n.lower()) for n in names)


class ReferenceCache:
    """Embeddings of reference answers, computed once per key (e.g. the prompt's id).

    A key seen with a different text raises: two prompts sharing an id would otherwise be scored
    against one of their references, silently."""

    def __init__(self, model: SimilarityModel, max_entries: int = 200_000):
        self.model, self.max_entries = model, max_entries
        self._cache: dict[Hashable, tuple[str, np.ndarray]] = {}

    def __len__(self):
        return len(self._cache)

    def get(self, keys: Sequence[Hashable], texts: Sequence[str]) -> np.ndarray:
        missing: dict[Hashable, str] = {}
        for k, t in zip(keys, texts):
            known = self._cache[k][0] if k in self._cache else missing.get(k)
            if known is not None and known != t:
                raise ValueError(f"reference key {k!r} stands for two different reference texts "
                                 f"({known[:60]!r}... and {t[:60]!r}...): example ids must be unique")
            if k not in self._cache:
                missing[k] = t
        if missing:
            if len(self._cache) + len(missing) > self.max_entries:
                # Bounded memory on huge datasets (recomputing is cheap), keeping this call's hits.
                self._cache = {k: self._cache[k] for k in dict.fromkeys(keys) if k in self._cache}
            for (k, t), e in zip(missing.items(), self.model.embed(list(missing.values()))):
                self._cache[k] = (t, e)
        return np.stack([self._cache[k][1] for k in keys])


def cosine(a: np.ndarray | jax.Array, b: np.ndarray | jax.Array) -> jax.Array:
    """Row-wise dot product of L2-normalised embeddings."""
    return jnp.einsum("nd,nd->n", jnp.asarray(a), jnp.asarray(b))
