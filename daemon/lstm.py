"""The paper's LSTM (Section 4.1): embedding 64, 2 LSTM layers of 512, linears 1024, 512, 153."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from daemon.codec import VOCAB_SIZE
from daemon.decoding import DecodeLayout, Linear, Norm, Table


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
    # The decode step's weights (decoding.DecodeLayout): both steps and the C table read these.
    DECODE_LAYOUT = DecodeLayout(
        kind="lstm",
        dims=("embed_dim", "hidden_size", "num_layers", "fc1", "fc2", "vocab_size"),
        model=(Table("embed"), Linear("fc1"), Norm("norm1"), Linear("fc2"), Norm("norm2"), Linear("head")),
        layer=(Linear("cell", lambda model, i: model.cell_matrix(i)),),
    )

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

    # Incremental inference: the state is (h, c) of [layers, 1, hidden], None before the first
    # token; the decode weights are DECODE_LAYOUT (above), prepared by the engine.
    def init_state(self, device: torch.device | None = None, dtype: torch.dtype | None = None) -> LSTMState | None:
        return None

    def cell_matrix(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One LSTM layer as one matrix [W_ih | W_hh] on [x, h] and one summed bias: one
        matrix-vector product per layer and step."""
        lstm = self.lstm
        weight = torch.cat([getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"weight_hh_l{layer}")], 1)
        return weight.detach(), (getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")).detach()

    def prefill(self, tokens: torch.Tensor, state: LSTMState | None) -> tuple[torch.Tensor, LSTMState]:
        """tokens [T] -> (logits of the last token [vocab], state)."""
        logits, carried = self.forward_with_state(tokens.view(1, -1), state)
        return logits[0, -1], carried

    def decode_step(self, weights: Any, token: int, carried: LSTMState | None) -> tuple[torch.Tensor, LSTMState]:
        """(torch_weights of DECODE_LAYOUT, token, (h, c)) -> (logits [vocab], new (h, c)).

        The cell is written out (one addmm on [x, h] with pre-concatenated weights, then the
        gates): fewer torch calls than torch._VF.lstm_cell per layer, and nn.LSTM on one step
        costs several times more (bench/decode.py prints the step's latency)."""
        if carried is None:
            zeros = weights.embed.new_zeros(self.config.num_layers, 1, self.config.hidden_size)
            previous_h, previous_c = zeros, zeros
        else:
            previous_h, previous_c = carried
        x = weights.embed.narrow(0, token, 1)
        hs, cs = [], []
        for layer, h, c in zip(weights.layers, previous_h, previous_c):
            input_gate, forget_gate, cell_gate, output_gate = layer.cell(torch.cat([x, h], 1)).chunk(4, 1)
            c = torch.addcmul(forget_gate.sigmoid_().mul_(c), input_gate.sigmoid_(), cell_gate.tanh_())
            x = output_gate.sigmoid_().mul_(c.tanh())
            hs.append(x)
            cs.append(c)
        x = F.relu(F.layer_norm(weights.fc1(x), self.norm1.normalized_shape, *weights.norm1))
        x = F.relu(F.layer_norm(weights.fc2(x), self.norm2.normalized_shape, *weights.norm2))
        return weights.head(x).view(-1), (torch.stack(hs), torch.stack(cs))
