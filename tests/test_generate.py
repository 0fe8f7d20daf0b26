"""Story generation: reproducible with a seed, bounded, stops at [EOS], streams, and reads the context exactly
as evaluation does."""
import contextlib
import importlib
import io
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinystories import GenerationError, UnknownTagError, check_settings, generate_text, stream_story
from tinystories.generate import generate
from tinystories.tokenizer import EOS_ID, GPT2_VOCAB_SIZE

ROOT = Path(__file__).resolve().parent.parent
gen = importlib.import_module("tinystories.generate")  # the module (the package also exports a function `generate`)


@pytest.fixture
def sampled(monkeypatch):
    """Records every token the sampler picks, and the log-probabilities the model gave at that step."""
    tokens, log_probs = [], []
    real_sample = gen.NextToken.sample

    def sample(self, *args, **kwargs):
        log_probs.append(self.log_probs())  # computes every cluster: changes no draw (test_generate_reference)
        tokens.append(real_sample(self, *args, **kwargs))
        return tokens[-1]

    monkeypatch.setattr(gen.NextToken, "sample", sample)
    return tokens, log_probs


def test_the_same_seed_gives_the_same_story(approach2_model):
    a = generate(approach2_model, ["Dialogue", "Twist"], seed=3, max_tokens=40)
    b = generate(approach2_model, ["dialogue", "twist"], seed=3, max_tokens=40)
    assert a == b and a


def test_different_seeds_give_different_stories(approach2_model):
    stories = {generate(approach2_model, ["Dialogue"], seed=s, max_tokens=30) for s in range(4)}
    assert len(stories) >= 3


def test_the_seed_arch_generates_reproducibly_too(seed_model):
    a = generate(seed_model, ["Twist"], seed=5, max_tokens=12)
    assert a == generate(seed_model, ["Twist"], seed=5, max_tokens=12) and a


def test_a_story_has_at_most_max_tokens_tokens(approach1_model, sampled, monkeypatch):
    tokens, _ = sampled
    monkeypatch.setattr(gen, "EOS_BIAS_STEP", -1e4)  # no [EOS]: only max_tokens can end the story
    story = generate(approach1_model, ["Conflict"], seed=0, max_tokens=7, eos_bias_after=0)
    assert len(tokens) == 7
    assert story == approach1_model.tokenizer.decode(tokens).strip()
    assert all(t < GPT2_VOCAB_SIZE for t in tokens)  # never [PAD], [BOS] or a tag inside a story


def test_generation_stops_at_eos(approach2_model, sampled, monkeypatch):
    tokens, _ = sampled
    monkeypatch.setattr(gen, "EOS_BIAS_STEP", 1e4)  # from the 5th token on, [EOS] wins
    story = generate(approach2_model, ["Twist"], seed=0, max_tokens=50, eos_bias_after=5)
    assert len(tokens) == 6 and tokens[-1] == EOS_ID and EOS_ID not in tokens[:-1]
    assert story == approach2_model.tokenizer.decode(tokens[:5]).strip()


def test_an_eos_bias_from_the_first_token_gives_an_empty_story(approach2_model, monkeypatch):
    monkeypatch.setattr(gen, "EOS_BIAS_STEP", 1e4)
    assert list(stream_story(approach2_model, [], seed=0, eos_bias_after=0)) == []
    assert generate(approach2_model, [], seed=0, eos_bias_after=0) == ""


def test_the_eos_bias_grows_from_eos_bias_after(approach2_model, sampled, monkeypatch):
    tokens, log_probs = sampled
    seen = []
    real = gen.NextToken.sample  # the recording sampler from the fixture

    def sample(self, *args, **kwargs):
        seen.append(float(self.scores()[EOS_ID] - self.log_probs()[EOS_ID]))  # the bias added to [EOS]
        return real(self, *args, **kwargs)

    monkeypatch.setattr(gen.NextToken, "sample", sample)
    generate(approach2_model, [], seed=1, max_tokens=6, eos_bias_after=3, temperature=0)
    assert len(seen) == 6
    assert seen == pytest.approx([0, 0, 0, 0.1, 0.2, 0.3], abs=1e-5)


@pytest.mark.parametrize("arch", ["decoder", "seed"])
def test_a_model_in_training_mode_generates_as_in_eval_mode_and_stays_in_training(arch, tokenizer):
    """Dropout must not reach a story (it would draw from torch's global RNG: not reproducible with a seed)."""
    import torch

    from conftest import tiny_decoder_config, tiny_seed_config
    from tinystories import TinyStoriesModel

    torch.manual_seed(0)
    model = TinyStoriesModel((tiny_decoder_config if arch == "decoder" else tiny_seed_config)(dropout=0.5))
    model.tokenizer = tokenizer
    settings = dict(seed=3, max_tokens=30, eos_bias_after=350)
    model.eval()
    expected = generate(model, ["Conflict"], **settings)
    model.train()
    assert generate(model, ["Conflict"], **settings) == expected
    assert model.training and all(m.training for m in model.modules())


def test_streaming_yields_growing_prefixes_of_the_story(approach2_model):
    parts = list(stream_story(approach2_model, ["MoralValue"], seed=2, max_tokens=25))
    assert len(parts) >= 5
    assert all(b.startswith(a) for a, b in zip(parts, parts[1:]))
    assert parts[-1] == generate(approach2_model, ["MoralValue"], seed=2, max_tokens=25)


@pytest.mark.parametrize("approach", [1, 2])
def test_generation_reads_the_context_exactly_as_evaluation_does(request, reference_log_probs, sampled, approach,
                                                                monkeypatch):
    """Past the 32-token context the window slides (approach 1) or keeps the tags pinned (approach 2):
    the model's log-probabilities during generation equal those of scoring the finished story."""
    model = request.getfixturevalue(f"approach{approach}_model")
    tokens, log_probs = sampled
    monkeypatch.setattr(gen, "EOS_BIAS_STEP", -1e4)  # never stop early: the story must outgrow the window
    tags = ["BadEnding", "Foreshadowing"]
    generate(model, tags, seed=4, max_tokens=60, eos_bias_after=0, top_p=1.0)
    story = [t for t in tokens if t != EOS_ID]
    assert len(story) == 60 > model.config.context  # the window had to move
    expected = reference_log_probs(model, story, tags)[: len(story)]
    got = [float(lp[t]) for lp, t in zip(log_probs, story)]
    assert got == pytest.approx(expected, abs=1e-4)


def test_seed_arch_generation_reads_the_context_as_evaluation_does(seed_model, reference_log_probs, sampled):
    tokens, log_probs = sampled
    generate(seed_model, ["Dialogue"], seed=4, max_tokens=24, eos_bias_after=350, top_p=1.0)
    story = [t for t in tokens if t != EOS_ID]
    expected = reference_log_probs(seed_model, story, ["Dialogue"])[: len(story)]
    assert [float(lp[t]) for lp, t in zip(log_probs, story)] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("setting, value, message", [
    ("temperature", -1, "temperature must be between 0.0 and 5.0, got -1"),
    ("temperature", float("nan"), "temperature must be between"),
    ("top_p", 2, "top_p must be between 0.0 and 1.0, got 2"),
    ("max_tokens", 0, "max_tokens must be between 1 and 350, got 0"),
    ("max_tokens", 1000, "max_tokens must be between 1 and 350, got 1000"),
    ("max_tokens", 2.5, "max_tokens must be an integer"),
    ("max_tokens", float("nan"), "max_tokens must be an integer"),
    ("top_p", "lots", "top_p must be a number"),
    ("eos_bias_after", -3, "eos_bias_after must be between 0 and 350"),
    ("seed", -1, "seed must be between"),
])
def test_bad_settings_raise_a_readable_generation_error(approach2_model, setting, value, message):
    with pytest.raises(GenerationError) as e:
        check_settings(**{setting: value})
    assert message in str(e.value)
    with pytest.raises(GenerationError, match=setting):
        generate(approach2_model, ["Twist"], **{setting: value})
    with pytest.raises(GenerationError, match=setting):
        next(stream_story(approach2_model, ["Twist"], **{setting: value}))


def test_settings_are_coerced_to_numbers():
    s = check_settings(temperature="0.7", top_p=1, max_tokens="20", seed="7")
    assert s == dict(temperature=0.7, top_p=1.0, max_tokens=20, eos_bias_after=200, seed=7)
    assert isinstance(s["max_tokens"], int) and not math.isnan(s["temperature"])


def test_an_unknown_tag_is_refused(approach2_model):
    with pytest.raises(UnknownTagError, match="choose from: BadEnding, Conflict, Dialogue"):
        generate(approach2_model, ["Spooky"])


def test_the_seeds_usage_prints_the_tags_then_the_story(approach2_model, approach2_dir):
    code = ("from tinystories import generate_text, load_model\n"
            f"model = load_model({str(approach2_dir)!r})\n"
            "generate_text(model, tags=['MoralValue', 'Twist'], seed=0, max_tokens=20)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    story = generate(approach2_model, ["MoralValue", "Twist"], seed=0, max_tokens=20)
    assert story and result.stdout == f"Generating story with ['MoralValue', 'Twist']\n{story}\n"


def test_generate_text_prints_to_the_current_stdout(approach2_model):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        story = generate_text(approach2_model, tags=["Twist"], seed=0, max_tokens=5)
    assert buf.getvalue() == f"Generating story with ['Twist']\n{story}\n"


def test_generate_text_writes_to_a_file_and_canonicalises_tags(approach2_model):
    f = io.StringIO()
    story = generate_text(approach2_model, tags="twist,moralvalue", file=f, seed=0, max_tokens=20)
    assert f.getvalue() == f"Generating story with ['MoralValue', 'Twist']\n{story}\n"


def test_cli_prints_a_story(run_module, approach2_dir):
    result = run_module("tinystories.generate", "--model", approach2_dir, "--tags", "Dialogue,Twist", "--seed", 1,
                        "--max-tokens", 20)
    assert result.returncode == 0, result.stderr
    first, story = result.stdout.split("\n", 1)
    assert first == "Generating story with ['Dialogue', 'Twist']"
    assert story.strip()


def test_cli_refuses_an_unknown_tag_without_a_traceback(run_module, approach2_dir):
    result = run_module("tinystories.generate", "--model", approach2_dir, "--tags", "Nope")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "'Nope'" in result.stderr
    assert "BadEnding, Conflict, Dialogue, Foreshadowing, MoralValue, Twist" in result.stderr
    assert result.stdout == ""


def test_cli_generates_on_one_torch_thread_unless_told_otherwise(monkeypatch, approach2_dir):
    threads = []
    monkeypatch.setattr(gen.torch, "set_num_threads", threads.append)
    monkeypatch.delenv("TINYSTORIES_THREADS", raising=False)
    args = ["--model", str(approach2_dir), "--seed", "0", "--max-tokens", "3"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert gen.main(args) == 0
        monkeypatch.setenv("TINYSTORIES_THREADS", "2")
        assert gen.main(args) == 0
        assert gen.main(args + ["--threads", "3"]) == 0  # the flag wins
    assert threads == [1, 2, 3]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert gen.main(args + ["--threads", "0"]) == 2
    assert "--threads" in err.getvalue() and "positive integer" in err.getvalue()


def test_the_package_exports_the_generate_function_whatever_was_imported_first():
    code = ("from tinystories.generate import stream_story\n"
            "from tinystories import generate\n"
            "assert callable(generate), generate")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-500:]


def test_the_draw_is_torch_multinomials_draw():
    """_multinomial writes out torch.multinomial's one-sample method (argmax of p / Exp(1) noise) without its
    checks: the same token and the same generator state after, for any probabilities. If a torch release changes
    multinomial, this fails before any story silently changes."""
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    for case in range(400):
        n = int(rng.integers(1, 80))
        p = rng.random(n) ** 4 if case % 5 else np.full(n, 1.0)  # skewed, and uniform (every token tied)
        if case % 7 == 0:
            p[rng.integers(0, n)] = 1e-300  # a negligible token
        p = p / p.sum()
        ours, theirs = torch.Generator().manual_seed(case), torch.Generator().manual_seed(case)
        for _ in range(3):
            assert gen._multinomial(p, ours) == int(torch.multinomial(torch.from_numpy(p), 1, generator=theirs))
        assert torch.equal(ours.get_state(), theirs.get_state())
