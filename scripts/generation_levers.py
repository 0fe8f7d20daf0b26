"""What each generation speed-up is worth: tokens/s of a 350-token story with each lever turned off in turn.

    python scripts/generation_levers.py [--model checkpoints/approach2] [--threads 1] [--rounds 5]

Every variant runs in the same process, interleaved round by round, and the median is printed, so a noisy
machine (a shared cloud CPU) shifts all of them alike. Every variant generates the very same story (checked):
the levers change speed, never the output.

  all levers        what stream_story does
  all clusters      every adaptive-softmax cluster computed at every token (no lazy tail clusters)
  float32 weights   the matrices read as float32 (no float16 compact copies)
  neither           both of the above
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

gen = importlib.import_module("tinystories.generate")
from tinystories.hub import load_model  # noqa: E402
from tinystories.model import CompactWeights  # noqa: E402


@contextlib.contextmanager
def lever(all_clusters: bool = False, float32: bool = False):
    real_sample, real_copy = gen.NextToken.sample, CompactWeights._exact_copy
    if all_clusters:
        gen.NextToken.sample = lambda self, *a: (self.scores(), real_sample(self, *a))[1]
    if float32:
        CompactWeights._exact_copy = lambda self, w: None
    try:
        yield
    finally:
        gen.NextToken.sample, CompactWeights._exact_copy = real_sample, real_copy


VARIANTS = {"all levers": {}, "all clusters": dict(all_clusters=True), "float32 weights": dict(float32=True),
            "neither": dict(all_clusters=True, float32=True)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "checkpoints" / "approach2"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--temperature", type=float, default=0.8)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    tokens = 350
    stories, speeds = {}, {name: [] for name in VARIANTS}
    settings = dict(seed=0, max_tokens=tokens, eos_bias_after=0, temperature=args.temperature)
    real_step = gen.EOS_BIAS_STEP
    gen.EOS_BIAS_STEP = -1e9  # no [EOS]: every story is exactly `tokens` long
    try:
        for r in range(args.rounds + 1):  # round 0 warms up
            for name, kw in VARIANTS.items():
                # a float32 variant needs a model that has made no compact copies yet (they are cached per model)
                m = load_model(args.model) if kw.get("float32") else model
                with lever(**kw):
                    t0 = time.perf_counter()
                    story = gen.generate(m, ["Dialogue", "Twist"], **settings)
                    dt = time.perf_counter() - t0
                stories.setdefault(name, story)
                assert story == stories[name] == stories["all levers"], f"{name} changed the story"
                if r:
                    speeds[name].append(tokens / dt)
    finally:
        gen.EOS_BIAS_STEP = real_step
    base = statistics.median(speeds["neither"])
    print(f"{args.model}, {args.threads} thread(s), {args.rounds} rounds, 350-token story, median tokens/s:")
    for name, s in speeds.items():
        med = statistics.median(s)
        print(f"  {name:16s} {med:7.1f}  ({med / base:.2f}x 'neither'; min {min(s):.1f}, max {max(s):.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
