"""The native decode kernel: built on first use, the same function as the torch step, and a
clear fallback (or error) where it cannot be built."""

import platform

import pytest
import torch

from daemon import native
from daemon.engine import Engine
from daemon.model import build_model, config_from_dict, default_config

pytestmark = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64") or bool(native.missing_cpu_features()),
    reason="the native kernel needs an x86-64 CPU with AVX2, FMA and F16C",
)


@pytest.fixture
def fresh_build(tmp_path, monkeypatch):
    """An empty kernel cache and no kernel loaded in this process (restored afterwards)."""
    monkeypatch.setenv("CACHE_DIRECTORY", str(tmp_path))
    native._load.cache_clear()
    yield tmp_path
    native._load.cache_clear()


def test_the_kernel_is_built_once_into_the_cache_folder(fresh_build):
    assert native.native_unavailable() is None
    built = list((fresh_build / "antiphon").glob("native_decode-*.so"))
    assert len(built) == 1 and not list((fresh_build / "antiphon").glob("*.tmp"))
    stamp = built[0].stat().st_mtime_ns
    native._load.cache_clear()
    assert native.native_unavailable() is None
    assert built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt


def test_a_missing_compiler_is_named_and_auto_falls_back_to_torch(fresh_build, monkeypatch):
    monkeypatch.setenv("CC", str(fresh_build / "no-such-cc"))
    reason = native.native_unavailable()
    assert "no-such-cc" in reason and "does not run" in reason
    model = build_model(default_config("lstm")).eval()
    assert Engine(model, "cpu", kernel="auto").kernel == "torch"
    with pytest.raises(ValueError, match="decode kernel 'native' cannot run: C compiler .*no-such-cc"):
        Engine(model, "cpu", kernel="native")


def test_a_failing_build_says_what_the_compiler_said(fresh_build, monkeypatch):
    script = fresh_build / "cc"
    script.write_text(
        "#!/bin/sh\n"
        '[ "$1" = --version ] && echo fake 1.0 && exit 0\n'
        "echo 'native_decode.c:1: error: broken' >&2\n"
        "exit 1\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("CC", str(script))
    assert "error: broken" in native.native_unavailable()
    assert not list((fresh_build / "antiphon").glob("*.so"))


def test_an_unknown_kernel_is_named():
    with pytest.raises(ValueError, match="unknown decode kernel 'fast'"):
        Engine(build_model(default_config("lstm")), "cpu", kernel="fast")


def test_widths_the_kernel_cannot_vectorise_fall_back_or_are_refused():
    model = build_model(config_from_dict({"kind": "lstm", "hidden_size": 20})).eval()
    with pytest.raises(native.NativeUnavailable, match="multiples of 8; got {'hidden': 20}"):
        native.native_decoder(model, "fp32")
    assert Engine(model, "cpu", kernel="auto").kernel == "torch"
    with pytest.raises(ValueError, match="'native' cannot run: .*multiples of 8"):
        Engine(model, "cpu", kernel="native")


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_native_and_torch_steps_agree_token_by_token_past_the_context(kind):
    torch.manual_seed(21)
    overrides = {"context": 24, "max_distance": 19, "num_layers": 3} if kind == "transformer" else {}
    model = build_model(config_from_dict({"kind": kind, **overrides})).eval()
    tokens = torch.randint(0, 153, (70,), generator=torch.Generator().manual_seed(2)).tolist()
    engines = [Engine(model, "cpu", kernel=kernel) for kernel in ("torch", "native")]
    for engine in engines:
        engine.reset(tokens[:5])
    for token in tokens[5:]:
        torch_logits, native_logits = (engine.feed([token]).copy() for engine in engines)
        assert abs(torch_logits - native_logits).max() <= 1e-4


def test_native_lstm_step_leaves_the_state_it_was_given():
    model = build_model(default_config("lstm")).eval()
    step = native.native_decoder(model, "fp32").step
    with torch.inference_mode():
        _, state = step(3, None)
        before = tuple(part.clone() for part in state)
        _, after = step(4, state)
    assert all(torch.equal(a, b) for a, b in zip(before, state))
    assert not torch.equal(after[0], state[0])


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_a_token_outside_the_vocabulary_is_refused(kind):
    engine = Engine(build_model(default_config(kind)).eval(), "cpu", kernel="native")
    with pytest.raises(IndexError, match="token 153 is outside the vocabulary"):
        engine.feed([153])
