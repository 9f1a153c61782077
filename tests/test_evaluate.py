"""`antiphon-train evaluate`: NLL per token, grammar-masked NLL, seeded samples and their standard error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_midi import TINY_LSTM, write_split

from daemon.grammar import masks_along
from daemon.weights import load_weights
from training.cli import main
from training.dataset import CONTEXT, load_windows
from training.evaluate import GrammarMasks, evaluate, sample_indices, token_nll
from training.fit import Limits, Recipe, fit

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, object]:
    """Tiny LSTM weights after one epoch evaluated on every test window."""
    root = tmp_path_factory.mktemp("evaluate")
    data = write_split(root / "data", train=4, test=2, seed=7)
    recipe = Recipe.paper("lstm", model_config=TINY_LSTM, epoch_fraction=0.05, eval_windows=0)
    result = fit(data, root / "weights", recipe, Limits(max_epochs=1), device="cpu", progress=False, report=lambda line: None)
    return data, root / "weights", result


def test_masks_of_a_window_starting_mid_stream_come_from_the_whole_stream(trained):
    data, _, _ = trained
    dataset = load_windows(data, report=None).windows
    masks = GrammarMasks(dataset)
    stream = dataset.window_streams(np.array([len(dataset) - 1]))[0]
    start, length = dataset.stream_starts[stream], dataset.stream_lengths[stream]
    whole = masks_along(dataset.tokens[start : start + length].tolist())
    for index in (len(dataset) - 1, len(dataset) - 37):
        offset = int(dataset.window_offsets(np.array([index]))[0])
        assert offset > 0
        assert np.array_equal(masks.batch(np.array([index]))[0].numpy(), whole[offset : offset + CONTEXT])
        # every target of a clean file is one its mask allows
        targets = dataset.windows(np.array([index]))[0, 1:]
        assert whole[np.arange(offset, offset + CONTEXT), targets].all()


def test_grammar_nll_is_the_nll_renormalised_over_allowed_tokens(trained):
    data, weights, _ = trained
    model = load_weights(weights).model
    dataset = load_windows(data, report=None).windows
    indices = np.array([0, 5, len(dataset) - 1])
    batch = dataset.batch(indices)
    mask = GrammarMasks(dataset).batch(indices)
    with torch.no_grad():
        plain, masked = token_nll(model, batch), token_nll(model, batch, mask)
        log_probs = torch.log_softmax(model(batch[:, :-1]).float(), dim=-1)
    allowed_mass = torch.logsumexp(log_probs.masked_fill(~mask, float("-inf")), dim=-1)
    assert torch.allclose(masked, plain + allowed_mass, atol=1e-5)
    assert (masked <= plain + 1e-6).all() and (masked < plain - 1e-4).any()


def test_all_windows_match_the_test_loss_fit_reported(trained):
    data, weights, result = trained
    evaluation = evaluate(weights, data, report=None)
    assert evaluation.windows == evaluation.windows_total == len(load_windows(data, report=None).windows)
    assert evaluation.nll == pytest.approx(result.history[0]["test_loss"], abs=1e-5)
    assert evaluation.stderr == 0.0 and evaluation.masked_targets == 0
    assert evaluation.nll_grammar < evaluation.nll


def test_a_seeded_sample_is_repeatable_and_has_a_standard_error(trained):
    data, weights, _ = trained
    first = evaluate(weights, data, windows=40, seed=3, report=None)
    again = evaluate(weights, data, windows=40, seed=3, report=None)
    other = evaluate(weights, data, windows=40, seed=4, report=None)
    full = evaluate(weights, data, report=None)
    assert first.windows == 40 and first.nll == again.nll and first.nll != other.nll
    assert 0 < first.stderr < 1
    assert abs(first.nll - full.nll) < 5 * first.stderr + 1e-3
    assert sample_indices(100, 10, 1).tolist() == sorted(set(sample_indices(100, 10, 1).tolist()))
    assert sample_indices(100, 500, 1).tolist() == list(range(100))


def test_cli_json_has_the_documented_keys(trained, capsys):
    data, weights, _ = trained
    assert main(["evaluate", str(weights), str(data), "--windows", "16", "--seed", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"nll", "nll_grammar", "stderr", "windows"} <= set(result)
    assert result["windows"] == 16 and result["nll_grammar"] < result["nll"]


def test_cli_text_and_bad_folders(trained, tmp_path, capsys):
    data, weights, _ = trained
    assert main(["evaluate", str(weights), str(data), "--windows", "8"]) == 0
    assert "NLL under the grammar" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "nothing"), str(data)]) == 2
    err = capsys.readouterr().err
    assert "not a weights folder" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", str(weights), str(tmp_path / "empty")]) == 2
    assert "no MIDI files" in capsys.readouterr().err
