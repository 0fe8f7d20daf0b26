"""Tag adherence: does asking for a tag make the model write stories that carry it?

For each tag T the model writes `samples_per_tag` pairs of stories. Pair i draws a set S of other tags (each of
the five others independently with probability `other_tag_prob`, from a seeded RNG) and one sampling seed;
its "asked" story is generated with tags S + {T}, its "not asked" story with S alone, under the same seed and
sampling settings. The two stories of a pair differ only in whether T was requested, so

    lift(T) = asked_rate(T) - not_asked_rate(T)

(the fraction of asked stories the tag detector calls T, minus that of not-asked stories) measures what the tag
token does, not what the model writes anyway (many untagged stories show some conflict). mean_lift averages the
six. A model that ignores its tags scores 0 on every tag; one that always carries out its tags, and never
writes T unasked, scores 1. The detector's mean probability of T in each group is reported too
(asked_prob, not_asked_prob): smoother than the rates when samples_per_tag is small.

    python -m tinystories.evaluate --model checkpoints/approach2 --tag-adherence --samples-per-tag 8 --seed 0
"""
from __future__ import annotations

import sys

import numpy as np
from tqdm.auto import tqdm

from .generate import MAX_TOKENS, check_settings, generate
from .tokenizer import TAGS

OTHER_TAG_PROB = 0.25  # about 1.25 other tags a prompt: stories in the training data carry 1.6 tags on average


def adherence_prompts(samples_per_tag: int, seed: int = 0, other_tag_prob: float = OTHER_TAG_PROB) -> list[dict]:
    """The paired prompts: for each tag and pair, {'tag', 'asked' tags, 'not_asked' tags, 'seed'}.

    Tag T's pairs depend only on (seed, T's index), so they do not change when samples_per_tag grows: the first
    pairs of a larger run are those of a smaller one.
    """
    prompts = []
    for j, tag in enumerate(TAGS):
        rng = np.random.default_rng([seed, j])
        others = [t for t in TAGS if t != tag]
        for _ in range(samples_per_tag):
            extra = [t for t in others if rng.random() < other_tag_prob]
            story_seed = int(rng.integers(2**31))
            prompts.append({"tag": tag, "asked": sorted(extra + [tag], key=TAGS.index), "not_asked": extra,
                            "seed": story_seed})
    return prompts


def lift_summary(asked: dict, not_asked: dict, asked_prob: dict | None = None,
                 not_asked_prob: dict | None = None) -> dict:
    """Per tag asked_rate, not_asked_rate and lift (= asked - not asked), plus mean_lift over the tags.

    asked / not_asked: tag -> list of bools (was the tag detected in each story). The *_prob arguments
    (tag -> list of detector probabilities) add asked_prob / not_asked_prob when given.
    """
    out = {}
    for tag in TAGS:
        a, n = asked[tag], not_asked[tag]
        row = {"asked_rate": float(np.mean(a)), "not_asked_rate": float(np.mean(n))}
        row["lift"] = row["asked_rate"] - row["not_asked_rate"]
        if asked_prob is not None and not_asked_prob is not None:
            row["asked_prob"] = float(np.mean(asked_prob[tag]))
            row["not_asked_prob"] = float(np.mean(not_asked_prob[tag]))
        out[tag] = {k: round(v, 4) for k, v in row.items()} | {"stories": len(a) + len(n)}
    out["mean_lift"] = round(float(np.mean([out[t]["lift"] for t in TAGS])), 4)
    return out


def tag_adherence(model, detector=None, samples_per_tag: int = 8, seed: int = 0, *, temperature: float = 1.0,
                  top_p: float = 0.9, max_tokens: int = MAX_TOKENS, eos_bias_after: int = 200,
                  other_tag_prob: float = OTHER_TAG_PROB, progress: bool = True, samples: list | None = None) -> dict:
    """Generate the paired stories (see the module doc), detect their tags, return lift_summary + 'settings'.

    Deterministic for a fixed seed. `samples`: a list that receives one record per generated story.
    """
    from .detector import bundled_detector

    if int(samples_per_tag) < 1:
        raise ValueError(f"samples_per_tag must be at least 1, got {samples_per_tag!r}")
    detector = detector or bundled_detector()
    settings = check_settings(temperature, top_p, max_tokens, eos_bias_after, 0 if seed is None else seed)
    prompts = adherence_prompts(samples_per_tag, settings["seed"], other_tag_prob)
    jobs = [(p, group) for p in prompts for group in ("asked", "not_asked")]
    texts = []
    bar = tqdm(jobs, desc="tag adherence", unit="story", disable=not progress, file=sys.stderr)
    for p, group in bar:
        bar.set_postfix_str(f"{p['tag']} {group}")
        texts.append(generate(model, p[group], temperature=settings["temperature"], top_p=settings["top_p"],
                              max_tokens=settings["max_tokens"], eos_bias_after=settings["eos_bias_after"],
                              seed=p["seed"]))
    probs = detector.predict_proba(texts) if texts else np.zeros((0, len(TAGS)))
    detected = probs >= detector.thresholds
    hits = {g: {t: [] for t in TAGS} for g in ("asked", "not_asked")}
    prob = {g: {t: [] for t in TAGS} for g in ("asked", "not_asked")}
    for k, (p, group) in enumerate(jobs):
        j = TAGS.index(p["tag"])
        hits[group][p["tag"]].append(bool(detected[k, j]))
        prob[group][p["tag"]].append(float(probs[k, j]))
        if samples is not None:
            samples.append({"tag": p["tag"], "group": group, "tags": p[group], "seed": p["seed"], "story": texts[k],
                            "detected": [t for t, d in zip(TAGS, detected[k]) if d]})
    out = lift_summary(hits["asked"], hits["not_asked"], prob["asked"], prob["not_asked"])
    out["settings"] = {"model": str(getattr(model, "source", "")), "samples_per_tag": samples_per_tag,
                       "other_tag_prob": other_tag_prob, **settings}
    return out


# ----------------------------------------------------------------------------------------------- CLI (evaluate.py)


def add_arguments(p) -> None:
    """The options `python -m tinystories.evaluate` takes for --detector-report and --tag-adherence."""
    g = p.add_argument_group("tag detector and tag adherence")
    g.add_argument("--detector-report", action="store_true",
                   help="score the tag detector against the stories' own tags (--data, --split); no model needed")
    g.add_argument("--tag-adherence", action="store_true",
                   help="generate stories with and without each tag (--model); print the detector's lift per tag")
    g.add_argument("--detector", default=None, help="tag detector folder (default: checkpoints/tag_detector)")
    g.add_argument("--samples-per-tag", type=int, default=8, help="story pairs (asked / not asked) per tag")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-p", type=float, default=0.9)
    g.add_argument("--eos-bias-after", type=int, default=200)
    g.add_argument("--samples-out", default=None, help="with --tag-adherence: write every story to this .jsonl")


def run(args) -> int:
    """--detector-report or --tag-adherence: the JSON result is the last line on stdout."""
    import json

    from .data import DataError, load_stories
    from .detector import DetectorError, TagDetector, report_on
    from .generate import GenerationError
    from .hub import CheckpointError, load_model

    try:
        detector = TagDetector.load(args.detector)
        if args.detector_report:
            stories, report = load_stories(args.data, args.split, args.max_stories)
            print(report, file=sys.stderr)
            print(json.dumps(report_on(detector, stories)))
            return 0
        model = load_model(args.model)
        samples = [] if args.samples_out else None
        result = tag_adherence(model, detector, args.samples_per_tag, args.seed, temperature=args.temperature,
                               top_p=args.top_p, max_tokens=args.max_tokens, eos_bias_after=args.eos_bias_after,
                               samples=samples)
    except (DataError, DetectorError, CheckpointError, GenerationError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if samples is not None:
        with open(args.samples_out, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(s) + "\n" for s in samples)
    print(json.dumps(result))
    return 0
