"""Does the native generation step change what the model says? Nats per token of validation stories, read the
way generation reads them (token by token through the KV cache, the window moving as in stream_story), once
with native code (tinystories.kernels) and once through torch, next to evaluate.nats_per_story (batched windows).

    python scripts/native_quality.py [--model checkpoints/approach2] [--data ../shared/data] [--stories 50]

Generation and evaluation score every token in the same window, so all three should agree up to float32
rounding: the script prints each one and the largest difference of one token's log-probability.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tinystories import kernels  # noqa: E402
from tinystories.data import load_stories, prefix_and_body, tokenize_cached  # noqa: E402
from tinystories.evaluate import nats_per_story  # noqa: E402
from tinystories.hub import load_model  # noqa: E402

gen = importlib.import_module("tinystories.generate")


def generation_path_log_probs(model, data) -> np.ndarray:
    """log p(token) of every scored token of every story (story tokens, then [EOS]), read as generation reads."""
    out = []
    for i in range(len(data)):
        tags = data.tags(i)
        _, body, first = prefix_and_body(data.story_ids(i), tags, model.config.approach)
        reader = gen._Reader(model, tags)
        reader.body = body[:first]  # approach 1: [BOS] and the tags are the story's start; approach 2: nothing
        for target in body[first:]:
            out.append(float(reader.next_token().log_probs()[target]))
            reader.append(target)
    return np.array(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "checkpoints" / "approach2"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--stories", type=int, default=50)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    stories, _ = load_stories(args.data, "valid", args.stories)
    results, data = {}, None
    for name, switch in (("native", "1"), ("torch", "0")):
        os.environ[kernels.ENABLE_ENV] = switch
        kernels.reset()
        model = load_model(args.model)
        if data is None:  # both loads carry the same tokenizer files: tokenize once
            data = tokenize_cached(model.tokenizer, stories, None)
        results[name] = generation_path_log_probs(model, data)
        print(f"{name:7s} generation path: {-results[name].mean():.6f} nats/token ({kernels.describe()})")
    ev = nats_per_story(model, data, progress=False)
    print(f"evaluate (batched windows, torch): {ev['nats_per_token']:.6f} nats/token, "
          f"{len(data)} stories, {ev['tokens']} tokens (generation path: {len(results['native'])})")
    diff = np.abs(results["native"] - results["torch"])
    print(f"native vs torch, one token's log-probability: max |difference| {diff.max():.2e}, mean {diff.mean():.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
