"""What each generation speed-up is worth: tokens/s of a 350-token story with each lever turned off in turn.

    python scripts/generation_levers.py [--model checkpoints/approach2] [--threads 1] [--rounds 5]

Every variant runs in the same process, interleaved round by round, and the median is printed, so a noisy
machine (a shared cloud CPU) shifts all of them alike. Every variant generates the very same story (checked):
the levers change speed, never the output.

  all levers        what stream_story does
  python step       a token through Decoder._step's torch operations (products still native), not the native step
  no native code    no tinystories.kernels at all: the step, and one-row products, through torch
  all clusters      every adaptive-softmax cluster computed at every token (no lazy tail clusters)
  float32 weights   the matrices read as float32 (no float16 compact copies)
  module step       a token goes through the decoder's nn.Modules (forward's general path), not Decoder._step
  multinomial       the draw by torch.multinomial itself, with its per-call checks
  none              all of the above

Every variant generates the very same story, except that native code (tinystories.kernels) rounds differently
from torch in the last bits of float32; the script reports whether that changed the story.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

gen = importlib.import_module("tinystories.generate")
from tinystories.hub import load_model  # noqa: E402
from tinystories.model import CompactWeights, Decoder  # noqa: E402


def module_step(self, idx, cache):
    """Decoder.forward's general path for one cached token: every block as an nn.Module call."""
    return self._through_modules(idx, cache, cache.length)


def torch_multinomial(p, generator):
    return int(torch.multinomial(torch.from_numpy(p), 1, generator=generator))


@contextlib.contextmanager
def lever(all_clusters=False, float32=False, modules=False, multinomial=False, python_step=False, no_native=False):
    """These levers turned off until the block ends (mock.patch puts every attribute back as it was)."""
    full_sample = gen.NextToken.sample
    off = [
        (all_clusters, gen.NextToken, "sample", lambda self, *a: (self.scores(), full_sample(self, *a))[1]),
        (float32, CompactWeights, "_exact_copy", lambda self, w: None),
        (modules, Decoder, "_step", module_step),
        (multinomial, gen, "_multinomial", torch_multinomial),
        (python_step or no_native, Decoder, "_native_plan", lambda self, blocks, ln_f: None),
        (no_native, CompactWeights, "_native", lambda *args: None),
    ]
    with contextlib.ExitStack() as stack:
        for wanted, owner, name, replacement in off:
            if wanted:
                stack.enter_context(mock.patch.object(owner, name, replacement))
        yield


VARIANTS = {"all levers": {}, "python step": dict(python_step=True), "no native code": dict(no_native=True),
            "all clusters": dict(all_clusters=True), "float32 weights": dict(float32=True),
            "module step": dict(modules=True), "multinomial": dict(multinomial=True),
            "none": dict(all_clusters=True, float32=True, modules=True, multinomial=True, no_native=True)}


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
                # these variants need a model that has prepared no products yet (they are cached per model)
                m = load_model(args.model) if {"float32", "python_step", "no_native"} & set(kw) else model
                with lever(**kw):
                    t0 = time.perf_counter()
                    story = gen.generate(m, ["Dialogue", "Twist"], **settings)
                    dt = time.perf_counter() - t0
                stories.setdefault(name, story)
                assert story == stories[name], f"{name} gave another story in another round"
                if not {"python_step", "no_native"} & set(kw):
                    assert story == stories["all levers"], f"{name} changed the story"
                if r:
                    speeds[name].append(tokens / dt)
    finally:
        gen.EOS_BIAS_STEP = real_step
    same = stories["python step"] == stories["no native code"] == stories["all levers"] == stories["none"]
    print("without native code: " + ("the same story" if same else "another story (float32 rounding)"))
    base = statistics.median(speeds["none"])
    print(f"{args.model}, {args.threads} thread(s), {args.rounds} rounds, 350-token story, median tokens/s:")
    for name, s in speeds.items():
        med = statistics.median(s)
        print(f"  {name:16s} {med:7.1f}  ({med / base:.2f}x 'none'; min {min(s):.1f}, max {max(s):.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
