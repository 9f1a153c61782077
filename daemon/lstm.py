"""The paper's LSTM (Section 4.1): embedding 64, 2 LSTM layers of 512, linears 1024, 512, 153."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from daemon.codec import VOCAB_SIZE


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

    # Incremental inference: the state is a tuple (h, c) of [layers, 1, hidden].
    def init_state(self) -> LSTMState | None:
        return None

    def prefill(self, tokens: torch.Tensor, state: LSTMState | None) -> tuple[torch.Tensor, LSTMState]:
        """tokens [T] -> (logits of the last token [vocab], state)."""
        logits, state = self.forward_with_state(tokens.view(1, -1), state)
        return logits[0, -1], state

    def step(self, token: torch.Tensor, state: LSTMState | None) -> tuple[torch.Tensor, LSTMState]:
        """token LongTensor [1] -> (logits [vocab], state).

        One fused lstm_cell per layer: nn.LSTM on a single step costs several times more."""
        if state is None:
            zeros = self.head.weight.new_zeros(self.config.num_layers, 1, self.config.hidden_size)
            state = (zeros, zeros)
        x = F.embedding(token, self.embed.weight)
        hs, cs = [], []
        for layer in range(self.config.num_layers):
            h, c = torch._VF.lstm_cell(
                x, (state[0][layer], state[1][layer]),
                getattr(self.lstm, f"weight_ih_l{layer}"), getattr(self.lstm, f"weight_hh_l{layer}"),
                getattr(self.lstm, f"bias_ih_l{layer}"), getattr(self.lstm, f"bias_hh_l{layer}"),
            )
            hs.append(h)
            cs.append(c)
            x = h
        x = F.relu(F.layer_norm(F.linear(x, self.fc1.weight, self.fc1.bias), self.norm1.normalized_shape, self.norm1.weight, self.norm1.bias))
        x = F.relu(F.layer_norm(F.linear(x, self.fc2.weight, self.fc2.bias), self.norm2.normalized_shape, self.norm2.weight, self.norm2.bias))
        return F.linear(x, self.head.weight, self.head.bias).view(-1), (torch.stack(hs), torch.stack(cs))
