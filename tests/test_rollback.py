"""Engine rollback: feed A, roll back, feed B equals feed B fresh, for both models and kernels."""

import numpy as np
import pytest
import torch

from daemon.decoding import ROLLBACK_TOKENS
from daemon.engine import Engine
from daemon.model import build_model, config_from_dict
from tests.test_models import CASES

KERNELS = [kernel for device, kernel in CASES if device == "cpu"]
# Small models, so the Transformer's ring (16 slots) wraps several times within a rollback.
CONFIGS = {
    "transformer": {"kind": "transformer", "num_layers": 2, "context": 16, "max_distance": 11},
    "lstm": {"kind": "lstm", "hidden_size": 64, "fc1": 64, "fc2": 64},
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def model(request):
    torch.manual_seed(21)
    return build_model(config_from_dict(CONFIGS[request.param])).eval()


def tokens(count, seed):
    return torch.randint(0, 153, (count,), generator=torch.Generator().manual_seed(seed)).tolist()


def fed(model, kernel, *parts):
    engine = Engine(model, "cpu", precision="fp32", kernel=kernel)
    engine.reset(parts[0])
    for part in parts[1:]:
        engine.feed(part)
    return engine


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("prefix, taken_back, fed_again", [
    (10, 3, 5),    # before the ring wraps
    (14, 4, 9),    # A wraps the ring, B wraps it again
    (40, 1, 1),    # long after the wrap, one token
    (40, ROLLBACK_TOKENS, 20),  # the deepest rollback, longer than the ring
])
def test_feed_a_roll_back_feed_b_equals_feed_b_fresh(model, kernel, prefix, taken_back, fed_again):
    start, a, b = tokens(prefix, 1), tokens(taken_back, 2), tokens(fed_again, 3)
    engine = fed(model, kernel, start[:5], start[5:])
    before = engine.logits.copy()
    engine.feed(a)
    assert np.abs(engine.rollback(prefix) - before).max() <= 1e-5  # the logits of position `prefix`
    assert engine.position == prefix and engine.context == start[-engine.window:]
    engine.feed(b)
    fresh = fed(model, kernel, start[:5], start[5:], b)
    assert np.abs(engine.logits - fresh.logits).max() <= 1e-5
    assert engine.context == fresh.context
    # Continuing after the rollback stays equal too (the rewound cache's slots and positions).
    more = tokens(30, 4)
    assert np.abs(engine.feed(more) - fresh.feed(more)).max() <= 1e-5


@pytest.mark.parametrize("kernel", KERNELS)
def test_repeated_rollbacks_within_one_lookahead(model, kernel):
    """The accompanist's pattern: decide ahead, take some back, decide again, many times."""
    engine, truth = fed(model, kernel, [0]), [0]
    rng = np.random.default_rng(6)
    for _ in range(30):
        decided = rng.integers(0, 153, int(rng.integers(1, 5))).tolist()
        engine.feed(decided)
        truth += decided
        back = int(rng.integers(0, min(6, len(truth) - 1) + 1))
        engine.rollback(len(truth) - back)
        del truth[len(truth) - back:]
    fresh = fed(model, kernel, [0], truth[1:])
    assert engine.position == len(truth)
    assert np.abs(engine.logits - fresh.logits).max() <= 1e-5


def test_rollback_beyond_what_is_kept_or_before_a_reset_is_refused(model):
    engine = fed(model, "torch", tokens(4, 7))
    engine.feed(tokens(ROLLBACK_TOKENS + 10, 8))
    with pytest.raises(ValueError, match="cannot roll back to position 13"):
        engine.rollback(13)
    assert engine.rollback_limit() == 14 and engine.position == ROLLBACK_TOKENS + 14
    engine.reset(tokens(4, 9))
    engine.feed(tokens(2, 10))
    with pytest.raises(ValueError, match="since position 4"):
        engine.rollback(3)
    with pytest.raises(ValueError):
        engine.rollback(7)  # ahead of the engine
    engine.rollback(4)
    assert engine.position == 4

