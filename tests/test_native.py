"""The native decode kernel: built on first use, the same function as the torch step, and a
clear fallback (or error) where it cannot be built."""

import hashlib
import logging
import os
import platform
import subprocess

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
    folder = fresh_build / "antiphon"
    built = list(folder.glob("native_decode-*.so"))
    assert len(built) == 1
    assert sorted(p.name for p in folder.iterdir()) == sorted([built[0].name, built[0].with_suffix(".sha256").name])
    assert built[0].with_suffix(".sha256").read_text().strip() == hashlib.sha256(built[0].read_bytes()).hexdigest()
    assert folder.stat().st_mode & 0o777 == 0o700
    stamp = built[0].stat().st_mtime_ns
    native._load.cache_clear()
    assert native.native_unavailable() is None
    assert built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt


@pytest.fixture
def planted(tmp_path):
    """A library whose constructor, run when anything loads it, writes the file `ran`."""
    marker = tmp_path / "ran"
    source = tmp_path / "planted.c"
    source.write_text(
        "#include <stdio.h>\n"
        f'__attribute__((constructor)) static void planted(void) {{ FILE *f = fopen("{marker}", "w"); if (f) fclose(f); }}\n'
        "int antiphon_native_abi(void) { return 5; }\n"
    )
    library = tmp_path / "planted.so"
    subprocess.run([native.compiler(), "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    return library, marker


def plant(library, folder, with_record=True):
    """The planted library under the name the kernel's build would have, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / native.library_name(native.compiler())
    target.write_bytes(library.read_bytes())
    if with_record:
        target.with_suffix(".sha256").write_text(hashlib.sha256(library.read_bytes()).hexdigest())
    return target


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o1777])
def test_a_cache_folder_others_can_write_to_is_not_used(fresh_build, planted, caplog, mode):
    library, marker = planted
    folder = fresh_build / "antiphon"
    plant(library, folder)
    folder.chmod(mode)
    before = sorted(p.name for p in folder.iterdir())
    with caplog.at_level(logging.WARNING, logger="antiphon.native"):
        assert native.native_unavailable() is None  # built privately instead
    assert not marker.exists()
    assert sorted(p.name for p in folder.iterdir()) == before
    assert f"not using the cache folder {folder}" in caplog.text


@pytest.mark.parametrize("with_record", [True, False])
def test_a_planted_or_modified_library_is_not_loaded_but_rebuilt(fresh_build, planted, caplog, with_record):
    library, marker = planted
    assert native.native_unavailable() is None
    cached = next((fresh_build / "antiphon").glob("native_decode-*.so"))
    record = cached.with_suffix(".sha256").read_text()
    # Same name, other bytes; a new file renamed over it, as a planter would: rewriting the file
    # in place would truncate the library this process has mapped (SIGBUS when it next runs it).
    swapped = cached.with_name("planted.tmp")
    swapped.write_bytes(library.read_bytes())
    swapped.replace(cached)
    if not with_record:
        cached.with_suffix(".sha256").unlink()
    native._load.cache_clear()
    with caplog.at_level(logging.WARNING, logger="antiphon.native"):
        assert native.native_unavailable() is None
    assert not marker.exists()
    assert "does not match the sha256 recorded when it was built" in caplog.text and cached.name in caplog.text
    assert cached.read_bytes() != library.read_bytes()
    assert cached.with_suffix(".sha256").read_text() == record


def test_without_a_cache_folder_the_kernel_is_built_privately_not_in_a_shared_tmp(
    tmp_path, planted, monkeypatch, caplog
):
    library, marker = planted
    shared_tmp = tmp_path / "tmp"
    shared = shared_tmp / f"antiphon-{os.getuid()}"  # what an earlier version fell back to
    plant(library, shared)
    shared.chmod(0o777)
    before = sorted(p.name for p in shared_tmp.rglob("*"))
    unwritable = tmp_path / "file"
    unwritable.write_text("")
    monkeypatch.delenv("CACHE_DIRECTORY", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(unwritable / "home"))  # no home can be made under a file
    monkeypatch.setattr("tempfile.tempdir", str(shared_tmp))
    native._load.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="antiphon.native"):
            assert native.native_unavailable() is None
    finally:
        native._load.cache_clear()
    assert not marker.exists()
    assert sorted(p.name for p in shared_tmp.rglob("*")) == before  # the private build folder is gone too
    assert "no cache folder" in caplog.text


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
