"""The paper's Transformer (Section 4.2).

Embedding 256; 8 causal self-attention layers of width 256 with 16 heads; relative positional
embeddings as in Music Transformer (one learned vector per relative distance 0..239, distances
beyond clipped to the last, shared by the heads of a layer); post-LayerNorm residual blocks with a
feed-forward 512 -> 256; RealFormer residual attention (each layer adds the previous layer's
pre-softmax scores); a final linear to 153. 4,326,041 parameters.

Keys carry no position: position enters only through q . E[i - j]. That is what lets the decode
cache keep keys as they are while the window slides, with distances taken from absolute positions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from daemon.codec import VOCAB_SIZE


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

    # Incremental inference --------------------------------------------------------------
    def init_state(self, device: torch.device | str | None = None) -> "KVCache":
        return KVCache(self.config, device or self.head.weight.device, self.head.weight.dtype)

    def prefill(self, tokens: torch.Tensor, state: "KVCache") -> tuple[torch.Tensor, "KVCache"]:
        """Feed tokens [T]: one full forward into an empty cache, steps into a filled one."""
        if state.filled or tokens.numel() > self.config.context:
            logits = None
            for token in tokens.view(-1, 1):
                logits, state = self.step(token, state)
            return logits, state
        logits, cache, _ = self._run(tokens.view(1, -1))
        state.load(cache)
        return logits[0, -1], state

    def step(self, token: torch.Tensor, state: "KVCache") -> tuple[torch.Tensor, "KVCache"]:
        """token LongTensor [1] -> (logits [vocab], state). The cache is updated in place."""
        slot, used, distance = state.advance()
        x = F.embedding(token, self.embed.weight)  # [1, D]
        heads = self.config.num_heads
        scores = None
        for layer, keys, values in zip(self.layers, state.keys, state.values):
            q, k, v = F.linear(x, layer.qkv.weight, layer.qkv.bias).view(3, heads, -1)
            keys[:, slot] = k
            values[:, slot] = v
            q = q.unsqueeze(1)  # [H, 1, d]
            relative = torch.matmul(q, layer.relative.t()).index_select(2, distance)  # [H, 1, used]
            row = torch.baddbmm(relative, q, keys[:, :used].transpose(1, 2)).mul_(layer.scale)
            if scores is not None:
                row += scores
            scores = row
            attended = torch.bmm(torch.softmax(row, dim=-1), values[:, :used]).view(1, -1)
            x = F.layer_norm(
                x + F.linear(attended, layer.proj.weight, layer.proj.bias),
                layer.norm1.normalized_shape, layer.norm1.weight, layer.norm1.bias,
            )
            hidden = F.relu(F.linear(x, layer.ff1.weight, layer.ff1.bias))
            x = F.layer_norm(
                x + F.linear(hidden, layer.ff2.weight, layer.ff2.bias),
                layer.norm2.normalized_shape, layer.norm2.weight, layer.norm2.bias,
            )
        return F.linear(x, self.head.weight, self.head.bias).view(-1), state


class KVCache:
    """A static key/value cache of `context` slots per layer, used as a ring once full.

    Slot order does not matter to attention (softmax over a set); what matters is each slot's
    distance to the new token, computed from absolute positions and clipped to max_distance."""

    def __init__(self, config: TransformerConfig, device: torch.device | str, dtype: torch.dtype) -> None:
        shape = (config.num_heads, config.context, config.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_layers)]
        self.context = config.context
        self.max_distance = config.max_distance
        self.device = device
        self.position = 0  # absolute position of the next token
        # slot_position[s] = absolute position held by slot s; distances follow from it.
        self.slot_position = torch.zeros(config.context, dtype=torch.long, device=device)
        self._steps = torch.arange(config.context, dtype=torch.long, device=device)

    @property
    def filled(self) -> int:
        return min(self.position, self.context)

    def advance(self) -> tuple[int, int, torch.Tensor]:
        """Claim the slot for the next token; return (slot, slots in use, clipped distances)."""
        slot = self.position % self.context
        self.slot_position[slot] = self.position
        self.position += 1
        used = self.filled
        distance = (self.position - 1 - self.slot_position[:used]).clamp_(max=self.max_distance)
        return slot, used, distance

    def load(self, cache: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Fill from a full forward's keys/values ([1, H, T, d] per layer), positions 0..T-1."""
        length = cache[0][0].shape[2]
        for layer, (k, v) in enumerate(cache):
            self.keys[layer][:, :length] = k[0]
            self.values[layer][:, :length] = v[0]
        self.slot_position[:length] = self._steps[:length]
        self.position = length
