"""Gradio app: tag-conditioned children's stories, streamed token by token, the two approaches side by side.

    python app.py                                   # bundled checkpoints, http://127.0.0.1:7860
    python app.py --approach2 user/repo@main        # weights from the Hugging Face Hub
    python app.py --threads 2                       # torch threads per story (default 1, or $TINYSTORIES_THREADS)
    python app.py --help

Threads: generation runs with 1 torch thread (`torch.set_num_threads(1)` at start-up) unless `--threads N` or the
environment variable TINYSTORIES_THREADS=N says otherwise. A story is one token at a time through a small model,
so a second thread buys little even on an idle machine, and when two stories run at once (two users, or the
Compare tab's pair next to another request) 2 threads each oversubscribe the 2 cores and everything slows down
(numbers at DEFAULT_THREADS).

Memory: `python scripts/app_memory.py` measures this process's resident memory with both bundled models
(budget 600 MB); share_tokenizers, release_freed_memory and skip_gradio_matplotlib keep it down.

All model work happens in the `tinystories` package. This file checks what a user (or an API client) sends,
calls `stream_story`, and lays out the UI. It also runs unchanged as a Hugging Face Space (app_file: app.py).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import json
import logging
import math
import os
import re
import secrets
import sys
from pathlib import Path
from typing import Iterator

import gradio as gr
import torch

from tinystories import (MAX_TOKENS, TAGS, CheckpointError, GenerationError, UnknownTagError, check_settings,
                         kernels, load_model, normalize_tags, stream_story)
from tinystories.generate import DEFAULT_THREADS, THREADS_ENV, generation_threads
from tinystories.hub import read_card_metrics

log = logging.getLogger("tinystories.app")

ROOT = Path(__file__).resolve().parent
APPROACHES = (1, 2)
BUNDLED = {a: ROOT / "checkpoints" / f"approach{a}" for a in APPROACHES}
ENV_VARS = {a: f"TINYSTORIES_APPROACH{a}" for a in APPROACHES}

# Two stories at a time, shared by the Story and Compare tabs: a story is one sequential token loop that keeps
# about one core busy, and a free CPU Space has 2 cores, so a third would only slow every story down.
# Further requests wait in the queue (and see their position) rather than fail.
CONCURRENCY = 2
QUEUE_SIZE = 32

# The UI's slider ranges; API calls are held to the same ones.
RANGES = {"temperature": (0.0, 2.0), "top_p": (0.05, 1.0), "max_tokens": (1, MAX_TOKENS), "eos_bias_after": (0, MAX_TOKENS)}
# Temperature 0.8 is tuned for the bundled weights (README "Sampling defaults": more fluent than 1.0 by another
# model's judgement, with repetition still close to real stories); top-p 0.9 is the seed's.
DEFAULTS = {"temperature": 0.8, "top_p": 0.9, "max_tokens": MAX_TOKENS, "eos_bias_after": 200, "approach": 2}
SEED_RANGE = 2**31  # a random seed is drawn below this, so it stays easy to copy

# torch threads per story (torch.set_num_threads at start-up), unless --threads or $TINYSTORIES_THREADS says
# otherwise. Measured on this project's 2-core CPU before the native step (compare_stories in fresh threads, tags
# Dialogue+Twist, seeds 3 and 4, tokens of both stories / wall time, median of 5 alternating runs; another job
# kept ~1 core busy):
#   1 thread:  one /compare 180 tokens/s, two /compare at once 191 tokens/s in all
#   2 threads: one /compare 165 tokens/s, two /compare at once 149 tokens/s in all
# (bench.py on a quiet machine: one story 176 tokens/s on 1 thread, 173 on 2.) Through HTTP, scripts/app_memory.py
# --parallel 2 agrees in direction but swings 2x with the machine's load. (THREADS_ENV, DEFAULT_THREADS: from
# tinystories.generate, whose CLI follows the same rule.)


def detect_tags(story: str) -> list[str] | None:
    """The tags the bundled tag detector (checkpoints/tag_detector) finds in a finished story; None without one.

    Shown as "detected tags" under each story, so a user sees adherence rather than judging it by eye.
    """
    from tinystories.detector import DetectorError, detect_tags as detect

    try:
        return detect(story)
    except (DetectorError, OSError) as e:
        log.warning("no tag detector: %s", e)
        return None


# --- checking what a user or an API client sends

def invalid(message: str) -> gr.Error:
    """A readable error for the UI and for gradio_client (which raises it as AppError), without a traceback.

    A huge value echoed in the message (a 100,000-character "temperature") is elided in the middle, so the
    message stays a few lines long and still names the setting and its allowed values.
    """
    message = re.sub(r"\S{81,}", lambda m: f"{m[0][:60]}…{m[0][-15:]}", message)
    if len(message) > 500:
        message = f"{message[:300]} … {message[-150:]}"
    return gr.Error(message, title="Invalid input", print_exception=False)


def check_request(tags, temperature, top_p, max_tokens, eos_bias_after, seed) -> tuple[list[str], dict]:
    """Canonical tags and validated sampling settings; a blank seed becomes a fresh random one.

    No tag is fine (an untagged story). Raises gr.Error naming the bad value and its allowed range.
    """
    given = dict(temperature=temperature, top_p=top_p, max_tokens=max_tokens, eos_bias_after=eos_bias_after)
    for name, (lo, hi) in RANGES.items():  # the app's ranges first: they are the ones a user sees
        try:
            out_of_range = not lo <= float(given[name]) <= hi  # NaN too
        except (TypeError, ValueError, OverflowError):
            continue  # not a number: check_settings says so
        if out_of_range:
            raise invalid(f"{name} must be between {lo} and {hi}, got {given[name]!r}")
    if isinstance(seed, str):
        seed = seed.strip()  # the Seed box sends text; blank means random
    try:
        tags = normalize_tags(tags)
        settings = check_settings(temperature, top_p, max_tokens, eos_bias_after, seed)
    except (UnknownTagError, GenerationError) as e:
        raise invalid(str(e)) from None
    if settings["seed"] is None:
        settings["seed"] = secrets.randbelow(SEED_RANGE)
    if settings["temperature"] < 1e-6:  # that close to 0 is greedy; dividing float32 logits by it gives inf and NaN
        settings["temperature"] = 0.0
    return tags, settings


def check_approach(approach) -> int:
    """1 or 2 (also accepts 1.0 or "2" from loosely typed clients); raises gr.Error otherwise."""
    try:
        number = float(approach)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(approach, bool) or number not in APPROACHES:
        raise invalid(f"approach must be 1 or 2, got {approach!r}")
    return int(number)


def pick_model(models: dict, approach: int):
    if approach not in models:
        raise gr.Error(f"Approach {approach} has no model on this server (see the Model tab).", title="Not available",
                       print_exception=False)
    return models[approach]


# --- streaming stories

def _stream(model, tags: list[str], settings: dict) -> Iterator[str]:
    """stream_story, with any failure turned into a readable gr.Error (and logged with its traceback)."""
    try:
        yield from stream_story(model, tags, **settings)
    except (UnknownTagError, GenerationError) as e:
        raise invalid(str(e)) from None
    except Exception as e:  # a bug or a broken checkpoint: keep the server up, tell the user what happened
        log.exception("story generation failed")
        raise gr.Error(f"Story generation failed: {type(e).__name__}: {e}", title="Generation failed",
                       print_exception=False) from None


def story_length(model, story: str) -> tuple[int, int]:
    """(words, tokens) of a story; tokens as the model's tokenizer counts them."""
    return len(story.split()), len(model.tokenizer.encode(story)) if story else 0


def story_details(model, tags: list[str], story: str, finished: bool, generated: int | None = None) -> str:
    """Markdown under a story: the tags requested, its length, and (once finished) the detected tags.

    While a story streams (`generated`: its tokens so far) the length counts the tokens generated: re-encoding the
    whole story at every token would cost more than the native step generating it. Finished, the length is the
    story's as the model's tokenizer counts it."""
    if finished or generated is None:
        words, tokens = story_length(model, story)
    else:
        words, tokens = len(story.split()), generated
    if not finished:
        detected = "…"
    else:
        try:
            found = detect_tags(story)
            detected = "— (no tag detector yet)" if found is None else ", ".join(found) or "none"
        except Exception:  # a broken detector must not lose the story
            log.exception("tag detector failed")
            detected = "— (the tag detector failed; see the server log)"
    return (f"**Tags requested:** {', '.join(tags) or 'none'}  \n"
            f"**Length:** {words} words, {tokens} tokens  \n"
            f"**Detected tags:** {detected}")


def generate_story(tags, temperature, top_p, max_tokens, eos_bias_after, seed, approach, *,
                   models: dict) -> Iterator[tuple[str, int, str]]:
    """Stream one story: yields (story so far, seed used, details markdown), first with an empty story."""
    tags, settings = check_request(tags, temperature, top_p, max_tokens, eos_bias_after, seed)
    model = pick_model(models, check_approach(approach))
    story = ""
    yield story, settings["seed"], story_details(model, tags, story, False, 0)
    for n, story in enumerate(_stream(model, tags, settings), 1):
        yield story, settings["seed"], story_details(model, tags, story, False, n)
    yield story, settings["seed"], story_details(model, tags, story, True)


def compare_stories(tags, temperature, top_p, max_tokens, eos_bias_after, seed, *,
                    models: dict) -> Iterator[tuple[str, str, int, str, str]]:
    """Stream both approaches at once, same tags and seed, one token of each in turn.

    Yields (story 1, story 2, seed used, details 1, details 2), first with empty stories.
    """
    tags, settings = check_request(tags, temperature, top_p, max_tokens, eos_bias_after, seed)
    pair = [pick_model(models, a) for a in APPROACHES]
    streams = [_stream(m, tags, settings) for m in pair]
    stories, finished, generated = ["", ""], [False, False], [0, 0]
    details = [story_details(m, tags, "", False, 0) for m in pair]
    yield stories[0], stories[1], settings["seed"], details[0], details[1]
    while not all(finished):
        for i, stream in enumerate(streams):
            if finished[i]:
                continue
            try:
                stories[i] = next(stream)
                generated[i] += 1
            except StopIteration:
                finished[i] = True
            # detects tags once, at the end
            details[i] = story_details(pair[i], tags, stories[i], finished[i], generated[i])
        yield stories[0], stories[1], settings["seed"], details[0], details[1]


# --- loading weights and describing them

# Memory (python scripts/app_memory.py: VmRSS of `python app.py` on the bundled weights, budget 600 MB): see
# share_tokenizers, release_freed_memory and skip_gradio_matplotlib; outputs are unchanged by all three.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt")


def _tokenizer_files(folder) -> dict[str, bytes]:
    try:
        return {name: (Path(folder) / name).read_bytes() for name in TOKENIZER_FILES if (Path(folder) / name).is_file()}
    except OSError:
        return {}


def share_tokenizers(models: dict) -> int:
    """Point models whose checkpoint folders carry byte-identical tokenizer files at one tokenizer object.

    Both bundled checkpoints carry the same GPT-2 + specials tokenizer (~9.5 MB resident each once loaded), so
    the second copy is dropped; identical files load identical tokenizers, so every story stays the same.
    Tokenizers are only read (encode/decode, no padding or truncation), which is safe from two threads.
    Returns how many copies were dropped.
    """
    kept: list[tuple[dict, object]] = []
    dropped = 0
    for model in models.values():
        files = _tokenizer_files(getattr(model, "folder", ""))
        same = next((tok for key, tok in kept if files and key == files), None)
        if same is None:
            kept.append((files, model.tokenizer))
        elif model.tokenizer is not same:
            model.tokenizer, dropped = same, dropped + 1
    return dropped


def release_freed_memory() -> None:
    """Give memory freed during loading (the 16-bit state dicts, JSON parsing, a dropped tokenizer) back to the
    OS: glibc keeps freed heap pages resident until malloc_trim. A no-op where there is no glibc."""
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass


def model_sources(approach1: str | None = None, approach2: str | None = None, environ=os.environ) -> dict[int, str]:
    """Where each approach's weights come from: the CLI option, else its env var, else the bundled folder."""
    given = {1: approach1, 2: approach2}
    return {a: given[a] or environ.get(ENV_VARS[a]) or str(BUNDLED[a]) for a in APPROACHES}


def _is_bundled(source: str, approach: int) -> bool:
    return Path(source).expanduser().resolve() == BUNDLED[approach]


def load_models(sources: dict[int, str]) -> tuple[dict, dict[int, str]]:
    """Load each approach's model once: ({approach: model}, {approach: what went wrong, in words}).

    A source that fails (CheckpointError: missing, corrupt, Hub unreachable) falls back to the bundled folder;
    an approach whose bundled folder fails too is left out, and the app serves the other one.
    """
    models, notes = {}, {}
    for a, source in sources.items():
        try:
            models[a] = load_model(source)
            continue
        except CheckpointError as e:
            error = str(e)
        if _is_bundled(source, a):
            notes[a] = f"Approach {a} is not available: {error}"
            log.error(notes[a])
            continue
        try:
            models[a] = load_model(BUNDLED[a])
            notes[a] = f"Could not load `{source}` ({error}). Fell back to the bundled checkpoints/approach{a}."
            log.warning("approach %d: %s", a, notes[a])
        except CheckpointError as e:
            notes[a] = f"Approach {a} is not available: `{source}` failed ({error}) and so did the bundled folder ({e})."
            log.error(notes[a])
    for a, model in models.items():
        if model.config.approach != a:
            mismatch = (f"The checkpoint loaded as approach {a} was trained with approach {model.config.approach}; "
                        f"it generates with approach {model.config.approach}'s windows.")
            notes[a] = f"{notes[a]} {mismatch}" if a in notes else mismatch
            log.warning(mismatch)
    return models, notes


def describe_source(model, approach: int) -> str:
    """Where a model's weights came from, in words: the bundled folder, a local folder, or a Hub repo + revision."""
    source, folder = str(model.source), Path(model.folder)
    if Path(source).exists():
        if _is_bundled(source, approach):
            return f"bundled folder `checkpoints/approach{approach}`"
        return f"local folder `{source}`"
    repo, _, revision = source.partition("@")
    commit = f", commit `{folder.name[:12]}`" if folder.parent.name == "snapshots" else ""
    return (f"Hugging Face Hub repo [{repo}](https://huggingface.co/{repo}), "
            f"revision `{revision or 'main'}`{commit}")


def _format_metric(value) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def model_info(models: dict, notes: dict[int, str] | None = None) -> str:
    """Markdown for the Model tab: each approach's weights, architecture, size, metrics, and any fallback."""
    notes = notes or {}
    parts = []
    for a in APPROACHES:
        parts.append(f"### Approach {a}")
        if a in notes:
            parts.append(f"**⚠ {notes[a]}**")
        if a not in models:
            continue
        model = models[a]
        cfg = model.config
        parts.append(f"**Weights:** {describe_source(model, a)}")
        parts.append("| arch | approach | parameters | context |\n|---|---|---|---|\n"
                     f"| {cfg.arch} | {cfg.approach} | {model.num_params():,} | {cfg.context} tokens |")
        metrics = read_card_metrics(model.folder)
        if metrics:
            rows = "\n".join(f"| {k} | {_format_metric(v)} |" for k, v in metrics.items())
            parts.append(f"**Metrics** (metrics.json)\n\n| metric | value |\n|---|---|\n{rows}")
        else:
            parts.append("**Metrics:** none recorded (no metrics.json)")
    if not notes:
        parts.append("No fallback: every approach loaded from its requested source.")
    parts.append(f"**Generation steps on this server:** {kernels.describe()}")
    return "\n\n".join(parts)


# --- the UI

def _controls(tab: str):
    """Tags, sampling sliders and seed: the same controls on the Story and Compare tabs."""
    tags = gr.CheckboxGroup(list(TAGS), value=[], label="Tags", info="none is fine: an untagged story",
                            elem_id=f"{tab}-tags")
    with gr.Row():
        temperature = gr.Slider(*RANGES["temperature"], value=DEFAULTS["temperature"], step=0.05, label="Temperature")
        top_p = gr.Slider(*RANGES["top_p"], value=DEFAULTS["top_p"], step=0.05, label="Top-p")
    with gr.Row():
        max_tokens = gr.Slider(*RANGES["max_tokens"], value=DEFAULTS["max_tokens"], step=1, label="Max tokens",
                               elem_id=f"{tab}-max-tokens")
        eos_bias_after = gr.Slider(*RANGES["eos_bias_after"], value=DEFAULTS["eos_bias_after"], step=1,
                                   label="EOS-bias start", info="from this token on, ending the story gets likelier")
    # A Textbox, not a Number: Gradio's Number box turns blank into 0, and every story would get seed 0.
    seed = gr.Textbox(value="", label="Seed", info="an integer; blank: a random seed", placeholder="random",
                      elem_id=f"{tab}-seed")
    return [tags, temperature, top_p, max_tokens, eos_bias_after, seed]


def skip_gradio_matplotlib() -> None:
    """Gradio wraps every request in utils.MatplotlibBackendMananger, which imports matplotlib (~25 MB resident)
    to switch it to the agg backend; this app draws no plots, so the wrapper becomes a no-op (process-wide)."""
    utils = getattr(gr, "utils", None)
    if utils is not None and hasattr(utils, "MatplotlibBackendMananger"):
        utils.MatplotlibBackendMananger = contextlib.nullcontext


def build_demo(models: dict, notes: dict[int, str] | None = None) -> gr.Blocks:
    """The app for these loaded models ({approach: model}); `notes` are load problems to show in the Model tab."""
    skip_gradio_matplotlib()

    # The API's parameter names are these functions' parameter names.
    def generate(tags, temperature, top_p, max_tokens, eos_bias_after, seed=None, approach=DEFAULTS["approach"]):
        yield from generate_story(tags, temperature, top_p, max_tokens, eos_bias_after, seed, approach, models=models)

    def compare(tags, temperature, top_p, max_tokens, eos_bias_after, seed=None):
        yield from compare_stories(tags, temperature, top_p, max_tokens, eos_bias_after, seed, models=models)

    # preprocess=False: values reach check_request as sent, so a bad one gets our message naming the setting
    # and its range (and NaN or a wrong type is caught there too), from the UI and from API clients alike.
    event = dict(preprocess=False, concurrency_limit=CONCURRENCY, concurrency_id="stories")
    used_info = "type it into Seed to get this story again"

    with gr.Blocks(title="TinyStories: tag-conditioned stories") as demo:
        gr.Markdown("# TinyStories\nChildren's stories conditioned on narrative tags, streamed token by token.")
        with gr.Tab("Story"):
            controls = _controls("story")
            approach = gr.Radio([("Approach 1", 1), ("Approach 2", 2)], value=DEFAULTS["approach"], label="Approach",
                                info="1: tags once at the story start; 2: tags at the start of every window")
            button = gr.Button("Generate", variant="primary")
            story = gr.Textbox(label="Story", lines=10, max_lines=30, interactive=False, elem_id="story")
            seed_used = gr.Textbox(label="Seed used", info=used_info, interactive=False, elem_id="story-seed-used")
            details = gr.Markdown(label="details", show_label=False, elem_id="story-details")
            button.click(generate, controls + [approach], [story, seed_used, details], api_name="generate", **event)

        with gr.Tab("Compare"):
            gr.Markdown("Both approaches at once, from the same tags and seed.")
            controls = _controls("compare")
            button = gr.Button("Compare", variant="primary")
            with gr.Row():
                with gr.Column():
                    story1 = gr.Textbox(label="Approach 1", lines=10, max_lines=30, interactive=False, elem_id="story1")
                    details1 = gr.Markdown(label="details 1", show_label=False, elem_id="details1")
                with gr.Column():
                    story2 = gr.Textbox(label="Approach 2", lines=10, max_lines=30, interactive=False, elem_id="story2")
                    details2 = gr.Markdown(label="details 2", show_label=False, elem_id="details2")
            seed_used = gr.Textbox(label="Seed used", info=used_info, interactive=False, elem_id="compare-seed-used")
            button.click(compare, controls, [story1, story2, seed_used, details1, details2], api_name="compare", **event)

        with gr.Tab("Model"):
            gr.Markdown(model_info(models, notes))

    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    return demo


def apply_threads(threads: int) -> None:
    """Set torch's intra-op threads for every thread that generates afterwards (Gradio's worker threads too:
    each takes the process-wide setting on its first torch operation)."""
    torch.set_num_threads(threads)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Serve the TinyStories app: tag-conditioned stories from approach 1 and 2, streamed.",
        epilog="SOURCE is a Hugging Face Hub repo id (user/repo, or user/repo@revision) or a local checkpoint "
               "folder. A source that cannot be loaded falls back to the bundled folder; the Model tab says so. "
               "The server also honours Gradio's environment variables (GRADIO_SERVER_NAME, GRADIO_SERVER_PORT, ...).")
    for a in APPROACHES:
        p.add_argument(f"--approach{a}", metavar="SOURCE", default=None,
                       help=f"approach {a} weights (default: ${ENV_VARS[a]}, else checkpoints/approach{a})")
    p.add_argument("--host", default=None,
                   help="address to listen on (default: $GRADIO_SERVER_NAME, else 127.0.0.1; 0.0.0.0: all interfaces)")
    p.add_argument("--port", type=int, default=None,
                   help="port (default: $GRADIO_SERVER_PORT, else the first free one from 7860)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help=f"torch threads per story (default: ${THREADS_ENV}, else {DEFAULT_THREADS}: on a small CPU, "
                        "1 thread per story is as fast alone and much faster when two stories run at once)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        threads = generation_threads(args.threads)  # --threads, else $TINYSTORIES_THREADS, else 1
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    apply_threads(threads)  # before loading: no torch work runs on the default thread count
    log.info("generating with %d torch thread(s) per story", threads)
    models, notes = load_models(model_sources(args.approach1, args.approach2))
    log.info("generation steps: %s", kernels.describe())
    if not models:
        print("error: no model could be loaded:\n  " + "\n  ".join(notes.values()), file=sys.stderr)
        return 2
    share_tokenizers(models)
    release_freed_memory()
    build_demo(models, notes).launch(server_name=args.host, server_port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
