"""Generation is exactly reproducible: a fixed seed gives the very story recorded in
tests/fixtures/generation_reference.json, token for token and stream step for stream step.

The reference was recorded with the straightforward generation code (a full softmax, a full sort of all 50,266
probabilities for top-p, the whole story re-decoded by the tokenizer after every token), before generation was
made fast; so these tests prove that the speed-ups changed no story. Regenerate the file only when the sampling
rule itself changes on purpose:

    python tests/test_generate_reference.py
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
    models = {}
    out = []
    for case in CASES:
        model = models.get(case["model"]) or models.setdefault(case["model"], make_model(case["model"], tokenizer))
        out.append(dict(case=case, **run_case(model, case)))
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


if __name__ == "__main__":
    from tinystories.tokenizer import build_tokenizer

    torch.set_num_threads(1)
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    rows = record(build_tokenizer())
    REFERENCE.write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")
    print(f"wrote {REFERENCE}")
