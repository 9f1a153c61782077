"""Weights folders: safetensors + JSON, every failure named with the file and the mismatch."""

import json

import pytest
import torch

from daemon.model import build_model, config_from_dict
from daemon.weights import CONFIG_FILE, WEIGHTS_FILE, WeightsError, check_weights_folder, load_weights, save_weights

SMALL = {"kind": "transformer", "num_layers": 1, "d_model": 32, "num_heads": 4, "d_ff": 64}


@pytest.fixture
def folder(tmp_path):
    config = config_from_dict(SMALL)
    torch.manual_seed(0)
    model = build_model(config)
    save_weights(tmp_path / "w", model, config, {"data": "unit test"})
    return tmp_path / "w", model


def test_round_trip_keeps_every_tensor_and_the_provenance(folder):
    path, model = folder
    loaded = load_weights(path)
    assert loaded.config == model.config
    assert loaded.meta["provenance"] == {"data": "unit test"}
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor)
    assert not loaded.model.training


def test_fp16_weights_load_as_fp32(tmp_path):
    config = config_from_dict(SMALL)
    model = build_model(config)
    save_weights(tmp_path, model, config, dtype=torch.float16)
    loaded = load_weights(tmp_path)
    assert loaded.model.head.weight.dtype == torch.float32
    assert torch.allclose(loaded.model.head.weight, model.head.weight, atol=1e-3)


def edit_config(path, change):
    document = json.loads((path / CONFIG_FILE).read_text())
    change(document)
    (path / CONFIG_FILE).write_text(json.dumps(document))


def test_a_missing_folder_or_file_is_named(tmp_path, folder):
    with pytest.raises(WeightsError, match="nowhere: not a weights folder"):
        load_weights(tmp_path / "nowhere")
    path, _ = folder
    (path / WEIGHTS_FILE).unlink()
    with pytest.raises(WeightsError, match=f"{WEIGHTS_FILE}: missing"):
        load_weights(path)


def test_an_unknown_kind_is_named(folder):
    path, _ = folder
    edit_config(path, lambda d: d["model"].update(kind="gru"))
    with pytest.raises(WeightsError, match=r"config.json: unknown model kind 'gru'"):
        load_weights(path)


def test_wrong_shapes_are_named_with_the_tensor(folder):
    path, _ = folder
    edit_config(path, lambda d: d["model"].update(d_ff=128))
    with pytest.raises(WeightsError, match=r"tensor layers.0.ff1.bias has shape \(64,\), the config needs \(128,\)"):
        load_weights(path)


def test_missing_keys_are_named(folder):
    path, _ = folder
    edit_config(path, lambda d: d["model"].update(num_layers=2))
    with pytest.raises(WeightsError, match=r"missing \['layers.1"):
        load_weights(path)


def test_truncated_and_foreign_files_are_rejected(folder):
    path, _ = folder
    data = (path / WEIGHTS_FILE).read_bytes()
    (path / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_weights(path)
    (path / WEIGHTS_FILE).write_bytes(b"PK\x03\x04 this is a zip (a pickle checkpoint), not safetensors")
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_weights(path)


def test_bad_json_and_wrong_codec_are_named(folder):
    path, _ = folder
    edit_config(path, lambda d: d.update(codec="remi-v9"))
    with pytest.raises(WeightsError, match="codec 'remi-v9'"):
        load_weights(path)
    (path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(WeightsError, match="config.json: not valid JSON"):
        load_weights(path)


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"d_model": "32"}, r"model.d_model = '32', expected a whole number"),
        ({"num_heads": 0}, r"model.num_heads = 0, expected 1..65536"),
        ({"num_heads": 3}, r"d_model = 32 is not a multiple of num_heads = 3"),
        ({"num_layers": True}, r"model.num_layers = True, expected a whole number"),
        ({"vocab_size": 10}, r"model.vocab_size = 10, the codec has 153 tokens"),
        ({"dropout": 1.0}, r"model.dropout = 1.0, expected 0 <= value < 1"),
        ({"d_ff": 10**400}, r"model.d_ff = 1000.*, expected 1..65536"),
        ({"d_model": 4096, "d_ff": 8192}, r"tensor embed.weight has shape \(153, 32\), the config needs \(153, 4096\)"),
    ],
)
def test_a_bad_config_is_refused_in_one_line_before_anything_is_built(folder, change, reason):
    path, _ = folder
    edit_config(path, lambda d: d["model"].update(change))
    with pytest.raises(WeightsError, match=reason) as refused:
        check_weights_folder(path)
    assert "\n" not in str(refused.value)
    with pytest.raises(WeightsError, match=reason):
        load_weights(path)


def test_a_config_that_is_a_folder_and_tensors_that_are_integers_are_named(folder):
    path, _ = folder
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path / WEIGHTS_FILE))
    save_file({name: t.to(torch.int32) for name, t in tensors.items()}, str(path / WEIGHTS_FILE))
    with pytest.raises(WeightsError, match="has dtype I32, expected floating point"):
        check_weights_folder(path)
    (path / CONFIG_FILE).unlink()
    (path / CONFIG_FILE).mkdir()
    with pytest.raises(WeightsError, match="config.json: a folder, not a file"):
        check_weights_folder(path)
    with pytest.raises(WeightsError, match="cannot be read"):
        check_weights_folder(path / ("x" * 300))
