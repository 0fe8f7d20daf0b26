"""Generation is exactly reproducible: a fixed seed gives the very story recorded in
tests/fixtures/generation_reference.json, token for token and stream step for stream step.

The reference was recorded with the straightforward generation code: every token's log-probability computed
(all adaptive-softmax clusters), the sampling rule applied by `spec_sample_token` below (float64 weights, a
stable sort of all 50,266 scores, a cumulative sum), and the whole story re-decoded by the tokenizer after every
token. So these tests prove that the speed-ups (clusters computed only when the draw needs them, sorting only a
candidate set, incremental decoding) changed no story. Regenerate the file only when the sampling rule itself
changes on purpose:

    python tests/test_generate_reference.py

History: the rule was first written with float32 probabilities; it was restated in float64 (so that bounds can
decide the nucleus exactly) and the reference re-recorded. Stories of trained models at the default settings
came out the same; float32 rounding had made top_p >= 0.99 drop a few of the least likely tokens.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

gen = importlib.import_module("tinystories.generate")  # the module, not the function the package exports
from tinystories.model import TinyStoriesConfig, TinyStoriesModel  # noqa: E402

REFERENCE = ROOT / "tests" / "fixtures" / "generation_reference.json"

# Untrained tiny models (deterministic from torch.manual_seed(0)). "sharp" multiplies the output weights by 3,
# which makes the next-token distribution more peaked, like a trained model's; the plain decoder's adaptive
# softmax puts ~90 near-equal tokens in its nucleus, and top_p=0.99 or 1.0 reaches into the 49k-token tail
# cluster, so both the cheap and the full top-p paths are exercised.
MODELS = {
    "decoder-a2": dict(arch="decoder", approach=2, sharpen=1.0),
    "decoder-a2-sharp": dict(arch="decoder", approach=2, sharpen=3.0),
    "decoder-a1-sharp": dict(arch="decoder", approach=1, sharpen=3.0),
    "seed-a2": dict(arch="seed", approach=2, sharpen=1.0),
    "seed-a1-sharp": dict(arch="seed", approach=1, sharpen=5.0),
}

CASES = [
    dict(model="decoder-a2", tags=["Dialogue", "Twist"], seed=0, max_tokens=60),
    dict(model="decoder-a2", tags=[], seed=1, max_tokens=30, top_p=0.99),
    dict(model="decoder-a2", tags=["Conflict"], seed=2, max_tokens=20, top_p=1.0, temperature=1.3),
    dict(model="decoder-a2-sharp", tags=["MoralValue"], seed=3, max_tokens=80),
    dict(model="decoder-a2-sharp", tags=["Conflict", "MoralValue"], seed=4, max_tokens=60, temperature=0.7,
         top_p=0.5),
    dict(model="decoder-a2-sharp", tags=["Dialogue"], seed=5, max_tokens=80, eos_bias_after=20),
    dict(model="decoder-a2-sharp", tags=["Twist"], seed=6, max_tokens=30, top_p=0.0),
    dict(model="decoder-a2-sharp", tags=["Twist"], seed=7, max_tokens=30, temperature=0.0),
    dict(model="decoder-a1-sharp", tags=["BadEnding", "Dialogue"], seed=8, max_tokens=60, temperature=1.5),
    dict(model="seed-a2", tags=["Dialogue"], seed=9, max_tokens=30),
    dict(model="seed-a1-sharp", tags=["Conflict", "Twist"], seed=10, max_tokens=30, top_p=0.8),
]


def make_model(name: str, tokenizer) -> TinyStoriesModel:
    spec = MODELS[name]
    torch.manual_seed(0)
    if spec["arch"] == "decoder":
        cfg = TinyStoriesConfig(arch="decoder", approach=spec["approach"], d_model=32, n_heads=2, n_layers=1,
                                d_ff=64, context=16, cutoffs=(100, 1000))
    else:
        cfg = TinyStoriesConfig(arch="seed", approach=spec["approach"], d_model=32, n_heads=2, group_ff=(64,),
                                layers_per_group=1, context=16)
    model = TinyStoriesModel(cfg).eval()
    with torch.no_grad():
        if spec["arch"] == "decoder":
            # frequency ranks of a made-up corpus, so token ids and adaptive-softmax ranks differ
            counts = np.random.default_rng(0).zipf(1.3, cfg.vocab_size).astype(np.float64)
            model.decoder.output.set_token_counts(counts)
            head = model.decoder.output
        else:
            head = model.seed.head
        for p in head.parameters():
            p.mul_(spec["sharpen"])
    model.tokenizer = tokenizer
    return model


def run_case(model, case: dict) -> dict:
    """The story of one case through the public streaming API, plus the token ids it was made of."""
    settings = {k: v for k, v in case.items() if k not in ("model", "tags")}
    ids = []
    real_append = gen._Reader.append

    def spy(self, token):
        ids.append(int(token))
        real_append(self, token)

    gen._Reader.append = spy
    try:
        stream = list(gen.stream_story(model, case["tags"], **settings))
    finally:
        gen._Reader.append = real_append
    return dict(ids=ids, text=stream[-1] if stream else "", yields=len(stream),
                stream_sha1=hashlib.sha1("\0".join(stream).encode("utf-8", "surrogatepass")).hexdigest())


def record(tokenizer) -> list[dict]:
    """The reference stories, made with the specification: every cluster computed, spec_sample_token, and the
    whole story decoded by the tokenizer at every step."""
    models = {}
    out = []
    real_sample, real_append = gen.NextToken.sample, gen._StoryText.append
    gen.NextToken.sample = lambda self, t, p, g: spec_sample_token(self.scores(), t, p, g)
    gen._StoryText.append = lambda self, token, story: self.tokenizer.decode(story)
    try:
        for case in CASES:
            model = models.get(case["model"]) or models.setdefault(case["model"], make_model(case["model"], tokenizer))
            out.append(dict(case=case, **run_case(model, case)))
    finally:
        gen.NextToken.sample, gen._StoryText.append = real_sample, real_append
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Floating-point sums over thousands of probabilities are split across threads, so a story is reproducible
    for a given thread count; the reference was recorded with one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def reference():
    return json.loads(REFERENCE.read_text())


@pytest.fixture(scope="module")
def models(tokenizer):
    return {name: make_model(name, tokenizer) for name in MODELS}


@pytest.mark.parametrize("i", range(len(CASES)), ids=[f"{c['model']}-seed{c['seed']}" for c in CASES])
def test_same_seed_gives_the_recorded_story(models, reference, i):
    expected = reference[i]
    assert expected["case"] == CASES[i], "the fixture is out of date: regenerate it (see the module docstring)"
    got = run_case(models[CASES[i]["model"]], CASES[i])
    assert got["ids"] == expected["ids"]
    assert got["text"] == expected["text"]
    assert got["yields"] == expected["yields"]
    assert got["stream_sha1"] == expected["stream_sha1"]


def test_reference_covers_long_stories_and_early_stops(reference):
    """The cases are worth something: windows slide (context 16) and at least one story ends with [EOS]."""
    assert max(len(r["ids"]) for r in reference) > 3 * 16
    assert any(len(r["ids"]) < r["case"]["max_tokens"] for r in reference)


def test_a_generation_step_embeds_its_token_exactly_as_a_batch_does(models):
    """Generation feeds one token at a time through a shortcut of the adaptive input embedding: same floats, in
    the head cluster and in both tail clusters."""
    output = models["decoder-a2"].decoder.output
    id_of_rank = torch.argsort(output.rank_of_id)
    for rank in (0, 7, 99, 100, 555, 999, 1000, 31337, 50265):
        x = torch.tensor([[int(id_of_rank[rank])]])
        with torch.no_grad():
            one = output.embed(x)
        batched = output.embed(torch.cat([x, x], 1))[:, :1].detach()  # the per-cluster path, with gradients on
        assert one.shape == batched.shape == (1, 1, 32)
        assert torch.equal(one, batched), rank


def spec_sample_token(scores, temperature, top_p, generator) -> int:
    """The sampling rule, written as plainly as possible (see tinystories.generate.NextToken): the specification."""
    s = scores.float().numpy()
    if temperature < 1e-6:
        return int(np.argmax(s))  # the first (lowest id) of the best
    w = np.exp((s.astype(np.float64) - s.max()) / temperature)
    z = float(w.sum())
    order = np.argsort(-s, kind="stable")  # descending; ties: lower id first
    cum = np.cumsum(w[order])
    keep = np.concatenate([[True], cum[:-1] < top_p * z])
    kept = w[order][keep]
    return int(order[int(torch.multinomial(torch.from_numpy(kept / kept.sum()), 1, generator=generator))])


def logits_like(kind: str, trial: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(trial)
    x = torch.randn(50266, generator=g)
    x = {"peaked": x * 3, "very-peaked": x * 8, "flat": x * 0.1, "ties": (x * 3).round(decimals=1)}[kind]
    x = torch.log_softmax(x, -1)
    x[50257:] = float("-inf")  # banned special tokens, as stream_story masks them
    return x


@pytest.mark.parametrize("kind", ["peaked", "very-peaked", "flat", "ties"])
def test_fast_top_p_draws_exactly_what_the_spec_draws(kind):
    """Same token and the same generator state afterwards (so the rest of the story is the same too)."""
    for trial in range(4):
        logits = logits_like(kind, trial)
        for temperature, top_p in [(1.0, 0.9), (1.0, 0.5), (0.7, 0.95), (1.3, 0.9), (1.0, 0.0), (1.0, 0.997),
                                   (1.0, 1.0), (0.0, 0.9)]:
            fast, full = torch.Generator().manual_seed(trial), torch.Generator().manual_seed(trial)
            assert gen.sample_token(logits, temperature, top_p, fast) == spec_sample_token(
                logits, temperature, top_p, full), (kind, trial, temperature, top_p)
            assert torch.equal(fast.get_state(), full.get_state())


def test_only_a_candidate_set_is_sorted_for_a_peaked_distribution(monkeypatch):
    """Otherwise the equivalence above would hold trivially, by always sorting everything."""
    sorts = []
    real_argsort = np.argsort
    monkeypatch.setattr(np, "argsort", lambda a, *args, **k: sorts.append(np.size(a)) or real_argsort(a, *args, **k))
    gen.sample_token(logits_like("very-peaked", 0), 1.0, 0.9, torch.Generator().manual_seed(0))
    assert sorts and max(sorts) < 1000


def adaptive_draws(model, settings, steps=40, force_full=False):
    """Tokens drawn step by step from the model's distributions, under stream_story's adjustments; and how many
    tail clusters each draw computed."""
    output = model.decoder.output
    g = torch.Generator().manual_seed(1)
    hs = torch.randn(steps, output.asm.in_features, generator=g) * 3
    rows = output.asm.head.weight[: output.cutoffs[0]].detach()
    for h in hs[::2]:  # every other step peaked like a trained model's: a few head tokens far ahead
        for r in torch.randint(0, len(rows), (3,), generator=g):
            h += float(torch.empty(()).uniform_(3, 10, generator=g)) * rows[r] / rows[r].norm() ** 2
    tokens, computed = [], []
    for i, h in enumerate(hs):
        with torch.inference_mode():
            head = output.head_log_probs(h[None])
        dist = gen._adaptive_next_token(output, h[None], head, model.decoder.linear)
        dist.adjust(gen._BANNED, float("-inf"))
        if i % 3 == 0:
            dist.adjust(gen.EOS_ID, 0.1 * i)
        if force_full:
            dist.scores()
        tokens.append(dist.sample(settings[0], settings[1], torch.Generator().manual_seed(i)))
        computed.append(sum(b.scores is not None for b in dist.blocks) - 1)
    return tokens, computed


@pytest.mark.parametrize("settings", [(0.8, 0.9), (1.0, 0.9), (0.5, 0.5), (1.3, 0.95), (1.0, 1.0), (0.0, 0.9),
                                      (1.0, 0.0)])
def test_tail_clusters_computed_only_when_needed_change_no_draw(models, settings):
    """The lazy distribution draws what the fully computed one draws; for a peaked model at the default
    settings it usually skips the tail clusters (so the laziness is real and this test can fail)."""
    model = models["decoder-a2-sharp"]
    lazy, computed = adaptive_draws(model, settings)
    full, _ = adaptive_draws(model, settings, force_full=True)
    assert lazy == full
    if settings == (0.8, 0.9):  # both paths taken
        assert computed.count(0) >= len(computed) // 4 and max(computed) == 2, computed


def two_clusters(head: dict, tail: dict, vocab: int = 3000):
    """A distribution over `vocab` ids split into a head block (ids < 1000) and a tail block: the given
    probabilities, the rest of each block's mass spread evenly over its other ids. Returns (dist, full scores)."""
    ids = [np.arange(0, 1000), np.arange(1000, vocab)]
    blocks = []
    for block_ids, probs in ((ids[0], head), (ids[1], tail)):
        p = torch.zeros(len(block_ids), dtype=torch.float64)
        for i, q in probs.items():
            p[i - int(block_ids[0])] = q
        blocks.append(p)
    rest = 1 - float(blocks[0].sum() + blocks[1].sum())
    blocks[0][blocks[0] == 0] = rest / int((blocks[0] == 0).sum())
    lp = [b.log().float() for b in blocks]
    full = torch.cat(lp)
    make = lambda: gen.NextToken(gen._Layout(ids), [gen._Block(lambda: lp[0]),
                                                     gen._Block(lambda: lp[1], float(lp[1].exp().sum().log()))])
    return make, full


@pytest.mark.parametrize("name, head, tail, temperature, top_p", [
    # a tail token more probable than the nucleus's last head token, though the mass check alone would pass
    ("outranks", {0: 0.3, 1: 0.25}, {1500: 0.28}, 1.0, 0.5),
    # many small tail tokens weigh far more than their cluster's bound suggests at temperature > 1
    ("heats up", {0: 0.9}, {i: 1e-4 for i in range(1000, 2000)}, 1.5, 0.8),
    # nothing in the tail matters
    ("irrelevant", {0: 0.7, 1: 0.25}, {1500: 0.001}, 0.8, 0.9),
])
def test_bounds_decide_exactly_when_they_can(name, head, tail, temperature, top_p):
    make, full = two_clusters(head, tail)
    for seed in range(30):
        lazy = make()
        got = lazy.sample(temperature, top_p, torch.Generator().manual_seed(seed))
        assert got == spec_sample_token(full, temperature, top_p, torch.Generator().manual_seed(seed)), (name, seed)
    assert (lazy.blocks[1].scores is None) == (name == "irrelevant")


def test_a_banned_token_is_never_drawn_even_from_a_tail_cluster(models):
    output = models["decoder-a2"].decoder.output
    h = torch.zeros(1, output.asm.in_features)
    with torch.inference_mode():
        head = output.head_log_probs(h)
    dist = gen._adaptive_next_token(output, h, head, models["decoder-a2"].decoder.linear)
    allowed = [0, 1]  # flat distribution: ban all but two ids, wherever their clusters are
    dist.adjust(tuple(i for i in range(50266) if i not in allowed), float("-inf"))
    draws = {dist.sample(1.0, 1.0, torch.Generator().manual_seed(s)) for s in range(20)}
    assert draws == set(allowed)


def test_streamed_text_is_what_the_tokenizer_decodes(tokenizer):
    """Byte by byte, including characters split across tokens and invalid UTF-8 (ids 0-255 are single bytes)."""
    assert gen._StoryText(tokenizer).byte_level  # the fast path is the one in use
    rng = np.random.default_rng(0)
    multi_byte = tokenizer.encode("é ü 你好 🙂 ビ — “quotes”", add_special_tokens=False)
    for trial in range(150):
        n = int(rng.integers(1, 25))
        pools = [rng.integers(0, 256, n), rng.integers(0, 50257, n), rng.choice(multi_byte, n)]
        ids = [int(pools[int(rng.integers(0, 3))][i]) for i in range(n)]
        text, story = gen._StoryText(tokenizer), []
        for t in ids:
            story.append(t)
            assert text.append(t, story) == tokenizer.decode(story), story


if __name__ == "__main__":
    from tinystories.tokenizer import build_tokenizer

    torch.set_num_threads(1)
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    rows = record(build_tokenizer())
    REFERENCE.write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")
    print(f"wrote {REFERENCE}")
