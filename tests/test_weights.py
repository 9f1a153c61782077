"""Weights folders: safetensors + JSON, every failure named with the file and the mismatch."""

import json

import pytest
import torch

from daemon.model import build_model, config_from_dict
from daemon.weights import CONFIG_FILE, WEIGHTS_FILE, WeightsError, load_weights, save_weights

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
