"""The paper's Transformer (Section 4.2).

Embedding 256; 8 causal self-attention layers of width 256 with 16 heads; relative positional
embeddings as in Music Transformer (one learned vector per relative distance 0..239, distances
beyond clipped to the last, shared by the heads of a layer); post-LayerNorm residual blocks with a
feed-forward 512 -> 256; RealFormer residual attention (each layer adds the previous layer's
pre-softmax scores); a final linear to 153. 4,326,041 parameters.

Keys carry no position: position enters only through q . E[i - j]. That is what lets the decode
cache keep keys as they are while the window slides, each slot's distance following from the
ring order (see rotated_relative).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from daemon.codec import VOCAB_SIZE
from daemon.decoding import ROLLBACK_TOKENS, DecodeLayout, Linear, Norm, Table


@dataclass(frozen=True)
class TransformerConfig:
    vocab_size: int = VOCAB_SIZE
    d_model: int = 256
    num_layers: int = 8
    num_heads: int = 16
    d_ff: int = 512
    max_distance: int = 239
    context: int = 256
    dropout: float = 0.5
    kind: str = "transformer"

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    def to_dict(self) -> dict:
        return asdict(self)


class AttentionLayer(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.relative = nn.Parameter(torch.randn(config.max_distance + 1, config.head_dim) * config.head_dim**-0.5)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.norm1 = nn.LayerNorm(config.d_model)
        self.ff1 = nn.Linear(config.d_model, config.d_ff)
        self.ff2 = nn.Linear(config.d_ff, config.d_model)
        self.norm2 = nn.LayerNorm(config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.heads = config.num_heads
        self.scale = 1.0 / math.sqrt(config.head_dim)

    def scaled_qkv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """QKV weight and bias (copies) with the 1/sqrt(d) score scale folded into the query rows,
        for decode steps: one op fewer per layer."""
        weight, bias = self.qkv.weight.detach().clone(), self.qkv.bias.detach().clone()
        width = weight.shape[1]
        weight[:width] *= self.scale
        bias[:width] *= self.scale
        return weight, bias

    def forward(
        self, x: torch.Tensor, previous: torch.Tensor | None, distance: torch.Tensor, causal: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, T, D]; previous scores [B, H, T, T] or None; distance [T, T] clipped indices;
        causal [T, T] bool (True = masked). Returns (x, scores, keys, values)."""
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        relative = torch.matmul(q, self.relative.t())  # [B, H, T, distances]
        relative = torch.gather(relative, 3, distance.expand(batch, self.heads, length, length))
        scores = (torch.matmul(q, k.transpose(-1, -2)) + relative) * self.scale
        if previous is not None:
            scores = scores + previous
        weights = torch.softmax(scores.masked_fill(causal, float("-inf")), dim=-1)
        attended = torch.matmul(weights, v).transpose(1, 2).reshape(batch, length, width)
        x = self.norm1(x + self.drop(self.proj(attended)))
        x = self.norm2(x + self.drop(self.ff2(self.drop(F.relu(self.ff1(x))))))
        return x, scores, k, v


class TransformerModel(nn.Module):
    # The decode step's weights (decoding.DecodeLayout): both steps and the C table read these.
    DECODE_LAYOUT = DecodeLayout(
        kind="transformer",
        dims=("d_model", "num_heads", "head_dim", "d_ff", "num_layers", "context", "vocab_size"),
        model=(Table("embed"), Linear("head")),
        layer=(
            Linear("qkv", lambda model, i: model.layers[i].scaled_qkv()),
            # The C step streams each of head_dim rows over the slots: it reads the table transposed.
            Table("relative", lambda model, i: rotated_relative(model.layers[i].relative.detach(), model.config.context),
                  native=lambda table: table.t()),
            Linear("proj"), Norm("norm1"), Linear("ff1"), Linear("ff2"), Norm("norm2"),
        ),
    )

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(AttentionLayer(config) for _ in range(config.num_layers))
        self.head = nn.Linear(config.d_model, config.vocab_size)
        self.drop = nn.Dropout(config.dropout)

    def _run(self, tokens: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        length = tokens.shape[1]
        positions = torch.arange(length, device=tokens.device)
        distance = (positions[:, None] - positions[None, :]).clamp(0, self.config.max_distance)
        causal = positions[None, :] > positions[:, None]
        x = self.drop(self.embed(tokens))
        scores = None
        cache = []
        for layer in self.layers:
            x, scores, k, v = layer(x, scores, distance, causal)
            cache.append((k, v))
        return self.head(x), cache, scores

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, T] (T <= context) -> logits [B, T, vocab]."""
        return self._run(tokens)[0]

    # Incremental inference: the decode weights are DECODE_LAYOUT (above), prepared by the engine.
    def init_state(self, device: torch.device, dtype: torch.dtype) -> KVCache:
        """An empty cache; dtype is the step's (fp16 for the native step's reduced precisions)."""
        return KVCache(self.config, device, dtype)

    def prefill(self, tokens: torch.Tensor, state: KVCache) -> tuple[torch.Tensor, KVCache]:
        """Feed tokens [T] (T <= context) into an empty cache: one full forward."""
        if state.filled or tokens.numel() > self.config.context:
            raise ValueError(f"prefill needs an empty cache and at most {self.config.context} tokens")
        logits, cache, _ = self._run(tokens.view(1, -1))
        state.load(cache)
        return logits[0, -1], state

    def decode_step(self, weights: Any, token: int, state: KVCache) -> tuple[torch.Tensor, KVCache]:
        """(torch_weights of DECODE_LAYOUT, token) -> (logits [vocab], state); the cache is updated in place.

        Written for few ops per layer (13 plus a few views; narrow/select/unbind rather than
        tensor[...] indexing, which costs several more us per call): each torch call's dispatch
        costs about as much as a small matrix read (bench/decode.py prints the step's latency
        against the native one's). Keys are cached transposed ([H, d, slots]): q.K^T then reads
        each key row contiguously."""
        slot, used = state.advance()
        width = self.config.d_model
        heads = self.config.num_heads
        shape = (width,)
        # Rows first .. first+used of the rotated table are E[distance] of slots 0..used-1.
        first = self.config.context - 1 - slot
        x = weights.embed.narrow(0, token, 1)  # [1, D]
        scores = None
        for layer, keys, values in zip(weights.layers, state.keys, state.values):
            q, key, value = layer.qkv(x).view(3, heads, -1).unbind(0)  # q already scaled
            keys.select(2, slot).copy_(key)
            values.select(1, slot).copy_(value)
            relative = layer.relative.narrow(0, first, used).t()
            row = torch.mm(q, relative) if scores is None else torch.addmm(scores, q, relative)  # [H, used]
            row = torch.baddbmm(row.unsqueeze(1), q.unsqueeze(1), keys.narrow(2, 0, used))  # [H, 1, used]
            scores = row.view(heads, used)
            attended = torch.bmm(torch.softmax(row, dim=-1), values.narrow(1, 0, used)).view(1, width)
            x = F.layer_norm(layer.proj(attended).add_(x), shape, *layer.norm1)
            x = F.layer_norm(layer.ff2(layer.ff1(x).relu_()).add_(x), shape, *layer.norm2)
        return weights.head(x).view(-1), state


def rotated_relative(relative: torch.Tensor, context: int) -> torch.Tensor:
    """[2 * context, d] table G with G[context - 1 - slot + s] = E[distance of slot s] for the token
    written at `slot`, whether or not the ring has wrapped: with slots filled in order, that
    distance is (slot - s) mod context, clipped to max_distance. Replaces a per-step distance
    computation and gather by a slice."""
    clipped = relative[torch.arange(context, device=relative.device).clamp(max=relative.shape[0] - 1)]
    return torch.cat([clipped.flip(0), clipped.flip(0)]).contiguous()


class KVCache:
    """A static key/value cache of `context` slots per layer, used as a ring once full.

    Slot order does not matter to attention (softmax over a set); what matters is each slot's
    distance to the new token: (slot of the new token - slot) mod context, clipped.

    Rewinding (engine rollback) moves the write position back. Before the ring wraps that is all;
    once it has, each step overwrites the key/value of the token `context` places back, which the
    rewound window needs again: the last ROLLBACK_TOKENS of them are kept in a preallocated ring
    (two strided copies per step, no allocation)."""

    def __init__(self, config: TransformerConfig, device: torch.device, dtype: torch.dtype) -> None:
        # One block per kind for all layers (the C step takes each as one pointer); keys
        # transposed, see decode_step.
        layers, heads, head_dim, context = config.num_layers, config.num_heads, config.head_dim, config.context
        self.key_store = torch.zeros((layers, heads, head_dim, context), device=device, dtype=dtype)
        self.value_store = torch.zeros((layers, heads, context, head_dim), device=device, dtype=dtype)
        self.keys = list(self.key_store.unbind(0))
        self.values = list(self.value_store.unbind(0))
        self.context = context
        self.position = 0  # absolute position of the next token
        self.overwritten_keys = torch.zeros((ROLLBACK_TOKENS, layers, heads, head_dim), device=device, dtype=dtype)
        self.overwritten_values = torch.zeros((ROLLBACK_TOKENS, layers, heads, head_dim), device=device, dtype=dtype)

    @property
    def filled(self) -> int:
        return min(self.position, self.context)

    def advance(self) -> tuple[int, int]:
        """Claim the slot for the next token; return (slot, slots in use)."""
        slot = self.position % self.context
        if self.position >= self.context:  # the slot holds a key the window may be rewound to
            kept = self.position % ROLLBACK_TOKENS
            self.overwritten_keys[kept].copy_(self.key_store.select(3, slot))
            self.overwritten_values[kept].copy_(self.value_store.select(2, slot))
        self.position += 1
        return slot, self.filled

    def rewind(self, position: int) -> KVCache:
        """Back to the cache after `position` tokens (at most ROLLBACK_TOKENS back, checked by
        the engine): the slots written since get back what they held (latest first: with a rewind
        longer than the ring, a slot written twice gets what the earlier write overwrote)."""
        for written in reversed(range(max(position, self.context), self.position)):
            slot, kept = written % self.context, written % ROLLBACK_TOKENS
            self.key_store.select(3, slot).copy_(self.overwritten_keys[kept])
            self.value_store.select(2, slot).copy_(self.overwritten_values[kept])
        self.position = position
        return self

    def load(self, cache: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Fill from a full forward's keys/values ([1, H, T, d] per layer), positions 0..T-1."""
        length = cache[0][0].shape[2]
        for layer, (k, v) in enumerate(cache):
            self.keys[layer][:, :, :length] = k[0].transpose(1, 2)
            self.values[layer][:, :length] = v[0]
        self.position = length
