"""bench.py: one run measures training and generation of both archs, and `--json` ends with one JSON object.

Run here on tiny models for a fraction of a second each; the real numbers come from `python bench.py`.
"""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import bench  # noqa: E402
from tinystories import kernels  # noqa: E402
from tinystories.model import TinyStoriesConfig, TinyStoriesModel  # noqa: E402
from tinystories.tokenizer import EOS_ID  # noqa: E402

gen = importlib.import_module("tinystories.generate")


def tiny_configs() -> dict:
    return {"seed": TinyStoriesConfig(arch="seed", d_model=32, n_heads=2, group_ff=(64,), layers_per_group=1,
                                      context=16),
            "decoder": TinyStoriesConfig(arch="decoder", d_model=32, n_heads=2, n_layers=1, d_ff=64, context=16,
                                         cutoffs=(100, 1000))}


@pytest.fixture
def tiny_bench(monkeypatch, tokenizer):
    """bench.py on tiny models, briefly, with the session's tokenizer; torch's thread count restored after."""
    monkeypatch.setattr(bench, "configs", tiny_configs)
    monkeypatch.setattr(bench, "STORY_TOKENS", 40)
    monkeypatch.setattr(bench, "RUNS", {"quick": dict(train_seconds=0.0, stories=1, seed_tokens=8)})
    monkeypatch.setattr("tinystories.tokenizer.build_tokenizer", lambda *a, **k: tokenizer)
    threads = torch.get_num_threads()
    yield bench
    torch.set_num_threads(threads)


def test_json_is_one_object_on_the_last_line_with_every_number(tiny_bench, capsys, tmp_path):
    assert bench.main(["--quick", "--json", "--threads", "1", "--model", str(tmp_path / "no-checkpoint")]) == 0
    out = capsys.readouterr()
    result = json.loads(out.out.strip().splitlines()[-1])
    for key in ("train_tokens_per_s", "generate_tokens_per_s", "first_token_ms"):
        assert set(result[key]) == {"seed", "decoder"} and all(v > 0 for v in result[key].values()), key
    assert result["train_speedup"] == pytest.approx(
        result["train_tokens_per_s"]["decoder"] / result["train_tokens_per_s"]["seed"], rel=0.02, abs=0.006)
    assert result["peak_rss_mb"] >= result["generation_peak_rss_mb"] > 0
    assert result["device"] == "cpu" and result["threads"] == 1 and result["generation_threads"] == 1
    assert result["generation_step"] == kernels.describe()  # native or torch, and if torch, why
    assert result["story_tokens"] == {"decoder": 40, "seed": 8}
    assert result["generation_settings"] == {"temperature": 0.8, "top_p": 0.9}  # the app's defaults
    assert "random weights" in result["generation_models"]["decoder"]  # no checkpoint there: said, not hidden
    assert "no usable checkpoint" in out.err


def test_generation_is_measured_on_the_clis_thread_count_and_on_all_threads(tiny_bench, capsys, tmp_path,
                                                                             monkeypatch):
    seen = []
    real = bench.bench_generation
    monkeypatch.setattr(bench, "bench_generation", lambda *a: (seen.append(torch.get_num_threads()), real(*a))[1])
    monkeypatch.delenv("TINYSTORIES_THREADS", raising=False)
    assert bench.main(["--quick", "--json", "--threads", "2", "--model", str(tmp_path / "no-checkpoint")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert seen == [1, 2, 1]  # decoder on 1 thread (the CLI's and the app's default), on all 2; seed on 1
    assert (result["threads"], result["generation_threads"]) == (2, 1)
    assert result["decoder_generation_all_threads"]["threads"] == 2
    assert bench.main(["--quick", "--generation-threads", "0"]) == 2
    assert "positive integer" in capsys.readouterr().err


def test_without_json_it_prints_readable_lines_only(tiny_bench, capsys, tmp_path):
    bench.main(["--quick", "--threads", "1", "--model", str(tmp_path / "no-checkpoint")])
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("train decoder") for line in lines)
    assert any(line.startswith("generate seed") for line in lines)
    assert not any(line.startswith("{") for line in lines)


def test_a_benchmarked_story_has_exactly_the_tokens_it_is_timed_for(tokenizer, monkeypatch):
    """Even a model that wants to stop at once: [EOS] is suppressed while timing."""
    torch.manual_seed(0)
    model = TinyStoriesModel(tiny_configs()["decoder"]).eval()
    model.tokenizer = tokenizer
    real_next = gen._Reader.next_token

    def eager_to_stop(self):
        dist = real_next(self)
        dist.adjust(EOS_ID, 100.0)  # [EOS] all but certain
        return dist

    appended = []
    real_append = gen._Reader.append
    monkeypatch.setattr(gen._Reader, "next_token", eager_to_stop)
    monkeypatch.setattr(gen._Reader, "append", lambda self, t: (appended.append(t), real_append(self, t)))
    result = bench.bench_generation(model, tokens=25, stories=2, device=torch.device("cpu"))
    assert result["story_tokens"] == 25
    assert len(appended) == 8 + 2 * 25  # the warm-up story, then two timed ones
    assert gen.EOS_BIAS_STEP == 0.1  # put back


def test_training_flops_count_a_whole_window_per_seed_token():
    cfgs = tiny_configs()
    seed, decoder = (TinyStoriesModel(cfgs[a]) for a in ("seed", "decoder"))
    per_window_body = 6 * sum(p.numel() for p in seed.seed.groups.parameters()) * cfgs["seed"].context
    assert bench.flops_per_token(cfgs["seed"], seed) > per_window_body
    assert 0 < bench.flops_per_token(cfgs["decoder"], decoder) < per_window_body
