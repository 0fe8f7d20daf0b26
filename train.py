"""Train a tag-conditioned story model.

    python train.py --preset approach2                   # the bundled approach-2 model (2-core CPU, < 60 min)
    python train.py --preset seed                        # the seed's own run: arch seed, 90k stories, 10 epochs
    python train.py --data ../shared/data --approach 1 --arch decoder --epochs 2 --out checkpoints/mine
    torchrun --nproc_per_node 4 train.py --preset approach2 --device cuda   # data-parallel, no code change
    python train.py --data skeskinen/TinyStories-GPT4 --streaming --valid-stories 10000 --device cuda   # 2.7M stories

The stories are tokenized once into a memory-mapped cache ($TINYSTORIES_CACHE, default ~/.cache/tinystories).
--streaming reads the source as a stream (a Hub dataset through datasets' streaming=True: never downloaded
whole, never held in memory) and tokenizes it batch by batch into that cache; its cache is keyed by the
arguments (data, split, --max-stories/--valid-stories, tokenizer), so a second run starts from the cache
without opening the source or the network. Without it the stories are loaded into a list first and the cache
is keyed by their text. A dataset with a train split only (TinyStories-GPT4) gives 1% of its stories, by a hash
of each, to valid: the valid pass reads the stream until it has --valid-stories of them (to its end without).

Presets fill in defaults; flags given on the command line win. The checkpoint folder (--out) is written
atomically every --save-every steps and after each epoch; --resume continues from it, optimizer included.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

from tinystories.data import (DEFAULT_DATASET, DataError, WindowDataset, collate, load_stories, tokenize_cached,
                              tokenize_source_cached)
from tinystories.evaluate import nats_per_story
from tinystories.hub import CheckpointError, load_model, push_folder, save_checkpoint
from tinystories.model import ConfigError, TinyStoriesConfig, TinyStoriesModel
from tinystories.tokenizer import TAGS, build_tokenizer

# Each preset is a set of defaults; explicit flags override them.
PRESETS = {
    # The seed's run, exactly: its architecture, context 50, Adam 1e-4, batch 1, 10 epochs, 90k/10k stories.
    "seed": dict(arch="seed", context=50, optimizer="adam", lr=1e-4, schedule="constant", batch_size=1, epochs=10,
                 max_stories=90_000, valid_stories=10_000, data=DEFAULT_DATASET, warmup=0, grad_clip=0.0,
                 dropout=0.1, weight_decay=0.0),
    # The bundled CPU models (see README "Bundled weights"): one command each, < 60 min on 2 CPU cores.
    # 2,055 steps (~3.8M predicted tokens), the 57 minutes approach 1 had on one core while approach 2 trained on
    # the other; the LR schedule follows whichever budget (steps or minutes) binds first.
    "approach1": dict(arch="decoder", approach=1, context=64, d_model=256, n_layers=4, d_ff=1024, dropout=0.0,
                      batch_size=32, lr=2e-3, epochs=3, max_steps=2055, max_minutes=57, data="../shared/data",
                      out="checkpoints/approach1", save_every=200),
    "approach2": dict(arch="decoder", approach=2, context=64, d_model=256, n_layers=4, d_ff=1024, dropout=0.0,
                      batch_size=32, lr=2e-3, epochs=3, max_steps=2055, max_minutes=57, data="../shared/data",
                      out="checkpoints/approach2", save_every=200),
    # A model that trains in a minute or two: placeholders and smoke tests.
    "tiny": dict(arch="decoder", context=32, d_model=64, n_heads=4, n_layers=2, d_ff=256, dropout=0.0,
                 batch_size=32, lr=3e-3, epochs=1, cutoffs="500,2000"),
}

DEFAULTS = dict(data=DEFAULT_DATASET, approach=2, arch="decoder", epochs=1, lr=None, batch_size=32, context=None,
                max_stories=None, valid_stories=None, device="auto", out="checkpoints/run", seed=0, d_model=256,
                n_heads=8, n_layers=6, d_ff=1024, dropout=0.0, cutoffs="2000,10000", optimizer="adamw",
                weight_decay=0.1, schedule="cosine", warmup=100, grad_clip=1.0, max_steps=None, max_minutes=None,
                save_every=500, eval_stories=None, threads=None, storage_dtype="float16", log_every=20,
                streaming=False)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=argparse.SUPPRESS)
    a = p.add_argument
    a("--preset", choices=sorted(PRESETS), default=None, help="a named set of defaults (flags override)")
    a("--data", help=f"Hub dataset id or local .jsonl/.json/.parquet file or folder (default {DEFAULT_DATASET})")
    a("--approach", type=int, choices=[1, 2], help="1: tags once at the story start; 2: tags in every window")
    a("--arch", choices=["seed", "decoder"])
    a("--epochs", type=float, help="passes over the training windows (fractions allowed)")
    a("--lr", type=float, help="peak learning rate (seed arch: 1e-4, decoder: 2e-3)")
    a("--batch-size", type=int)
    a("--context", type=int, help="window length in tokens (seed: 50; decoder: 64)")
    a("--max-stories", type=int, help="use at most this many training stories")
    a("--valid-stories", type=int, help="use at most this many validation stories")
    a("--streaming", action="store_true", help="stream the data (a Hub dataset is never downloaded whole) and "
      "tokenize it straight into the memory-mapped cache; later runs with the same data flags reuse the cache "
      "without opening the source")
    a("--device", choices=["auto", "cpu", "cuda", "mps"])
    a("--out", help="checkpoint folder to write (and --resume from)")
    a("--resume", action="store_true", default=False, help="continue from the checkpoint in --out")
    a("--save-every", type=int, help="save every N optimizer steps (0: only after epochs)")
    a("--seed", type=int)
    a("--push-to-hub", metavar="REPO_ID", default=None, help="upload the final checkpoint (token: HF_TOKEN or hf auth login)")
    a("--d-model", type=int); a("--n-heads", type=int); a("--n-layers", type=int); a("--d-ff", type=int)
    a("--dropout", type=float)
    a("--cutoffs", help="adaptive softmax cluster boundaries over frequency rank, e.g. 2000,10000 ('' = full softmax)")
    a("--optimizer", choices=["adam", "adamw"])
    a("--weight-decay", type=float)
    a("--schedule", choices=["cosine", "constant"])
    a("--warmup", type=int, help="linear warm-up steps")
    a("--grad-clip", type=float, help="max gradient norm (0: off)")
    a("--max-steps", type=int, help="stop after this many optimizer steps (the schedule spans them)")
    a("--max-minutes", type=float, help="stop (and save) after this much training time")
    a("--eval-stories", type=int, help="validation stories scored after each epoch (default: all)")
    a("--threads", type=int, help="torch CPU threads (default: all cores)")
    a("--storage-dtype", choices=["float32", "float16", "bfloat16"], help="dtype of the saved weights")
    a("--log-every", type=int)
    a("--compile", action="store_true", default=False, help="torch.compile the model (CUDA: worth it)")
    args = p.parse_args(argv)
    given = {k for k in vars(args)}
    merged = dict(DEFAULTS)
    merged.update(PRESETS.get(args.preset) or {})
    merged.update(vars(args))
    args = argparse.Namespace(**merged)
    args.given = sorted(given - {"preset"})
    if args.lr is None:
        args.lr = 1e-4 if args.arch == "seed" else 2e-3
    if args.context is None:
        args.context = 50 if args.arch == "seed" else 64
    return args


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but CUDA is not available")
    return torch.device(name)


def lr_at(step: int, args, total_steps: int, elapsed: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to 10% over whichever budget binds first: steps or --max-minutes."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    if args.schedule == "constant":
        return args.lr
    progress = (step - args.warmup) / max(1, total_steps - args.warmup)
    if args.max_minutes:
        progress = max(progress, elapsed / (args.max_minutes * 60))
    progress = min(1.0, progress)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))  # cosine down to 10%


def weights_sha256(model) -> str:
    """A fingerprint of the weights, every tensor of the state dict in order: equal on every DDP rank."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_card(args, config: TinyStoriesConfig, metrics: dict, reports: list[str]) -> str:
    cmd = "python train.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    data = args.data
    m = metrics
    lines = [
        "---", "library_name: tinystories", "license: mit", "pipeline_tag: text-generation",
        "tags: [tinystories, tag-conditioned, children-stories]",
        f"datasets: [{DEFAULT_DATASET}]" if args.data == DEFAULT_DATASET else "datasets: []", "---", "",
        f"# TinyStories tag-conditioned model: {config.arch}, approach {config.approach}", "",
        f"A {config.arch} model ({m.get('params', 0):,} parameters, context {config.context}) writing children's stories "
        f"conditioned on the tags BadEnding, Conflict, Dialogue, Foreshadowing, MoralValue, Twist. "
        + ("Approach 1: the tags are given once at the story start and slide out of the window."
           if config.approach == 1 else "Approach 2: the tags are pinned at the start of every window."),
        "", "## Use", "", "```python", "from tinystories import load_model, generate_text",
        "model = load_model('PATH_OR_REPO_ID')", "generate_text(model, tags=['Dialogue', 'Twist'], seed=0)", "```", "",
        "## Training", "", f"- command: `{cmd}`", f"- data: `{data}`", *[f"- {r}" for r in reports],
        f"- steps: {m.get('steps', 0):,}; epochs: {m.get('epochs', 0):.2f}; tokens seen (predicted): {m.get('tokens_seen', 0):,}",
        f"- training time: {m.get('train_minutes', 0):.1f} min on {m.get('device', '?')}",
        f"- weights stored as {config.storage_dtype} (the model runs in float32)", "",
        "## Metrics (validation split)", "",
        f"- nats per story: {m.get('valid_nats_per_story', float('nan')):.2f}",
        f"- nats per token: {m.get('valid_nats_per_token', float('nan')):.4f} (full 50,266-token vocabulary)",
        f"- stories scored: {m.get('valid_stories', 0):,}", "",
        "![loss curve](loss_curve.png)", "",
    ]
    return "\n".join(lines)


def plot_loss(log_rows: list[dict]):
    def write(path: Path):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        train = [r for r in log_rows if "loss" in r]
        valid = [r for r in log_rows if "valid_nats_per_token" in r]
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        if train:
            ax.plot([r["tokens"] for r in train], [r["loss"] for r in train], label="train (nats/token)", lw=1)
        if valid:
            ax.plot([r["tokens"] for r in valid], [r["valid_nats_per_token"] for r in valid], "o-", label="valid")
        ax.set_xlabel("predicted tokens seen")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.grid(alpha=0.3)
        if train or valid:
            ax.legend()
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)

    return write


def main(argv=None) -> int:
    args = parse_args(argv)
    # torchrun / accelerate launch set these; a single process needs nothing.
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    device = pick_device(args.device)
    if world > 1:
        import torch.distributed as dist

        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        # Rank 0 alone evaluates and saves while the others wait in their next all-reduce: allow it hours.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=6))
    main_process = rank == 0
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if main_process else (lambda *a: None)

    # --- model, tokenizer, training state
    state = None
    if args.resume:
        try:
            model = load_model(out)
        except CheckpointError as e:
            print(f"error: cannot --resume: {e}", file=sys.stderr)
            return 2
        tokenizer, config = model.tokenizer, model.config
        if not (out / "trainer_state.pt").is_file():
            print(f"error: cannot --resume: {out} has no trainer_state.pt (it was not saved by train.py)", file=sys.stderr)
            return 2
        state = torch.load(out / "trainer_state.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])  # the float32 weights (model.safetensors may be 16-bit)
        saved_args = state["args"]
        for k in ("data", "approach", "arch", "context", "epochs", "lr", "batch_size", "max_stories", "valid_stories",
                  "optimizer", "weight_decay", "schedule", "warmup", "grad_clip", "max_steps", "seed", "cutoffs"):
            if k not in args.given:
                setattr(args, k, saved_args[k])
        say(f"resuming {out} at step {state['step']:,}")
    else:
        try:
            config = TinyStoriesConfig(
                arch=args.arch, approach=args.approach, context=args.context, d_model=args.d_model,
                n_heads=args.n_heads, dropout=args.dropout, n_layers=args.n_layers, d_ff=args.d_ff,
                cutoffs=tuple(int(c) for c in str(args.cutoffs).split(",") if c.strip()),
                storage_dtype=args.storage_dtype)
        except (ConfigError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        tokenizer = build_tokenizer()
        model = None

    # --- data, tokenized once into a memory-mapped cache (rank 0 writes it; then the others read it)
    cache = Path(os.environ.get("TINYSTORIES_CACHE", Path.home() / ".cache" / "tinystories"))
    try:
        if world > 1 and not main_process:
            torch.distributed.barrier()
        if args.streaming:
            train_data, train_report = tokenize_source_cached(tokenizer, args.data, "train", cache, args.max_stories)
            valid_data, valid_report = tokenize_source_cached(tokenizer, args.data, "valid", cache, args.valid_stories)
        else:
            train_stories, train_report = load_stories(args.data, "train", args.max_stories)
            valid_stories, valid_report = load_stories(args.data, "valid", args.valid_stories)
            train_data = tokenize_cached(tokenizer, train_stories, cache)
            valid_data = tokenize_cached(tokenizer, valid_stories, cache)
            del train_stories, valid_stories
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if world > 1 and main_process:
            torch.distributed.barrier()
    say(train_report)
    say(valid_report)
    if args.eval_stories:
        valid_data = valid_data.head(args.eval_stories)

    if model is None:
        model = TinyStoriesModel(config)
        if config.arch == "decoder":
            model.decoder.output.set_token_counts(train_data.token_counts(config.vocab_size))
    model.to(device).train()
    n_params = model.num_params()
    say(f"model: {config.arch}, approach {config.approach}, context {config.context}, {n_params:,} parameters, device {device}")

    # Training windows barely overlap (stride = context - the longest tag prefix): every token is a target
    # about once an epoch; evaluation and generation use the half-window stride (see data.windows).
    dataset = WindowDataset(train_data, config.arch, config.approach, config.context, score="all",
                            stride=config.context - 1 - len(TAGS))
    batches_per_epoch = math.ceil(len(dataset) // world / args.batch_size)  # the same on every rank (see perm)
    total_steps = math.ceil(batches_per_epoch * args.epochs)
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps)
    say(f"{len(dataset):,} training {'windows' if config.arch == 'decoder' else 'examples'}, "
        f"{batches_per_epoch:,} batches of {args.batch_size} per epoch, {total_steps:,} steps")

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "position" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "position" in n]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda"
    opt = (torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), fused=fused) if args.optimizer == "adamw"
           else torch.optim.Adam(model.parameters(), lr=args.lr, fused=fused))
    step, tokens_seen, elapsed, log_rows = 0, 0, 0.0, []
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        step, tokens_seen, elapsed = state["step"], state["tokens_seen"], state["elapsed"]
        log_rows = state.get("log", [])

    train_model = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # The adaptive softmax runs (and embeds) a tail cluster only for batches holding its tokens, so some
        # steps leave its weights without a gradient: DDP has to look for them.
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                              find_unused_parameters=config.arch == "decoder" and bool(config.cutoffs))
    if args.compile:
        train_model = torch.compile(train_model)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    metrics = {**(state or {}).get("metrics", {}), "params": n_params,
               "device": str(device) + (f" x{world}" if world > 1 else ""), "train_stories": len(train_data)}
    reports = [str(train_report), str(valid_report)]

    def save(final: bool = False):
        if not main_process:
            return
        metrics.update(steps=step, epochs=step / batches_per_epoch, tokens_seen=tokens_seen,
                       train_minutes=elapsed / 60)
        files = {"metrics.json": json.dumps(metrics, indent=2), "README.md": model_card(args, config, metrics, reports),
                 "train_log.jsonl": "".join(json.dumps(r) + "\n" for r in log_rows), "loss_curve.png": plot_loss(log_rows)}
        trainer_state = dict(model=model.state_dict(), optimizer=opt.state_dict(), step=step, tokens_seen=tokens_seen,
                             elapsed=elapsed, log=log_rows, metrics=metrics,
                             args={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, type(None)))})
        save_checkpoint(model, tokenizer, out, files, trainer_state)

    def evaluate():
        if not main_process:
            return
        r = nats_per_story(model, valid_data, batch_size=64, progress=sys.stderr.isatty())
        metrics.update(valid_nats_per_story=r["nats_per_story"], valid_nats_per_token=r["nats_per_token"],
                       valid_stories=r["stories"], valid_tokens=r["tokens"])
        log_rows.append(dict(step=step, tokens=tokens_seen, valid_nats_per_token=r["nats_per_token"],
                             valid_nats_per_story=r["nats_per_story"]))
        say(f"step {step:,}: valid {r['nats_per_story']:.1f} nats/story, {r['nats_per_token']:.4f} nats/token")

    def clock() -> float:
        """Seconds of training. Under DDP with --max-minutes: the slowest rank's, so that every rank follows the
        same time-aware LR schedule (identical weights) and stops at the same step (none left waiting)."""
        seconds = time.time() - t0
        if world > 1 and args.max_minutes:
            t = torch.tensor([seconds], dtype=torch.float64, device=device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            seconds = float(t)
        return seconds

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=step, unit="step", disable=not main_process, file=sys.stderr,
               mininterval=1 if sys.stderr.isatty() else 30, dynamic_ncols=True)
    t0, window_loss, window_tokens, window_t = time.time() - elapsed, 0.0, 0, time.time()
    stopped = False
    while step < total_steps and not stopped:
        epoch, b0 = divmod(step, batches_per_epoch)
        perm = np.random.default_rng(args.seed + epoch).permutation(len(dataset))
        perm = perm[: len(perm) - len(perm) % world][rank::world]  # equal shards: no rank runs out of batches first
        for b in range(b0, batches_per_epoch):
            idx = perm[b * args.batch_size : (b + 1) * args.batch_size]
            if len(idx) == 0:
                break
            x, y = collate([dataset[int(k)] for k in idx], config.context)
            if device.type == "cuda":  # page-locked: the copy to the GPU runs asynchronously
                x, y = x.pin_memory(), y.pin_memory()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            lr = lr_at(step, args, total_steps, clock())
            for g in opt.param_groups:
                g["lr"] = lr
            with autocast:
                loss = train_model(x, y)
            loss.backward()
            if args.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            n_tok = int((y >= 0).sum()) * world
            step, tokens_seen = step + 1, tokens_seen + n_tok
            window_loss, window_tokens = window_loss + loss.item() * n_tok, window_tokens + n_tok
            elapsed = time.time() - t0
            bar.update(1)
            if step % args.log_every == 0:
                tps = window_tokens / max(time.time() - window_t, 1e-9)
                log_rows.append(dict(step=step, tokens=tokens_seen, loss=window_loss / window_tokens,
                                     lr=opt.param_groups[0]["lr"], tokens_per_s=tps, elapsed=elapsed))
                bar.set_postfix(loss=f"{window_loss / window_tokens:.3f}", tok_s=f"{tps:,.0f}")
                window_loss, window_tokens, window_t = 0.0, 0, time.time()
            if args.save_every and step % args.save_every == 0:
                save()
            if step >= total_steps or (args.max_minutes and clock() > args.max_minutes * 60):
                stopped = step < total_steps
                break
        if step % batches_per_epoch == 0 or step >= total_steps or stopped:
            evaluate()
            save()
    bar.close()
    if "valid_nats_per_token" not in metrics:
        evaluate()
        save()
    say(json.dumps({k: metrics[k] for k in ("valid_nats_per_story", "valid_nats_per_token", "steps", "tokens_seen",
                                            "train_minutes") if k in metrics}))
    if args.push_to_hub and main_process:
        try:
            url = push_folder(out, args.push_to_hub)
            say(f"pushed {out} to {url}")
        except Exception as e:
            print(f"error: push to {args.push_to_hub} failed ({type(e).__name__}: {e}); the checkpoint is safe in "
                  f"{out}. Log in with `hf auth login` or set HF_TOKEN, then run: python -c \"from tinystories import "
                  f"push_folder; push_folder('{out}', '{args.push_to_hub}')\"", file=sys.stderr)
            return 1
    if world > 1:
        print(f"rank {rank}: weights sha256 {weights_sha256(model)}", file=sys.stderr, flush=True)
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
