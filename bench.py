"""Throughput of training and generation, both architectures, measured in one run on one machine.

    python bench.py                  # a few minutes on a 2-core CPU
    python bench.py --quick          # under 2 minutes
    python bench.py --json           # ... and every number as one JSON object on the last line
    python bench.py --device cuda    # bf16 autocast for training, and MFU

Training: predicted tokens/s of forward + backward + optimizer step, each arch with its own run's settings.
  decoder: the bundled approach-2 size (train.py PRESETS["approach2"]), batches of 32 windows x 64 tokens in
           which every position predicts its next token (AdamW, gradient clipping, as train.py does).
  seed:    the seed's architecture at the same d_model, batches of 64 windows x 50 tokens in which each window
           predicts ONE token, its last (Adam, as the seed's run).
  Token ids are drawn from a Zipf law over frequency ranks (like text: most targets in the adaptive softmax's
  head cluster), with a fixed seed.
Generation: tokens/s of a whole story of exactly 350 tokens (the cap; [EOS] is suppressed so no story ends
  early) through the public `stream_story`, and the time to its first token, as the CLI and the app generate:
  temperature 0.8, top-p 0.9, 1 torch thread per story (tinystories.generate.generation_threads); the median of
  several stories (5 with --quick, 15 without), with their range. On a CPU the decoder is measured on all
  threads too. decoder: the bundled checkpoint (checkpoints/approach2) when it loads, else random weights of
  that size; it reads its window through a KV cache. seed: random weights; every token re-reads the whole
  50-token window, so its cost per token is the same at every length and a shorter story gives the same
  tokens/s.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tinystories import kernels
from tinystories.model import TinyStoriesConfig, TinyStoriesModel
from tinystories.tokenizer import GPT2_VOCAB_SIZE

ROOT = Path(__file__).resolve().parent
BUNDLED = ROOT / "checkpoints" / "approach2"
STORY_TOKENS = 350
TEMPERATURE, TOP_P = 0.8, 0.9  # the app's and the CLI's defaults
# seconds of training per arch, decoder stories (tokens/s: the median story's), seed story tokens
RUNS = {"quick": dict(train_seconds=8.0, stories=5, seed_tokens=40),
        "full": dict(train_seconds=30.0, stories=15, seed_tokens=120)}
# Dense bf16 peak of common GPUs (FLOP/s), for MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12,
              "T4": 65e12}

gen = importlib.import_module("tinystories.generate")  # the module (the package exports a function `generate`)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="shorter measurements: under 2 minutes")
    p.add_argument("--json", action="store_true", help="print all results as one JSON object on the last line")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads for training (default: torch's, all cores)")
    p.add_argument("--generation-threads", type=int, default=None, metavar="N",
                   help="torch CPU threads for generation (default: the CLI's and the app's, $TINYSTORIES_THREADS "
                        "else 1); on a CPU the decoder is also measured on all --threads")
    p.add_argument("--model", default=None, help=f"checkpoint for the decoder's generation (default: {BUNDLED})")
    return p.parse_args(argv)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    return torch.device(name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def configs() -> dict[str, TinyStoriesConfig]:
    """The decoder of the bundled approach-2 run, and the seed's architecture at the same width."""
    from train import DEFAULTS, PRESETS

    p = {**DEFAULTS, **PRESETS["approach2"]}
    decoder = TinyStoriesConfig(arch="decoder", approach=2, context=p["context"], d_model=p["d_model"],
                                n_heads=p["n_heads"], n_layers=p["n_layers"], d_ff=p["d_ff"], dropout=p["dropout"],
                                cutoffs=tuple(int(c) for c in str(p["cutoffs"]).split(",") if c.strip()))
    s = PRESETS["seed"]
    seed = TinyStoriesConfig(arch="seed", approach=2, context=s["context"], d_model=p["d_model"], dropout=s["dropout"])
    return {"seed": seed, "decoder": decoder}


# ----------------------------------------------------------------------------------------------- training


def zipf_ids(rng: np.random.Generator, shape) -> torch.Tensor:
    ranks = np.arange(1, GPT2_VOCAB_SIZE + 1, dtype=np.float64)
    p = ranks**-1.1
    return torch.from_numpy(rng.choice(GPT2_VOCAB_SIZE, size=shape, p=p / p.sum()))


def train_batch(cfg: TinyStoriesConfig, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    if cfg.arch == "seed":  # 64 windows, each predicting the one token after it
        x = zipf_ids(rng, (64, cfg.context))
        return x, zipf_ids(rng, (64,))
    seq = zipf_ids(rng, (32, cfg.context + 1))  # 32 full windows: every position predicts the next token
    return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()


def flops_per_token(cfg: TinyStoriesConfig, model: TinyStoriesModel) -> float:
    """Training FLOPs per predicted token (forward + backward = 3x forward; a multiply-add is 2 FLOPs)."""
    d, T = cfg.d_model, cfg.context
    if cfg.arch == "seed":  # a whole window per predicted token: every layer at every position, the head once
        body = sum(p.numel() for p in model.seed.groups.parameters())
        n_layers = len(cfg.group_ff) * cfg.layers_per_group
        return 6 * body * T + 12 * n_layers * d * T * T + 6 * d * cfg.vocab_size
    # per position: the layers, the adaptive softmax's head cluster (most targets), causal attention (~T/2 keys)
    body = sum(p.numel() for p in model.decoder.blocks.parameters())
    head = model.decoder.output.asm.head.weight.numel() if cfg.cutoffs else d * cfg.vocab_size
    return 6 * (body + head) + 6 * cfg.n_layers * d * T


def bench_training(cfg: TinyStoriesConfig, device: torch.device, seconds: float, say) -> dict:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = TinyStoriesModel(cfg).to(device).train()
    if cfg.arch == "seed":
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=device.type == "cuda")
        clip = 0.0
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.1,
                                fused=device.type == "cuda")
        clip = 1.0
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())
    batches = [tuple(t.to(device) for t in train_batch(cfg, rng)) for _ in range(4)]

    def step(i: int) -> int:
        x, y = batches[i % len(batches)]
        with autocast:
            loss = model(x, y)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return int((y >= 0).sum())

    for i in range(2):  # warm-up: allocator, kernels, optimizer state
        step(i)
    sync(device)
    t0, steps, tokens = time.perf_counter(), 0, 0
    while steps < 3 or time.perf_counter() - t0 < seconds:
        tokens += step(steps)
        steps += 1
    sync(device)
    dt = time.perf_counter() - t0
    out = {"tokens_per_s": tokens / dt, "step_ms": 1000 * dt / steps, "steps": steps,
           "tokens_per_step": tokens // steps, "params": model.num_params()}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
        if peak:
            out["mfu"] = flops_per_token(cfg, model) * out["tokens_per_s"] / peak
    say(f"train {cfg.arch:8s} {out['tokens_per_s']:10,.0f} predicted tokens/s   ({steps} steps of "
        f"{out['tokens_per_step']} tokens, {out['step_ms']:.0f} ms/step, {out['params']:,} params"
        + (f", MFU {out['mfu']:.1%}" if "mfu" in out else "") + ")")
    return out


# ----------------------------------------------------------------------------------------------- generation


def generation_model(arch: str, cfgs: dict, source: str | None, say):
    """The decoder from the bundled (or given) checkpoint when it loads, else random weights; seed: random."""
    from tinystories.hub import CheckpointError, load_model
    from tinystories.tokenizer import build_tokenizer

    if arch == "decoder":
        try:
            model = load_model(source or BUNDLED)
            return model, f"{source or BUNDLED.relative_to(ROOT)} ({model.num_params():,} params)"
        except (CheckpointError, OSError, ValueError) as e:
            say(f"(no usable checkpoint for the decoder: {e}; random weights)")
    torch.manual_seed(0)
    model = TinyStoriesModel(cfgs[arch]).eval()
    model.tokenizer = build_tokenizer()
    return model, f"random weights ({model.num_params():,} params)"


@contextlib.contextmanager
def no_eos():
    """[EOS] never sampled: a -1e9 nats bias from the first token, so every story is max_tokens long."""
    real = gen.EOS_BIAS_STEP
    gen.EOS_BIAS_STEP = -1e9
    try:
        yield dict(eos_bias_after=0)
    finally:
        gen.EOS_BIAS_STEP = real


def bench_generation(model, tokens: int, stories: int, device: torch.device) -> dict:
    model.to(device).eval()
    tags = ["Dialogue", "Twist"]
    with no_eos() as settings:
        settings.update(temperature=TEMPERATURE, top_p=TOP_P)
        for _ in gen.stream_story(model, tags, seed=1234, max_tokens=8, **settings):  # warm-up
            pass
        first, speeds = [], []
        for seed in range(stories):
            t0 = time.perf_counter()
            it = gen.stream_story(model, tags, seed=seed, max_tokens=tokens, **settings)
            next(it)
            first.append(time.perf_counter() - t0)
            for _ in it:
                pass
            speeds.append(tokens / (time.perf_counter() - t0))  # exactly `tokens`: no [EOS] ends a story early
    # The median story: one slow moment of a shared machine moves it less than it moves a total.
    return {"tokens_per_s": statistics.median(speeds), "first_token_ms": 1000 * statistics.median(first),
            "story_tokens": tokens, "stories": stories, "tokens_per_s_range": (min(speeds), max(speeds))}


def peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    try:
        gen_threads = gen.generation_threads(args.generation_threads)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    device = pick_device(args.device)
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else print
    step = kernels.describe() if device.type == "cpu" else "torch"
    say(f"device {device}, torch {torch.__version__}, {threads} CPU threads ({gen_threads} to generate), "
        f"{platform.processor() or platform.machine()}{' (quick)' if args.quick else ''}; generation steps: {step}")
    cfgs = configs()
    run = RUNS["quick" if args.quick else "full"]
    t_start = time.perf_counter()

    # Generation first, so that the peak RSS it reaches is its own (training's is far larger).
    generation, sources = {}, {}
    plan = {"decoder": (STORY_TOKENS, run["stories"]), "seed": (run["seed_tokens"], 1)}
    for arch, (tokens, stories) in plan.items():
        model, sources[arch] = generation_model(arch, cfgs, args.model, say)
        torch.set_num_threads(gen_threads)  # as `python -m tinystories.generate` and the app generate
        generation[arch] = g = bench_generation(model, tokens, stories, device)
        torch.set_num_threads(threads)
        lo, hi = g["tokens_per_s_range"]
        say(f"generate {arch:8s} {g['tokens_per_s']:8.1f} tokens/s, first token {g['first_token_ms']:6.1f} ms   "
            f"(median of {stories} x {tokens}-token story: {lo:.0f}-{hi:.0f}; {gen_threads} CPU thread(s); "
            f"{sources[arch]})")
        if arch == "decoder" and device.type == "cpu" and threads != gen_threads:
            g["all_threads"] = a = bench_generation(model, tokens, stories, device)
            say(f"generate {arch:8s} {a['tokens_per_s']:8.1f} tokens/s, first token {a['first_token_ms']:6.1f} ms   "
                f"(the same on {threads} CPU threads)")
        del model
    generation_rss = peak_rss_mb()

    train = {arch: bench_training(cfgs[arch], device, run["train_seconds"], say) for arch in ("seed", "decoder")}

    result = {
        "train_tokens_per_s": {a: round(train[a]["tokens_per_s"], 1) for a in train},
        "train_speedup": round(train["decoder"]["tokens_per_s"] / train["seed"]["tokens_per_s"], 2),
        "generate_tokens_per_s": {a: round(generation[a]["tokens_per_s"], 1) for a in generation},
        "first_token_ms": {a: round(generation[a]["first_token_ms"], 1) for a in generation},
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "generation_peak_rss_mb": round(generation_rss, 1),
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "threads": threads,
        "generation_threads": gen_threads,
        "generation_step": step,
        "torch": torch.__version__,
        "quick": args.quick,
        "params": {a: train[a]["params"] for a in train},
        "generation_models": sources,
        "story_tokens": {a: generation[a]["story_tokens"] for a in generation},
        "stories": {a: generation[a]["stories"] for a in generation},
        "generate_tokens_per_s_range": {a: [round(v, 1) for v in generation[a]["tokens_per_s_range"]]
                                        for a in generation},
        "generation_settings": {"temperature": TEMPERATURE, "top_p": TOP_P},
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    if "all_threads" in generation["decoder"]:
        a = generation["decoder"]["all_threads"]
        result["decoder_generation_all_threads"] = {"threads": threads, "tokens_per_s": round(a["tokens_per_s"], 1),
                                                    "first_token_ms": round(a["first_token_ms"], 1)}
    if any("mfu" in t for t in train.values()):
        result["mfu"] = {a: round(train[a]["mfu"], 4) for a in train if "mfu" in train[a]}
    say(f"training: the decoder predicts {result['train_speedup']}x the tokens/s of the seed arch; peak RSS "
        f"{result['peak_rss_mb']:.0f} MB ({generation_rss:.0f} MB after generation); {result['seconds']:.0f} s")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
