"""Sampling: never outside the mask, greedy at temperature 0, nucleus filtering, seeded."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from daemon.sampling import make_generator, masked_log_probs, sample, top_p_filter

logits_rows = arrays(np.float32, 153, elements=st.floats(-30, 30, width=32))
masks = arrays(bool, 153).filter(lambda m: m.any())


@settings(max_examples=300, deadline=None)
@given(logits_rows, masks, st.floats(0.0, 3.0), st.floats(0.05, 1.0), st.integers(0, 2**32 - 1))
def test_a_sampled_token_is_never_outside_the_mask(logits, mask, temperature, top_p, seed):
    token = sample(logits, mask, temperature, top_p, make_generator(seed))
    assert mask[token]


def test_extreme_logits_outside_the_mask_never_win():
    logits = np.full(153, -1e9, dtype=np.float32)
    logits[5] = 1e9
    mask = np.zeros(153, bool)
    mask[[7, 9]] = True
    rng = make_generator(0)
    assert {sample(logits, mask, 1.0, 0.9, rng) for _ in range(50)} <= {7, 9}


def test_a_vanishing_temperature_stays_within_the_mask():
    # Found by hypothesis: logits / 2e-309 overflowed to inf and the mask was lost in nan.
    mask = np.zeros(153, bool)
    mask[1] = True
    assert sample(np.ones(153, np.float32), mask, 2.225073858507203e-309, 1.0, make_generator(0)) == 1


def test_temperature_zero_is_greedy_within_the_mask():
    logits = np.arange(153, dtype=np.float32)
    mask = np.zeros(153, bool)
    mask[[3, 40, 41]] = True
    assert sample(logits, mask, 0.0, 1.0, make_generator(0)) == 41


def test_top_p_keeps_the_smallest_head_reaching_the_mass():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    assert np.allclose(top_p_filter(probs, 0.7), [0.5, 0.3, 0, 0])
    assert np.allclose(top_p_filter(probs, 0.1), [0.5, 0, 0, 0])
    assert np.allclose(top_p_filter(probs, 1.0), probs)


def test_sampling_follows_the_distribution_and_the_seed():
    logits = np.log(np.array([0.7, 0.2, 0.1] + [1e-12] * 150, dtype=np.float64)).astype(np.float32)
    mask = np.ones(153, bool)
    rng = make_generator(42)
    many = np.bincount([sample(logits, mask, 1.0, 1.0, rng) for _ in range(4000)], minlength=3)[:3] / 4000
    assert np.allclose(many, [0.7, 0.2, 0.1], atol=0.03)
    first, second = make_generator(7), make_generator(7)
    assert [sample(logits, mask, 1.0, 1.0, first) for _ in range(50)] == [
        sample(logits, mask, 1.0, 1.0, second) for _ in range(50)
    ]


def test_masked_log_probs_normalise_over_the_mask_and_reject_an_empty_mask():
    mask = np.zeros(153, bool)
    mask[:10] = True
    lp = masked_log_probs(np.zeros(153, np.float32), mask)
    assert np.isclose(np.exp(lp[:10]).sum(), 1.0) and np.isneginf(lp[10:]).all()
    with pytest.raises(ValueError, match="no token"):
        masked_log_probs(np.zeros(153, np.float32), np.zeros(153, bool))
