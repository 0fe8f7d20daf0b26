"""The seed's metric: nats per story, the summed cross-entropy of every story token and its [EOS] given
the story's tags, under the model's own approach and context, over the full vocabulary."""
from __future__ import annotations

import json
import sys

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import TokenizedStories, WindowDataset, collate


@torch.inference_mode()
def nats_per_story(model, data: TokenizedStories, batch_size: int = 64, progress: bool = True,
                   device: str | torch.device | None = None) -> dict:
    """{'nats_per_story', 'nats_per_token', 'stories', 'tokens'} of `model` on tokenized stories."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    cfg = model.config
    ds = WindowDataset(data, cfg.arch, cfg.approach, cfg.context, score="new")
    per_story = np.zeros(len(data))
    tokens = 0
    bar = tqdm(range(0, len(ds), batch_size), desc="evaluating", unit="batch", disable=not progress, file=sys.stderr)
    for i in bar:
        idx = range(i, min(i + batch_size, len(ds)))
        x, y = collate([ds[k] for k in idx], cfg.context)
        x, y = x.to(device), y.to(device)
        lp = model.target_log_probs(x, y).double()
        lp = lp.sum(1) if lp.dim() == 2 else lp
        np.add.at(per_story, ds.story_of[idx.start : idx.stop], -lp.cpu().numpy())
        tokens += int((y >= 0).sum())
    model.train(was_training)
    n = len(data)
    return {
        "nats_per_story": float(per_story.sum() / n),
        "nats_per_token": float(per_story.sum() / max(tokens, 1)),
        "stories": n,
        "tokens": tokens,
    }


def main(argv=None) -> int:
    import argparse

    from .adherence import add_arguments as add_tag_arguments, run as run_tag_measures
    from .data import DataError, load_stories, tokenize_cached
    from .hub import CheckpointError, load_model

    p = argparse.ArgumentParser(description="Evaluate a model (nats per story, or --tag-adherence) or the tag detector.")
    p.add_argument("--model", default=None, help="checkpoint folder or Hub repo id[@revision] (default: bundled)")
    p.add_argument("--data", default="../shared/data", help="Hub dataset id or local file/folder")
    p.add_argument("--split", default="valid", choices=["train", "valid"])
    p.add_argument("--max-stories", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    add_tag_arguments(p)  # --detector-report, --tag-adherence and their settings
    args = p.parse_args(argv)
    if args.detector_report or args.tag_adherence:
        return run_tag_measures(args)
    try:
        model = load_model(args.model)
        stories, report = load_stories(args.data, args.split, args.max_stories)
    except (DataError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report, file=sys.stderr)
    data = tokenize_cached(model.tokenizer, stories, None)
    print(json.dumps(nats_per_story(model, data, args.batch_size)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
