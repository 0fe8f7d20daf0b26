"""Native generation steps (tinystories.kernels, matvec.c): built once, checked against torch, and never required.

The stories native steps generate from fixed seeds are stored in tests/fixtures/native_reference.json (a tiny
float16-valued decoder, so that every matrix runs natively). Re-record them only when matvec.c changes its
arithmetic on purpose:

    python tests/test_kernels.py
"""
from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import fp16_valued_decoder, tiny_decoder_config  # noqa: E402
from tinystories import TinyStoriesModel, kernels  # noqa: E402

gen = importlib.import_module("tinystories.generate")
NATIVE_REFERENCE = ROOT / "tests" / "fixtures" / "native_reference.json"

X86 = platform.machine().lower() in ("x86_64", "amd64")
AVX2 = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")  # AVX2 CPUs have FMA and F16C too
requires_native = pytest.mark.skipif(not (X86 and AVX2 and kernels.compiler()),
                                     reason="needs an x86-64 CPU with AVX2 and a C compiler")


@requires_native
def test_the_kernels_build_wherever_they_can():
    """On an x86-64 AVX2 machine with a compiler (this project's, CI's) native code must really be in use: otherwise
    every test below would pass through torch and test nothing native."""
    assert kernels.native() is not None, kernels.describe()
    assert kernels.describe().startswith("native")


def native_product(w16: torch.Tensor, x: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    y = torch.empty(w16.shape[0])
    kernels.matvec()(w16.data_ptr(), x.data_ptr(), None if b is None else b.data_ptr(), y.data_ptr(), *w16.shape)
    return y


@requires_native
@pytest.mark.parametrize("n, k", [(1, 16), (3, 48), (4, 256), (37, 64), (1027, 256), (256, 1024)])
@pytest.mark.parametrize("bias", [True, False])
def test_the_native_product_is_torchs_up_to_float32_rounding(n, k, bias):
    g = torch.Generator().manual_seed(n * k)
    w16 = (torch.randn(n, k, generator=g) * 0.05).half()
    b = torch.randn(n, generator=g) if bias else None
    buf = torch.randn(k + 1, generator=g)
    x = buf[1:]  # not 32-byte aligned: the kernel must not assume it
    want = F.linear(x, w16.float(), b)
    got = native_product(w16, x, b)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6 * (1 + want.abs().max().item()))
    assert torch.equal(native_product(w16, x.clone(), b), got)  # deterministic, wherever x lies




def steps(model, x, native: bool):
    """Hidden states of x[:, 4:] fed one token at a time after x[:, :4], and the KV cache they leave."""
    from tinystories.model import Decoder

    dec = model.decoder
    dec.compact.local.__dict__.clear()  # plans are per model and thread: start afresh
    real = Decoder._native_plan
    if not native:
        Decoder._native_plan = lambda self, blocks, ln_f: None
    try:
        with torch.inference_mode():
            cache = dec.new_cache()
            hs = [dec(x[:, :4], cache)[:, -1]]
            for t in range(4, x.shape[1]):
                hs.append(dec(x[:, t : t + 1], cache)[:, -1])
        used = dec.compact.local.step_plan[1][2] is not None
    finally:
        Decoder._native_plan = real
    n = cache.length
    kv = torch.cat([torch.cat([k[:, :, :n], v[:, :, :n]]) for k, v in zip(cache.keys, cache.values)])
    return torch.cat(hs), kv, used


@requires_native
@pytest.mark.parametrize("overrides", [{}, dict(d_model=64, n_heads=4, d_ff=128, n_layers=3, context=24)])
def test_the_native_step_is_the_torch_step_up_to_float32_rounding(monkeypatch, overrides):
    monkeypatch.setattr("tinystories.model.CompactWeights.MIN_SIZE", 0)
    model = fp16_valued_decoder(**overrides)
    x = torch.randint(0, 50257, (1, model.config.context), generator=torch.Generator().manual_seed(1))
    h_native, kv_native, used = steps(model, x, native=True)
    h_torch, kv_torch, used_torch = steps(model, x, native=False)
    assert used and not used_torch
    assert torch.allclose(h_native, h_torch, rtol=1e-5, atol=1e-5), (h_native - h_torch).abs().max()
    assert torch.allclose(kv_native, kv_torch, rtol=1e-5, atol=1e-5)  # the keys and values it wrote
    assert torch.equal(steps(model, x, native=True)[0], h_native)  # deterministic


@requires_native
def test_the_native_step_serves_threads_at_once(monkeypatch):
    """Each thread has its own scratch buffer and cache; ctypes lets the others run meanwhile (the app's Compare)."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr("tinystories.model.CompactWeights.MIN_SIZE", 0)
    model = fp16_valued_decoder()
    prompts = [torch.randint(0, 50257, (1, 16), generator=torch.Generator().manual_seed(i)) for i in range(4)]

    def run(x):
        dec = model.decoder
        with torch.inference_mode():
            cache = dec.new_cache()
            hs = [dec(x[:, :4], cache)[:, -1]] + [dec(x[:, t : t + 1], cache)[:, -1] for t in range(4, 16)]
        assert dec.compact.local.step_plan[1][2] is not None, threading.current_thread().name
        return torch.cat(hs)

    alone = [run(x) for x in prompts]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(run, prompts * 3))
    assert all(torch.equal(got, alone[i % 4]) for i, got in enumerate(together))


@requires_native
def test_what_the_native_step_cannot_run_goes_through_torch(monkeypatch):
    """Float32 weights (no float16 copies: a model mid-training, a float32 checkpoint) take the torch step."""
    monkeypatch.setattr("tinystories.model.CompactWeights.MIN_SIZE", 0)
    torch.manual_seed(0)
    model = TinyStoriesModel(tiny_decoder_config()).eval()  # float32 initialisation: not float16 values
    x = torch.randint(0, 50257, (1, 12))
    h, _, used = steps(model, x, native=True)
    assert not used
    assert torch.equal(h, steps(model, x, native=False)[0])


def test_generation_without_native_code_is_the_torch_path(without_native, monkeypatch):
    monkeypatch.setattr("tinystories.model.CompactWeights.MIN_SIZE", 0)
    assert kernels.native() is None and "turned off by TINYSTORIES_KERNELS=0" in kernels.describe()
    model = fp16_valued_decoder()
    x = torch.randint(0, 50257, (1, 12))
    h, _, used = steps(model, x, native=True)
    assert not used
    with torch.enable_grad():  # with gradients on, every product is F.linear on the float32 weights
        cache = model.decoder.new_cache()
        plain = [model.decoder(x[:, :4], cache)[:, -1]]
        plain += [model.decoder(x[:, t : t + 1], cache)[:, -1] for t in range(4, 12)]
    assert torch.equal(h, torch.cat(plain).detach())


def test_a_product_with_gradients_on_is_never_native(monkeypatch):
    """The native product has no backward: with gradients on, CompactWeights must hand the product to torch."""
    from tinystories.model import CompactWeights

    monkeypatch.setattr("tinystories.model.CompactWeights.MIN_SIZE", 0)
    layer = torch.nn.Linear(32, 48)
    with torch.no_grad():
        layer.weight.copy_(layer.weight.half().float())
    x = torch.randn(1, 32, requires_grad=True)
    y = CompactWeights().linear(layer, x)
    assert torch.equal(y, F.linear(x, layer.weight, layer.bias)) and y.requires_grad


# --- building: once per machine, atomically, and every way it can fail says why


@requires_native
def test_a_build_is_kept_and_reused(tmp_path):
    kernels.build(tmp_path)
    built = list(tmp_path.iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"  # no partial files left behind
    mtime = built[0].stat().st_mtime_ns
    kernels.build(tmp_path)
    assert list(tmp_path.iterdir()) == built and built[0].stat().st_mtime_ns == mtime  # not rebuilt


@requires_native
def test_a_compiler_given_with_arguments(tmp_path):
    """CC="ccache gcc" and the like: the command is split as a shell would split it."""
    assert kernels.build(tmp_path, cc=f"env {kernels.compiler()}").tinystories_cpu_supported() == 1


@requires_native
def test_a_damaged_build_is_built_again(tmp_path):
    lib = kernels.library_path(tmp_path, kernels.compiler())  # (never a loaded library: rewriting one crashes)
    lib.write_bytes(b"not a shared library")  # a full disk, a killed copy
    assert kernels.build(tmp_path).tinystories_cpu_supported() == 1
    assert lib.read_bytes()[:4] == b"\x7fELF" and list(tmp_path.iterdir()) == [lib]


@pytest.mark.parametrize("cc, message", [
    ("/nonexistent/cc", "could not run the C compiler"),
    ("false", "could not build matvec.c"),  # a compiler that fails
])
def test_a_compiler_that_cannot_build_is_reported(tmp_path, cc, message):
    if not X86:
        pytest.skip("the x86-64 check answers first here")
    with pytest.raises(kernels.KernelUnavailable, match=message):
        kernels.build(tmp_path, cc=cc)
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".so" or p.name.startswith(".")]


def test_other_cpus_are_told_why(tmp_path, monkeypatch):
    monkeypatch.setattr(platform, "machine", lambda: "arm64")
    with pytest.raises(kernels.KernelUnavailable, match="x86-64 CPUs, this one is arm64"):
        kernels.build(tmp_path)


def test_no_compiler_is_told_why(tmp_path, monkeypatch):
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(kernels, "compiler", lambda environ=None: None)
    with pytest.raises(kernels.KernelUnavailable, match="no C compiler"):
        kernels.build(tmp_path)


def test_where_nothing_builds_generation_goes_on(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv(kernels.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(kernels, "compiler", lambda environ=None: None)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    kernels.reset()
    try:
        with caplog.at_level("INFO", logger="tinystories.kernels"):
            assert kernels.native() is None and kernels.matvec() is None and kernels.decoder_step() is None
        assert "through torch (no C compiler" in caplog.text
        assert kernels.describe() == "torch (no C compiler found (set CC, or install cc, gcc or clang))"
    finally:
        kernels.reset()


@pytest.mark.parametrize("value, on", [("0", False), ("off", False), ("false", False), ("1", True), ("", True)])
def test_the_switch(value, on):
    assert kernels.enabled({kernels.ENABLE_ENV: value}) is on
    assert kernels.enabled({}) is True


def test_the_cache_folder(tmp_path):
    assert kernels.cache_dir({kernels.CACHE_ENV: str(tmp_path)}) == tmp_path
    assert kernels.cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "tinystories"
    assert kernels.cache_dir({}) == kernels.Path.home() / ".cache" / "tinystories"
    assert os.environ[kernels.CACHE_ENV]  # the tests build into their own (conftest), never the user's


# --- reproducibility: native stories from fixed seeds, token for token

NATIVE_CASES = [
    dict(tags=["Dialogue", "Twist"], seed=0, max_tokens=70),
    dict(tags=["MoralValue"], seed=1, max_tokens=50, temperature=0.7, top_p=0.5),
    dict(tags=[], seed=2, max_tokens=40, top_p=1.0, temperature=1.3),
]


def native_story_model(tokenizer) -> TinyStoriesModel:
    """A tiny float16-valued decoder whose output is peaked like a trained model's (weights x3)."""
    import numpy as np

    model = fp16_valued_decoder(n_layers=2, context=16, cutoffs=(100, 1000))
    with torch.no_grad():
        model.decoder.output.set_token_counts(np.random.default_rng(0).zipf(1.3, model.config.vocab_size) * 1.0)
        for p in model.decoder.output.parameters():
            p.mul_(4)  # a power of 2: float16 values stay exact
    model.tokenizer = tokenizer
    return model


def native_stories(tokenizer) -> list[list[int]]:
    from tinystories.model import CompactWeights

    real, CompactWeights.MIN_SIZE = CompactWeights.MIN_SIZE, 0  # the tiny model's matrices too
    try:
        model = native_story_model(tokenizer)
        out = []
        for case in NATIVE_CASES:
            ids = []
            real_append = gen._Reader.append
            gen._Reader.append = lambda self, token: (ids.append(int(token)), real_append(self, token))[1]
            try:
                for _ in gen.stream_story(model, **case):
                    pass
            finally:
                gen._Reader.append = real_append
            assert model.decoder.compact.local.step_plan[1][2] is not None, "the native step did not run"
            out.append(ids)
        return out
    finally:
        CompactWeights.MIN_SIZE = real


@requires_native
def test_native_stories_are_the_recorded_ones(tokenizer):
    """A seed gives the same story every time, on every x86-64 CPU: the native arithmetic has a fixed order."""
    reference = json.loads(NATIVE_REFERENCE.read_text())
    assert reference["cases"] == NATIVE_CASES, "the fixture is out of date: re-record it (module docstring)"
    got = native_stories(tokenizer)
    assert got == reference["ids"]
    assert max(map(len, got)) > 3 * 16  # long enough for the window to move (re-read through torch) twice


if __name__ == "__main__":  # re-record the native reference
    from tinystories.tokenizer import load_tokenizer

    torch.set_num_threads(1)
    assert kernels.native() is not None, kernels.describe()
    NATIVE_REFERENCE.write_text(json.dumps({"cases": NATIVE_CASES, "ids": native_stories(load_tokenizer())}) + "\n")
    print(f"wrote {NATIVE_REFERENCE}")
