"""The paper's two models: exact sizes, and incremental decoding equal to the full forward."""

import platform

import numpy as np
import pytest
import torch

from daemon import native
from daemon.decoding import automatic_precision
from daemon.engine import CONTEXT, Engine
from daemon.model import build_model, config_from_dict, default_config, parameter_count

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# (device, kernel) pairs every engine test runs on: the native kernel is a CPU one.
NATIVE = platform.machine().lower() in ("x86_64", "amd64") and not native.missing_cpu_features()
CASES = [("cpu", "torch")] + ([("cpu", "native")] if NATIVE else []) + [("cuda", "torch")] * torch.cuda.is_available()


@pytest.mark.parametrize("kind, expected", [("lstm", 4_426_457), ("transformer", 4_326_041)])
def test_parameter_counts_equal_the_paper(kind, expected):
    assert parameter_count(build_model(default_config(kind))) == expected


@pytest.fixture(scope="module", params=["lstm", "transformer"])
def model(request):
    torch.manual_seed(1234)
    return build_model(default_config(request.param)).eval()


def full_logits(model, tokens, device):
    with torch.inference_mode():
        return model.to(device)(torch.tensor([tokens], device=device))[0].float().cpu().numpy()


@pytest.mark.parametrize("device, kernel", CASES)
def test_step_by_step_logits_equal_the_full_forward(model, device, kernel):
    tokens = torch.randint(0, 153, (CONTEXT,), generator=torch.Generator().manual_seed(7)).tolist()
    engine = Engine(model, device, kernel=kernel)
    assert engine.kernel == kernel
    engine.reset(tokens[:1])
    stepped = [engine.logits.copy()] + [engine.feed([t]).copy() for t in tokens[1:]]
    assert np.abs(np.stack(stepped) - full_logits(model, tokens, device)).max() <= 1e-4


@pytest.mark.parametrize("device, kernel", CASES)
@pytest.mark.parametrize("split", [1, 37, 200])
def test_prefill_then_steps_equal_the_full_forward(model, device, kernel, split):
    tokens = torch.randint(0, 153, (CONTEXT,), generator=torch.Generator().manual_seed(split)).tolist()
    engine = Engine(model, device, kernel=kernel)
    engine.reset(tokens[:split])
    full = full_logits(model, tokens, device)
    assert np.abs(engine.logits - full[split - 1]).max() <= 1e-4
    engine.feed(tokens[split:])
    assert np.abs(engine.logits - full[-1]).max() <= 1e-4
    assert engine.position == CONTEXT


# What sampling sees is the next-token distribution; int8's error on it depends on the CPU's
# fbgemm kernels (AVX2 saturates 16-bit sums where AVX-512 VNNI does not), hence KL, not logits.
@pytest.mark.parametrize(
    "precision, kernel, max_kl",
    [("fp16", "torch", 1e-4), ("int8", "torch", 0.05)] + [("fp16", "native", 1e-4), ("int8", "native", 0.05)] * NATIVE,
)
def test_reduced_precision_decode_stays_near_the_full_forward(model, precision, kernel, max_kl):
    tokens = torch.randint(0, 153, (48,), generator=torch.Generator().manual_seed(11)).tolist()
    engine = Engine(model, "cpu", precision=precision, kernel=kernel)
    engine.reset(tokens[:1])
    engine.feed(tokens[1:])
    full = torch.from_numpy(full_logits(model, tokens, "cpu")[-1]).log_softmax(-1)
    reduced = torch.from_numpy(engine.logits).log_softmax(-1)
    assert (full - reduced).abs().max() > 1e-5  # really rounded
    assert float((full.exp() * (full - reduced)).sum()) <= max_kl


def test_automatic_precision_follows_the_kernel(model):
    fbgemm = "fbgemm" in torch.backends.quantized.supported_engines
    assert automatic_precision(torch.device("cpu"), "native") == "int8"
    assert automatic_precision(torch.device("cpu"), "torch") == ("fp16" if fbgemm else "fp32")
    assert automatic_precision(torch.device("cuda"), "torch") == "fp32"
    engine = Engine(model, "cpu", precision="auto")
    assert engine.precision == automatic_precision(torch.device("cpu"), engine.kernel)
    assert engine.kernel == ("native" if NATIVE else "torch")


@pytest.mark.parametrize("kernel", [kernel for device, kernel in CASES if device == "cpu"])
def test_decode_weights_are_prepared_once_and_again_on_request(model, kernel):
    tokens = torch.randint(0, 153, (32,), generator=torch.Generator().manual_seed(12)).tolist()
    engine = Engine(model, "cpu", kernel=kernel)
    before = full_logits(model, tokens, "cpu")[-1]
    with torch.no_grad():
        model.head.weight.mul_(2)  # exactly undone below
    try:
        after = full_logits(model, tokens, "cpu")[-1]
        engine.reset(tokens[:1])
        engine.feed(tokens[1:])
        assert np.abs(engine.logits - before).max() <= 1e-4  # the weights it was built with
        engine.prepare()
        engine.reset(tokens[:1])
        engine.feed(tokens[1:])
        assert np.abs(engine.logits - after).max() <= 1e-4
    finally:
        with torch.no_grad():
            model.head.weight.div_(2)


def test_unknown_decode_precision_is_named():
    with pytest.raises(ValueError, match="unknown decode precision 'fp8'"):
        Engine(build_model(default_config("lstm")), "cpu", precision="fp8")


@pytest.mark.parametrize("kernel", [kernel for device, kernel in CASES if device == "cpu"])
def test_transformer_cache_slides_past_the_context(kernel):
    torch.manual_seed(3)
    model = build_model(config_from_dict({"kind": "transformer", "num_layers": 2, "context": 16, "max_distance": 11})).eval()
    tokens = torch.randint(0, 153, (40,), generator=torch.Generator().manual_seed(5)).tolist()
    engine = Engine(model, "cpu", kernel=kernel)
    engine.reset(tokens[:1])
    engine.feed(tokens[1:])
    assert engine.position == 40 and list(engine.context) == tokens[-16:]
    # One layer attends only over its own keys: with a single layer the slid cache is exact.
    single = build_model(config_from_dict({"kind": "transformer", "num_layers": 1, "context": 16, "max_distance": 11})).eval()
    engine = Engine(single, "cpu", kernel=kernel)
    engine.reset(tokens[:1])
    engine.feed(tokens[1:])
    expected = full_logits(single, tokens[-16:], "cpu")[-1]
    assert np.abs(engine.logits - expected).max() <= 1e-4


@pytest.mark.parametrize("kernel", [kernel for device, kernel in CASES if device == "cpu"])
def test_lstm_state_is_carried_forever(kernel):
    torch.manual_seed(4)
    model = build_model(default_config("lstm")).eval()
    tokens = torch.randint(0, 153, (300,), generator=torch.Generator().manual_seed(9)).tolist()
    engine = Engine(model, "cpu", kernel=kernel)
    engine.reset(tokens[:1])
    engine.feed(tokens[1:])
    assert np.abs(engine.logits - full_logits(model, tokens, "cpu")[-1]).max() <= 1e-4


def test_training_mode_forward_uses_dropout_and_eval_does_not(model):
    tokens = torch.randint(0, 153, (2, 32))
    model.train()
    try:
        assert not torch.equal(model(tokens), model(tokens))
    finally:
        model.eval()
    with torch.no_grad():
        assert torch.equal(model(tokens), model(tokens))


def test_unknown_kind_and_keys_are_named():
    with pytest.raises(ValueError, match="unknown model kind 'gru'"):
        config_from_dict({"kind": "gru"})
    with pytest.raises(ValueError, match="width"):
        config_from_dict({"kind": "lstm", "width": 3})
