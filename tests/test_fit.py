"""`antiphon-train fit`: smoke run of both full-size models into the daemon, exact resume, signals, bad data."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from tiny_midi import TINY_LSTM, TINY_TRANSFORMER, write_broken, write_split

from daemon.codec import BAR
from daemon.engine import Engine
from daemon.grammar import INITIAL, advance, next_mask
from daemon.model import parameter_count
from daemon.paths import shipped_weights
from daemon.sampling import make_generator, sample
from daemon.weights import load_weights
from training.checkpoint import load_checkpoint
from training.cli import main
from training.evaluate import evaluate
from training.fit import FitError, Limits, Recipe, fit
from training.parent import Parent

TINY = {"lstm": TINY_LSTM, "transformer": TINY_TRANSFORMER}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_split(tmp_path_factory.mktemp("data"), train=6, test=2)


def tiny_recipe(kind: str, **changes) -> Recipe:
    # 6 files of ~160 windows: an epoch of 5% is 48 windows, 6 steps of 8
    values = {"model_config": TINY[kind], "epoch_fraction": 0.05, "eval_windows": 64, "augment_transpose": True}
    return Recipe.paper(kind, **{**values, **changes})


def quiet_fit(data: Path, out: Path, recipe: Recipe | None, limits: Limits, resume: bool = False):
    return fit(data, out, recipe, limits, resume=resume, device="cpu", progress=False, report=lambda line: None)


def losses(history: list[dict]) -> list[tuple[int, float, float, float]]:
    return [(r["epoch"], r["train_loss"], r["test_loss"], r["lr"]) for r in history]


def assert_same_run(one, other, out_one: Path, out_other: Path) -> None:
    assert len(one.history) == len(other.history)
    for a, b in zip(losses(one.history), losses(other.history)):
        assert a[0] == b[0]
        assert a[1:] == pytest.approx(b[1:], abs=1e-6)
    assert (one.step, one.best_epoch) == (other.step, other.best_epoch)
    first, second = load_checkpoint(out_one / "checkpoint"), load_checkpoint(out_other / "checkpoint")
    for name, tensor in first.model.items():
        assert torch.allclose(tensor, second.model[name], atol=1e-6), name
    a, b = load_weights(out_one).model.state_dict(), load_weights(out_other).model.state_dict()
    assert all(torch.allclose(a[name], b[name], atol=1e-6) for name in a)


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_resume_at_epoch_and_mid_epoch_equals_one_go(data, tmp_path, kind):
    recipe, epochs = tiny_recipe(kind), 4
    one_go = quiet_fit(data, tmp_path / "one", recipe, Limits(max_epochs=epochs, patience=10))
    assert one_go.stop == "max_epochs" and len(one_go.history) == epochs and one_go.step == 6 * epochs

    half = quiet_fit(data, tmp_path / "halves", recipe, Limits(max_epochs=epochs // 2, patience=10))
    assert half.stop == "max_epochs" and half.epoch == epochs // 2
    halves = quiet_fit(data, tmp_path / "halves", None, Limits(max_epochs=epochs, patience=10), resume=True)
    assert_same_run(one_go, halves, tmp_path / "one", tmp_path / "halves")

    # stopped in the middle of epoch 2, then again in the middle of epoch 3
    first = quiet_fit(data, tmp_path / "mid", recipe, Limits(max_epochs=epochs, patience=10, max_steps=9))
    assert first.stop == "max_steps" and first.step == 9 and first.epoch == 1
    state = load_checkpoint(tmp_path / "mid" / "checkpoint").state
    assert (state["epoch"], state["batch_in_epoch"]) == (1, 3)
    # a budget that ends with an epoch's last step still evaluates and logs that epoch
    at_boundary = quiet_fit(data, tmp_path / "mid", None, Limits(max_epochs=epochs, patience=10, max_steps=12), resume=True)
    assert at_boundary.stop == "max_steps" and at_boundary.epoch == 2 and len(at_boundary.history) == 2
    quiet_fit(data, tmp_path / "mid", None, Limits(max_epochs=epochs, patience=10, max_steps=16), resume=True)
    resumed = quiet_fit(data, tmp_path / "mid", None, Limits(max_epochs=epochs, patience=10), resume=True)
    assert_same_run(one_go, resumed, tmp_path / "one", tmp_path / "mid")
    log = [json.loads(line) for line in (tmp_path / "mid" / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]


def test_sigterm_mid_epoch_checkpoints_and_the_run_resumes_exactly(data, tmp_path):
    from daemon.lstm import LSTMModel

    recipe = tiny_recipe("lstm")
    one_go = quiet_fit(data, tmp_path / "one", recipe, Limits(max_epochs=3, patience=10))
    forwards = 0

    def terminate_at_eighth_training_step(module, args, output):
        nonlocal forwards
        if isinstance(module, LSTMModel) and module.training:
            forwards += 1
            if forwards == 8:
                os.kill(os.getpid(), signal.SIGTERM)

    handle = torch.nn.modules.module.register_module_forward_hook(terminate_at_eighth_training_step)
    try:
        stopped = quiet_fit(data, tmp_path / "cut", recipe, Limits(max_epochs=3, patience=10))
    finally:
        handle.remove()
    assert stopped.stop == "signal" and stopped.step == 8
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handler restored
    resumed = quiet_fit(data, tmp_path / "cut", None, Limits(max_epochs=3, patience=10), resume=True)
    assert_same_run(one_go, resumed, tmp_path / "one", tmp_path / "cut")


def test_a_crash_mid_epoch_loses_nothing_with_checkpoints_every_step(data, tmp_path):
    from daemon.transformer import TransformerModel

    recipe = tiny_recipe("transformer")
    one_go = quiet_fit(data, tmp_path / "one", recipe, Limits(max_epochs=2, patience=10))
    forwards = 0

    def crash_at_tenth_training_step(module, args, output):
        nonlocal forwards
        if isinstance(module, TransformerModel) and module.training:
            forwards += 1
            if forwards == 10:
                raise RuntimeError("simulated crash")

    handle = torch.nn.modules.module.register_module_forward_hook(crash_at_tenth_training_step)
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            quiet_fit(data, tmp_path / "crash", recipe, Limits(max_epochs=2, patience=10, checkpoint_minutes=0))
    finally:
        handle.remove()
    state = load_checkpoint(tmp_path / "crash" / "checkpoint").state
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (9, 1, 3)
    resumed = quiet_fit(data, tmp_path / "crash", None, Limits(max_epochs=2, patience=10), resume=True)
    assert_same_run(one_go, resumed, tmp_path / "one", tmp_path / "crash")


def test_learning_rate_schedules_are_the_papers():
    lstm = Recipe.paper("lstm")
    assert (lstm.batch_size, lstm.epoch_fraction, lstm.augment_transpose) == (8, 0.02, False)
    assert [lstm.lr_at(e) for e in range(3)] == pytest.approx([5e-4, 4e-4, 3.2e-4])
    assert lstm.lr_at(10) == pytest.approx(5e-4 * 0.8**10) and lstm.lr_at(11) == 5e-5 and lstm.lr_at(50) == 5e-5
    transformer = Recipe.paper("transformer")
    assert {transformer.lr_at(e) for e in range(20)} == {1e-3}


def test_patience_stops_and_keeps_the_best_epoch(data, tmp_path):
    # an lr of 1e-30 leaves the weights as they are, so the test loss never improves after epoch 1
    result = quiet_fit(data, tmp_path / "run", tiny_recipe("lstm", lr=1e-30, lr_floor=0.0), Limits(max_epochs=10, patience=2))
    assert result.stop == "patience" and result.epoch == 3 and result.best_epoch == 1
    meta = load_weights(tmp_path / "run").meta["provenance"]
    assert meta["best_epoch"] == 1 and meta["epochs"] == 3 and meta["stop"] == "patience"
    assert meta["best_epoch_steps"] == result.history[0]["steps"] < meta["steps"]


def test_smoke_both_full_size_models_then_evaluate_then_the_daemon_plays(data, tmp_path):
    for kind, parameters in (("lstm", 4_426_457), ("transformer", 4_326_041)):
        out = tmp_path / kind
        code = main([
            "fit", str(data), "--model", kind, "--out", str(out), "--max-epochs", "1", "--epoch-fraction", "0.017",
            "--eval-windows", "8", "--seed", "3", "--threads", "1", "--no-progress", "--device", "cpu",
        ])
        assert code == 0
        expected = {"model.safetensors", "config.json", "train_log.jsonl", "loss.png", "checkpoint"}
        assert expected <= {p.name for p in out.iterdir()}
        assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        record = json.loads((out / "train_log.jsonl").read_text())
        assert {"epoch", "train_loss", "test_loss", "lr", "tokens_per_s", "wall_time"} <= set(record)
        assert record["epoch"] == 1 and record["steps"] == 2 and np.isfinite(record["test_loss"])
        loaded = load_weights(out)
        assert parameter_count(loaded.model) == parameters
        provenance = loaded.meta["provenance"]
        assert provenance["data_folder"] == str(data.resolve()) and provenance["recipe"]["seed"] == 3
        assert provenance["best_epoch"] == 1 and provenance["test_nll"] == pytest.approx(record["test_loss"])
        assert {"epochs", "steps", "device", "wall_seconds"} <= set(provenance)

        result = evaluate(out, data, windows=8, seed=0, report=None)
        assert result.windows == 8 and np.isfinite(result.nll) and result.nll_grammar <= result.nll

        engine = Engine.load(out, device="cpu")
        engine.reset((BAR,))
        state, generator, tokens = advance(INITIAL, BAR), make_generator(0), []
        for _ in range(12):
            token = sample(engine.logits, next_mask(state), 1.0, 1.0, generator)
            state = advance(state, token)
            engine.feed([token])
            tokens.append(token)
        assert len(tokens) == 12 and engine.position == 13

        shipped = tmp_path / f"{kind}-shipped"
        assert main(["export", str(out), str(shipped), "--half"]) == 0
        assert {p.name for p in shipped.iterdir()} == {"model.safetensors", "config.json", "train_log.jsonl", "loss.png"}
        half = load_weights(shipped)
        assert half.meta["provenance"] == {**provenance, "stored_as": "float16"}
        with safe_open(str(shipped / "model.safetensors"), "pt") as tensors:
            assert {tensors.get_tensor(name).dtype for name in tensors.keys()} == {torch.float16}
        for name, tensor in half.model.state_dict().items():
            assert torch.equal(tensor, loaded.model.state_dict()[name].half().float()), name


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_bad_data_and_misuse_are_clear_errors_not_tracebacks(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, text = run_cli(["fit", str(tmp_path / "empty"), "--model", "lstm", "--out", str(tmp_path / "o1")], capsys)
    assert code == 2 and "no MIDI files" in text and "Traceback" not in text

    write_broken(tmp_path / "bad" / "train" / "a.mid")
    write_broken(tmp_path / "bad" / "test" / "b.mid")
    code, text = run_cli(["fit", str(tmp_path / "bad"), "--model", "lstm", "--out", str(tmp_path / "o2")], capsys)
    assert code == 2 and "all 1 MIDI files failed to load" in text and "a.mid" in text

    code, text = run_cli(["fit", str(tmp_path / "empty"), "--out", str(tmp_path / "o3"), "--resume"], capsys)
    assert code == 2 and "no checkpoint to resume from" in text

    code, text = run_cli(["fit", str(tmp_path / "empty"), "--out", str(tmp_path / "o3")], capsys)
    assert code == 2 and "--model" in text


def test_a_broken_file_is_skipped_and_counted_and_the_run_goes_on(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("training.fit.STATUS_EVERY_S", 0)  # a status line every step without progress bars
    write_split(tmp_path / "data", train=2, test=1)
    write_broken(tmp_path / "data" / "train" / "zz broken.mid")
    args = ["fit", str(tmp_path / "data"), "--model", "lstm", "--out", str(tmp_path / "out"), "--max-epochs", "1",
            "--model-config", json.dumps(TINY_LSTM), "--epoch-fraction", "0.02", "--eval-windows", "16", "--no-progress"]
    code, text = run_cli(args, capsys)
    assert code == 0
    assert "skipped" in text and "zz broken.mid" in text
    provenance = load_weights(tmp_path / "out").meta["provenance"]
    assert provenance["data"]["train"]["files"] == 2 and len(provenance["skipped_files"]) == 1
    assert "(2 files, 1 skipped)" in text and "epoch 1: step 1/1, running train loss" in text

    # the same --out again without --resume is refused; a resume that changes the recipe is refused
    code, text = run_cli(args, capsys)
    assert code == 2 and "already holds a run" in text
    code, text = run_cli(["fit", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--resume", "--lr", "0.1"], capsys)
    assert code == 2 and "differs from the checkpoint" in text
    # the limits may change on resume
    code, text = run_cli(["fit", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--resume", "--max-epochs", "2",
                          "--no-progress"], capsys)
    assert code == 0 and "epoch 2:" in text


def test_a_recipe_change_on_resume_takes_effect_from_there_and_is_recorded(data, tmp_path, capsys):
    run, branch = tmp_path / "run", tmp_path / "branch"
    quiet_fit(data, run, tiny_recipe("lstm", augment_transpose=False), Limits(max_epochs=1))
    shutil.copytree(run, branch)
    code, text = run_cli(["fit", str(data), "--out", str(branch), "--resume", "--change-recipe", "--lr", "0.005",
                          "--augment-transpose", "--transpose-max", "3", "--max-epochs", "2", "--no-progress"], capsys)
    assert code == 0
    assert "recipe changed from step 6: lr 0.0005 -> 0.005, augment_transpose False -> True, transpose_max 0 -> 3" in text
    state = load_checkpoint(branch / "checkpoint").state
    assert [r["lr"] for r in state["history"]] == pytest.approx([5e-4, 0.005 * 0.8])
    assert state["recipe"]["lr"] == 0.005 and state["recipe"]["transpose_max"] == 3
    changes = [{"step": 6, "epoch": 1, "from": {"lr": 5e-4, "augment_transpose": False, "transpose_max": 0},
                "to": {"lr": 0.005, "augment_transpose": True, "transpose_max": 3}}]
    assert state["recipe_changes"] == changes
    assert load_weights(branch).meta["provenance"]["recipe_changes"] == changes

    # the branch resumes again with its changed recipe, without repeating the flags
    code, text = run_cli(["fit", str(data), "--out", str(branch), "--resume", "--max-epochs", "3", "--no-progress"], capsys)
    assert code == 0 and "recipe changed" not in text
    state = load_checkpoint(branch / "checkpoint").state
    assert state["history"][-1]["lr"] == pytest.approx(0.005 * 0.8**2) and state["recipe_changes"] == changes
    # the copy it branched from goes on with the paper's schedule
    baseline = quiet_fit(data, run, None, Limits(max_epochs=2), resume=True)
    assert [r["lr"] for r in baseline.history] == pytest.approx([5e-4, 4e-4])

    # what a run trains on and is judged by cannot change; a change needs a run to resume
    code, text = run_cli(["fit", str(data), "--out", str(branch), "--resume", "--change-recipe", "--eval-windows", "8"], capsys)
    assert code == 2 and "eval_windows 8 differs from the checkpoint" in text
    with pytest.raises(FitError, match="batch_size cannot change on resume"):
        fit(data, branch, None, Limits(max_epochs=4), resume=True, device="cpu", progress=False,
            report=lambda line: None, change={"batch_size": 4})
    code, text = run_cli(["fit", str(data), "--model", "lstm", "--out", str(tmp_path / "new"), "--change-recipe"], capsys)
    assert code == 2 and "add --resume" in text


def test_checkpoint_is_json_and_safetensors_and_survives_a_torn_write(data, tmp_path):
    quiet_fit(data, tmp_path / "run", tiny_recipe("lstm"), Limits(max_epochs=1))
    folder = tmp_path / "run" / "checkpoint"
    states = [p for p in folder.iterdir() if p.is_dir()]
    assert len(states) == 1
    assert {p.suffix for p in states[0].iterdir()} == {".safetensors", ".json"}
    good = load_checkpoint(folder)
    # a save killed midway leaves a temporary folder and a half-written state: latest.json still wins
    (folder / ".tmp-step-00000099-epoch-0009-1").mkdir()
    (folder / ".tmp-step-00000099-epoch-0009-1" / "model.safetensors").write_bytes(b"partial")
    (folder / "step-00000099-epoch-0009").mkdir()
    again = load_checkpoint(folder)
    assert again.state["step"] == good.state["step"] == 6
    assert set(again.model) == set(good.model)
    # and the run resumes and cleans them up
    quiet_fit(data, tmp_path / "run", None, Limits(max_epochs=2), resume=True)
    assert [p.name for p in folder.iterdir() if p.is_dir()] == ["step-00000012-epoch-0002"]


def test_fine_tuning_the_shipped_lstm_changes_its_weights_and_names_its_parent(data, tmp_path, capsys):
    out = tmp_path / "mine"
    code, text = run_cli(["fit", str(data), "--init", "lstm", "--out", str(out), "--max-steps", "2", "--epoch-windows", "16",
                          "--eval-windows", "8", "--no-progress", "--device", "cpu"], capsys)
    assert code == 0, text
    parent_folder = shipped_weights("lstm").resolve()
    assert f"from {parent_folder}" in text
    tuned, parent = load_weights(out).model.state_dict(), load_weights(parent_folder).model.state_dict()
    assert set(tuned) == set(parent)
    assert any(not torch.equal(tuned[name], parent[name]) for name in parent)
    # two Adamax steps at 5e-4 move each weight by at most 1e-3: fine-tuned, not trained from scratch
    assert all((tuned[name] - parent[name]).abs().max() <= 1.01e-3 for name in parent)
    provenance = load_weights(out).meta["provenance"]
    sha256 = hashlib.sha256((parent_folder / "model.safetensors").read_bytes()).hexdigest()
    assert provenance["parent"] == {"path": str(parent_folder), "sha256": sha256, "kind": "lstm"}
    assert provenance["data_folder"] == str(data.resolve()) and provenance["steps"] == 2
    recipe = provenance["recipe"]
    assert (recipe["lr"], recipe["lr_decay"], recipe["augment_transpose"], recipe["transpose_max"]) == (5e-4, 1.0, True, 6)
    assert recipe["epoch_windows"] == 16 and recipe["eval_windows"] == 8  # the flags given replace the defaults


def test_a_model_that_conflicts_with_the_init_weights_is_refused(data, tmp_path, capsys):
    code, text = run_cli(["fit", str(data), "--init", "lstm", "--model", "transformer", "--out", str(tmp_path / "a")], capsys)
    assert code == 2 and "--model transformer conflicts with --init" in text and "lstm weights" in text
    code, text = run_cli(["fit", str(data), "--init", "lstm", "--model-config", '{"hidden_size": 64}',
                          "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and "--model-config hidden_size=64 conflicts with --init" in text
    code, text = run_cli(["fit", str(data), "--init", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c")], capsys)
    assert code == 2 and "--init:" in text and "nowhere" in text
    assert not any((tmp_path / name).exists() for name in "abc")
    # the same model and config as the weights are not a conflict
    config = load_weights(shipped_weights("lstm")).config
    Parent.find("lstm").check_compatible("lstm", {"hidden_size": config.hidden_size})


@pytest.fixture(scope="module")
def tiny_parent(tmp_path_factory) -> Path:
    from daemon.model import build_model, config_from_dict, default_config
    from daemon.weights import save_weights

    config = config_from_dict({**default_config("lstm").to_dict(), **TINY_LSTM})
    torch.manual_seed(7)
    return save_weights(tmp_path_factory.mktemp("parent") / "weights", build_model(config), config, {"trained_by": "test"})


def test_resume_of_a_fine_tuning_run_is_exact_and_keeps_its_parent(data, tmp_path, tiny_parent):
    recipe = Recipe.fine_tune(load_weights(tiny_parent).config, epoch_windows=48, eval_windows=64)

    def tune(out: Path, limits: Limits, resume: bool = False, init=tiny_parent):
        return fit(data, out, None if resume else recipe, limits, resume=resume, device="cpu", progress=False,
                   report=lambda line: None, init=init)

    one_go = tune(tmp_path / "one", Limits(max_epochs=3, patience=10))
    tune(tmp_path / "halves", Limits(max_epochs=3, patience=10, max_steps=8))
    resumed = tune(tmp_path / "halves", Limits(max_epochs=3, patience=10), resume=True, init=None)
    assert_same_run(one_go, resumed, tmp_path / "one", tmp_path / "halves")
    provenance = load_weights(tmp_path / "halves").meta["provenance"]
    assert provenance["parent"]["path"] == str(tiny_parent.resolve()) and provenance["steps"] == 18
    # the first step starts from the parent: a run from the same recipe without it differs
    other = quiet_fit(data, tmp_path / "scratch", replace(recipe), Limits(max_epochs=1))
    assert other.history[0]["train_loss"] != pytest.approx(one_go.history[0]["train_loss"], abs=1e-6)
    with pytest.raises(FitError, match="differs from the weights this run started from"):
        tune(tmp_path / "halves", Limits(max_epochs=4), resume=True, init="lstm")
