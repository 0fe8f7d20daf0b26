"""Tag adherence of an approach-1 and an approach-2 model, side by side: a markdown table and a bar chart of lift.

    python compare_adherence.py --samples-per-tag 8 --seed 0
    -> docs/adherence.md, docs/adherence.png, docs/adherence.json; the table is printed too.

The design of the measurement (paired prompts, lift = asked rate - not-asked rate) is in tinystories/adherence.py.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tinystories.generate import MAX_TOKENS
from tinystories.tokenizer import TAGS


def markdown_table(results: dict[str, dict]) -> str:
    """One row per tag: asked rate, not-asked rate and lift of each model; the mean lift last."""
    names = list(results)
    head = "| Tag | " + " | ".join(f"{n}: asked | {n}: not asked | {n}: lift" for n in names) + " |"
    rule = "|---|" + "---:|" * (3 * len(names))
    rows = [
        f"| {tag} | " + " | ".join(
            f"{r[tag]['asked_rate']:.2f} | {r[tag]['not_asked_rate']:.2f} | {r[tag]['lift']:+.2f}"
            for r in results.values()) + " |"
        for tag in TAGS
    ]
    mean = "| **mean lift** | " + " | ".join(f" | | **{r['mean_lift']:+.2f}**" for r in results.values()) + " |"
    return "\n".join([head, rule, *rows, mean])


def bar_chart(results: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(TAGS))
    width = 0.8 / len(results)
    fig, ax = plt.subplots(figsize=(8, 4))
    for k, (name, r) in enumerate(results.items()):
        ax.bar(x + (k - (len(results) - 1) / 2) * width, [r[t]["lift"] for t in TAGS], width,
               label=f"{name} (mean {r['mean_lift']:+.2f})")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, TAGS)
    ax.set_ylabel("lift = asked rate - not-asked rate")
    ax.set_ylim(min(-0.2, ax.get_ylim()[0]), 1.0)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    from tinystories.adherence import tag_adherence
    from tinystories.detector import DEFAULT_DETECTOR, DetectorError, TagDetector
    from tinystories.hub import CheckpointError, load_model

    p = argparse.ArgumentParser(description="Compare the tag adherence of an approach-1 and an approach-2 model.")
    p.add_argument("--approach1", default="checkpoints/approach1", help="checkpoint folder or Hub repo id")
    p.add_argument("--approach2", default="checkpoints/approach2", help="checkpoint folder or Hub repo id")
    p.add_argument("--samples-per-tag", type=int, default=8, help="story pairs (asked / not asked) per tag")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--detector", default=str(DEFAULT_DETECTOR), help="tag detector folder")
    p.add_argument("--out-dir", default="docs", help="where adherence.md / .png / .json go")
    args = p.parse_args(argv)
    try:
        detector = TagDetector.load(args.detector)
        models = {"approach 1": load_model(args.approach1), "approach 2": load_model(args.approach2)}
    except (CheckpointError, DetectorError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = {}
    for name, model in models.items():
        print(f"{name}: {model.source}", file=sys.stderr)
        results[name] = tag_adherence(model, detector, args.samples_per_tag, args.seed, temperature=args.temperature,
                                      top_p=args.top_p, max_tokens=args.max_tokens)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(results)
    sources = ", ".join(f"{n} = `{m.source}`" for n, m in models.items())
    command = ("python compare_adherence.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("detector", "out_dir")))
    (out / "adherence.md").write_text(
        "# Tag adherence\n\n"
        f"Models: {sources}. {args.samples_per_tag} story pairs per tag (asked / not asked, same other tags and "
        f"seed), temperature {args.temperature}, top-p {args.top_p}, at most {args.max_tokens} tokens; tags "
        "read by the tag detector (checkpoints/tag_detector). lift = asked rate - not-asked rate; see "
        "tinystories/adherence.py for the design.\n\n"
        f"{table}\n\n![lift per tag](adherence.png)\n\nReproduce: `{command}`\n")
    (out / "adherence.json").write_text(json.dumps(results, indent=2) + "\n")
    bar_chart(results, out / "adherence.png",
              f"Tag adherence: lift per tag ({args.samples_per_tag} pairs per tag, seed {args.seed})")
    print(table)
    print(f"wrote {out / 'adherence.md'}, {out / 'adherence.png'}, {out / 'adherence.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
