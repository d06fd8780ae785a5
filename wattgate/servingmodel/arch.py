"""Model architectures the serving model knows: the shapes behind a step's GEMMs, attention, KV cache and weights."""

from __future__ import annotations

from dataclasses import dataclass

from wattgate.servingmodel.errors import ServingModelError

BYTES_BF16 = 2


@dataclass(frozen=True)
class Architecture:
    """A dense decoder-only transformer with grouped-query attention and a gated MLP (the Llama family).

    Shapes are the models' published configurations (Hugging Face ``config.json``): hidden size,
    layers, attention heads, key/value heads, head dimension, MLP intermediate size, vocabulary.
    ``params`` is the published parameter count, used for the weights' memory; ``context_tokens`` the
    longest sequence (prompt and output) the model takes.
    """

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    params: float
    context_tokens: int

    def gemm_shapes(self, tp: int) -> tuple[tuple[int, int], ...]:
        """(n, k) of each linear layer of one transformer layer on one GPU of a TP group:
        fused QKV, attention output, fused gate/up, down (column- then row-parallel, as vLLM shards them)."""
        self.check_tp(tp)
        qkv = (self.heads + 2 * self.kv_heads) * self.head_dim // tp
        return (
            (qkv, self.hidden),
            (self.hidden, self.heads * self.head_dim // tp),
            (2 * self.intermediate // tp, self.hidden),
            (self.hidden, self.intermediate // tp),
        )

    def lm_head_shape(self, tp: int) -> tuple[int, int]:
        self.check_tp(tp)
        return (self.vocab // tp, self.hidden)

    def heads_per_gpu(self, tp: int) -> tuple[int, int]:
        """(query heads, key/value heads) on one GPU; KV heads are replicated when TP exceeds them."""
        self.check_tp(tp)
        return self.heads // tp, max(self.kv_heads // tp, 1)

    def weights_bytes(self) -> float:
        return self.params * BYTES_BF16

    def kv_bytes_per_token(self, tp: int) -> float:
        """KV-cache bytes one token takes on one GPU (keys and values of every layer, bf16)."""
        return 2 * self.layers * self.heads_per_gpu(tp)[1] * self.head_dim * BYTES_BF16

    def check_tp(self, tp: int) -> None:
        if tp < 1 or self.heads % tp or self.intermediate % tp or self.vocab % tp:
            raise ServingModelError(f"{self.name} cannot be sharded over TP{tp}")


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("llama-2-70b", 80, 8192, 64, 8, 128, 28672, 32000, 68.98e9, 4096),
        Architecture("llama-3.1-70b", 80, 8192, 64, 8, 128, 28672, 128256, 70.55e9, 131072),
        Architecture("llama-3.1-8b", 32, 4096, 32, 8, 128, 14336, 128256, 8.03e9, 131072),
        Architecture("llama-3.2-3b", 28, 3072, 24, 8, 128, 8192, 128256, 3.21e9, 131072),
        Architecture("llama-3.2-1b", 16, 2048, 32, 8, 64, 8192, 128256, 1.24e9, 131072),
    )
}


def architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ServingModelError(f"unknown model architecture {name!r}; known: {', '.join(ARCHITECTURES)}") from None
