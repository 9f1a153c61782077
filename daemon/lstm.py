"""The paper's LSTM (Section 4.1): embedding 64, 2 LSTM layers of 512, linears 1024, 512, 153."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from daemon import native
from daemon.codec import VOCAB_SIZE
from daemon.decoding import cached, decode_linear


@dataclass(frozen=True)
class LSTMConfig:
    vocab_size: int = VOCAB_SIZE
    embed_dim: int = 64
    hidden_size: int = 512
    num_layers: int = 2
    fc1: int = 1024
    fc2: int = 512
    dropout: float = 0.5
    kind: str = "lstm"

    def to_dict(self) -> dict:
        return asdict(self)


LSTMState = tuple[torch.Tensor, torch.Tensor]


class LSTMModel(nn.Module):
    def __init__(self, config: LSTMConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim)
        # Dropout between the LSTM layers is nn.LSTM's own; after the last one it is applied below.
        self.lstm = nn.LSTM(
            config.embed_dim, config.hidden_size, config.num_layers, batch_first=True, dropout=config.dropout
        )
        self.fc1 = nn.Linear(config.hidden_size, config.fc1)
        self.norm1 = nn.LayerNorm(config.fc1)
        self.fc2 = nn.Linear(config.fc1, config.fc2)
        self.norm2 = nn.LayerNorm(config.fc2)
        self.head = nn.Linear(config.fc2, config.vocab_size)
        self.drop = nn.Dropout(config.dropout)

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.drop(F.relu(self.norm1(self.fc1(self.drop(hidden)))))
        x = self.drop(F.relu(self.norm2(self.fc2(x))))
        return self.head(x)

    def forward(self, tokens: torch.Tensor, state: LSTMState | None = None) -> torch.Tensor:
        """tokens [B, T] -> logits [B, T, vocab]."""
        return self.forward_with_state(tokens, state)[0]

    def forward_with_state(
        self, tokens: torch.Tensor, state: LSTMState | None = None
    ) -> tuple[torch.Tensor, LSTMState]:
        hidden, state = self.lstm(self.embed(tokens), state)
        return self._head(hidden), state

    # Incremental inference: the state is a tuple (h, c) of [layers, 1, hidden], plus the
    # decode weights (prepared once per set of parameter values).
    def init_state(self, precision: str = "fp32", kernel: str = "torch") -> LSTMDecodeState:
        if kernel == "native":
            step = cached(self, f"native-{precision}", lambda _: native.LSTMStep(self, precision))
            return LSTMDecodeState(None, None, step)
        return LSTMDecodeState(None, cached(self, precision, self._decode_weights))

    def cell_matrix(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One LSTM layer as one matrix [W_ih | W_hh] on [x, h] and one summed bias."""
        lstm = self.lstm
        weight = torch.cat([getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"weight_hh_l{layer}")], 1)
        return weight.detach(), (getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")).detach()

    def _decode_weights(self, precision: str) -> LSTMDecodeWeights:
        # One matrix [W_ih | W_hh] per layer and one summed bias: one addmm on [x, h] per layer.
        cells = [decode_linear(*self.cell_matrix(layer), precision) for layer in range(self.config.num_layers)]
        return LSTMDecodeWeights(
            self.embed.weight.detach(), cells,
            decode_linear(self.fc1.weight, self.fc1.bias, precision), (self.norm1.weight.detach(), self.norm1.bias.detach()),
            decode_linear(self.fc2.weight, self.fc2.bias, precision), (self.norm2.weight.detach(), self.norm2.bias.detach()),
            decode_linear(self.head.weight, self.head.bias, precision),
        )

    def prefill(self, tokens: torch.Tensor, state: LSTMDecodeState) -> tuple[torch.Tensor, LSTMDecodeState]:
        """tokens [T] -> (logits of the last token [vocab], state)."""
        logits, carried = self.forward_with_state(tokens.view(1, -1), state.carried)
        return logits[0, -1], state._replace(carried=carried)

    def step(self, token: torch.Tensor, state: LSTMDecodeState) -> tuple[torch.Tensor, LSTMDecodeState]:
        """token LongTensor [1] -> (logits [vocab], state).

        The cell is written out (one addmm on [x, h] with pre-concatenated weights, then the
        gates): 3.6 ms against 4.8 ms with torch._VF.lstm_cell per layer in an interleaved A/B
        on the loaded dev VM; nn.LSTM on one step costs several times more."""
        if state.native is not None:
            logits, carried = state.native(token, state.carried)
            return logits, state._replace(carried=carried)
        weights = state.weights
        if state.carried is None:
            zeros = weights.embed.new_zeros(self.config.num_layers, 1, self.config.hidden_size)
            previous_h, previous_c = zeros, zeros
        else:
            previous_h, previous_c = state.carried
        x = F.embedding(token, weights.embed)
        hs, cs = [], []
        for cell, h, c in zip(weights.cells, previous_h, previous_c):
            input_gate, forget_gate, cell_gate, output_gate = cell(torch.cat([x, h], 1)).chunk(4, 1)
            c = torch.addcmul(forget_gate.sigmoid_().mul_(c), input_gate.sigmoid_(), cell_gate.tanh_())
            x = output_gate.sigmoid_().mul_(c.tanh())
            hs.append(x)
            cs.append(c)
        x = F.relu(F.layer_norm(weights.fc1(x), self.norm1.normalized_shape, *weights.norm1))
        x = F.relu(F.layer_norm(weights.fc2(x), self.norm2.normalized_shape, *weights.norm2))
        return weights.head(x).view(-1), LSTMDecodeState((torch.stack(hs), torch.stack(cs)), weights)


class LSTMDecodeWeights(NamedTuple):
    embed: torch.Tensor
    cells: list[Callable[[torch.Tensor], torch.Tensor]]
    fc1: Callable[[torch.Tensor], torch.Tensor]
    norm1: tuple[torch.Tensor, torch.Tensor]
    fc2: Callable[[torch.Tensor], torch.Tensor]
    norm2: tuple[torch.Tensor, torch.Tensor]
    head: Callable[[torch.Tensor], torch.Tensor]


class LSTMDecodeState(NamedTuple):
    carried: LSTMState | None  # (h, c) of [layers, 1, hidden]; None before the first token
    weights: LSTMDecodeWeights | None  # for the torch step
    native: native.LSTMStep | None = None  # the native step that replaces it
