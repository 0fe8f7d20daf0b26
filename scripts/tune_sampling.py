"""Pick sampling defaults for a checkpoint by measurement, not taste.

For each temperature (top-p fixed), generate stories with fixed seeds and random tags, then report:
  judge_nats_per_token  how likely another model finds the text (lower = more fluent; too low = dull/repetitive)
  distinct3             fraction of distinct word 3-grams per story (repetition; real stories: see `reference`)
  ended                 fraction of stories that ended with [EOS] before the 350-token cap
Usage: python scripts/tune_sampling.py --model checkpoints/approach2 --judge checkpoints/approach1
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tinystories import TAGS, generate, load_model, load_stories  # noqa: E402
from tinystories.data import Story, TokenizedStories  # noqa: E402
from tinystories.evaluate import nats_per_story  # noqa: E402


def distinct3(text: str) -> float:
    w = text.split()
    grams = list(zip(w, w[1:], w[2:]))
    return len(set(grams)) / max(1, len(grams))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--judge", required=True)
    p.add_argument("--temperatures", default="0.6,0.7,0.8,0.9,1.0")
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--stories", type=int, default=8)
    p.add_argument("--reference", default="../shared/data", help="real stories for the distinct-3 reference")
    args = p.parse_args()
    model, judge = load_model(args.model), load_model(args.judge)
    rng = random.Random(0)
    tag_sets = [[t for t in TAGS if rng.random() < 0.3] for _ in range(args.stories)]
    rows = {}
    for t in (float(x) for x in args.temperatures.split(",")):
        texts = [generate(model, tags, temperature=t, top_p=args.top_p, seed=i) for i, tags in enumerate(tag_sets)]
        lengths = [len(model.tokenizer.encode(x)) for x in texts]
        stories = [Story(x, tags) for x, tags in zip(texts, tag_sets)]
        scored = nats_per_story(judge, TokenizedStories.build(judge.tokenizer, stories), progress=False)
        rows[t] = dict(judge_nats_per_token=round(scored["nats_per_token"], 3),
                       distinct3=round(float(np.mean([distinct3(x) for x in texts])), 3),
                       ended=round(float(np.mean([n < 350 for n in lengths])), 2),
                       mean_tokens=round(float(np.mean(lengths)), 1))
        print(t, rows[t], file=sys.stderr, flush=True)
    try:
        real, _ = load_stories(args.reference, "valid", 100)
        rows["reference"] = dict(distinct3=round(float(np.mean([distinct3(s.text) for s in real])), 3))
    except Exception as e:  # the reference corpus is optional
        print(f"no reference: {e}", file=sys.stderr)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
