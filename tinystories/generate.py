"""Story generation for both archs: top-p sampling, a growing EOS bias, streaming, reproducible with a seed.

The context follows the model's approach, exactly as in training and evaluation (data.windows):
approach 1 starts the story with [BOS] tags and lets them slide out of a full window; approach 2 keeps
[BOS] tags pinned at the start of every window. When a decoder's window is full it moves forward by
`default_stride(context)` story tokens and re-reads the window into a fresh KV cache.

EOS bias schedule: from the `eos_bias_after`-th generated token on, the [EOS] logit gets
+EOS_BIAS_STEP * (tokens generated - eos_bias_after + 1), i.e. +0.1 nats per token: +5 fifty tokens later,
+15 at the 350-token cap. Stories end near a natural stopping point instead of being cut off.

Speed (python bench.py): a decoder step feeds one token through the KV cache, top-p sorts only a set of
candidates that provably holds the nucleus (_nucleus), and the streamed text is decoded one token at a time
(_StoryText). Each gives exactly what the straightforward code gives: tests/test_generate_reference.py.
"""
from __future__ import annotations

import codecs
import sys
from typing import Iterator

import torch
import torch.nn.functional as F
from tokenizers.decoders import ByteLevel as ByteLevelDecoder

from .data import default_stride, prefix_and_body
from .tokenizer import EOS_ID, GPT2_VOCAB_SIZE, PAD_ID, normalize_tags

MAX_TOKENS = 350
EOS_BIAS_STEP = 0.1


class GenerationError(ValueError):
    """A sampling setting out of range; the message names it and its range."""


def check_settings(temperature=1.0, top_p=0.9, max_tokens=MAX_TOKENS, eos_bias_after=200, seed=None) -> dict:
    """Validated sampling settings (numbers coerced); raises GenerationError with a readable message."""

    def number(name, v, lo, hi, kind=float):
        try:
            x = kind(v)
            if kind is int and x != float(v):
                raise ValueError
        except (TypeError, ValueError, OverflowError):
            raise GenerationError(f"{name} must be a{'n integer' if kind is int else ' number'}, got {v!r}") from None
        if not lo <= x <= hi:  # NaN fails too
            raise GenerationError(f"{name} must be between {lo} and {hi}, got {v!r}")
        return x

    return dict(
        temperature=number("temperature", temperature, 0.0, 5.0),
        top_p=number("top_p", top_p, 0.0, 1.0),
        max_tokens=number("max_tokens", max_tokens, 1, MAX_TOKENS, int),
        eos_bias_after=number("eos_bias_after", eos_bias_after, 0, MAX_TOKENS, int),
        seed=None if seed is None or seed == "" else number("seed", seed, 0, 2**63 - 1, int),
    )


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """Nucleus sampling from one row of logits; temperature 0 is greedy.

    The nucleus: the most probable tokens, in order of probability, up to and including the one whose
    cumulative probability reaches top_p; one of them is drawn in proportion to its probability.
    """
    if temperature < 1e-6:  # 0 is greedy; tinier ones would overflow the softmax into NaN
        return int(logits.argmax())
    probs = F.softmax(logits if temperature == 1 else logits / temperature, -1)  # x / 1 == x: skip the copy
    order, kept = _nucleus(probs, top_p)
    return int(order[torch.multinomial(kept / kept.sum(), 1, generator=generator)])


def _kept(sorted_probs: torch.Tensor, top_p: float) -> torch.Tensor:
    cum = sorted_probs.cumsum(0)
    keep = (cum - sorted_probs) < top_p  # tokens needed to reach top_p; the first is always kept
    keep[0] = True
    return sorted_probs[keep]


_CANDIDATES = (512, 4096)  # sizes of the top-k tried before a full sort
_MASS_MARGIN = 1e-3  # far above float32 rounding in a cumulative sum of probabilities


def _nucleus(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids by probability, descending; the nucleus's probabilities in that order), exactly as a sort of
    all probabilities gives them, usually without that sort.

    Sorting all 50,266 probabilities costs more than a model step, and a nucleus is usually a few hundred
    tokens. topk(k) holds every token more probable than its smallest value v; if those tokens have mass
    >= top_p + margin, every token after them starts past top_p and is never kept, and since torch's CPU
    cumsum adds in order, their cumulative sums are those of the full sort. Equal probabilities in the
    nucleus could be ordered differently by the two sorts: then, and for nuclei too big for the candidates
    (or top_p too close to 1), sort everything.
    """
    if top_p <= 1 - 2 * _MASS_MARGIN:
        for k in _CANDIDATES:
            if k >= probs.numel():
                break
            values, ids = probs.topk(k)
            n = int((values > values[-1]).sum())  # the tokens strictly more probable than the k-th
            if float(values[:n].sum(dtype=torch.float64)) >= top_p + _MASS_MARGIN:
                kept = _kept(values[:n], top_p)
                head = values[: len(kept) + 1]
                if not bool((head[1:] == head[:-1]).any()):
                    return ids[:n], kept
                break
    sorted_probs, order = probs.sort(descending=True)
    return order, _kept(sorted_probs, top_p)


class _Reader:
    """Feeds a growing story to a model under its approach's window rule; returns next-token log-probs."""

    def __init__(self, model, tags):
        self.model, cfg = model, model.config
        self.prefix, body, _ = prefix_and_body([], tags, cfg.approach)
        self.body = body[:-1]  # drop the [EOS] placeholder: the story is what we generate
        self.room = cfg.context - len(self.prefix)
        self.stride = default_stride(cfg.context)
        self.start, self.cache = 0, None
        self.device = next(model.parameters()).device

    def append(self, token: int) -> None:
        self.body.append(token)

    @torch.inference_mode()
    def next_log_probs(self) -> torch.Tensor:
        m, device = self.model, self.device
        if m.arch == "seed":
            window = self.prefix + self.body[-self.room :]
            x = torch.tensor([[PAD_ID] * (m.config.context - len(window)) + window], device=device)
            return F.log_softmax(m.seed(x)[0].float(), -1)
        dec = m.decoder
        if self.cache is not None and len(self.body) - self.start <= self.room:
            h = dec(torch.tensor([[self.body[-1]]], device=device), self.cache)
        else:  # first call, or the window is full: move it by whole strides and re-read
            while len(self.body) - self.start > self.room:
                self.start += self.stride
            self.cache = dec.new_cache()
            h = dec(torch.tensor([self.prefix + self.body[self.start :]], device=device), self.cache)
        return dec.output.log_probs(h[:, -1])[0].float()


def stream_story(model, tags=(), *, temperature: float = 1.0, top_p: float = 0.9, max_tokens: int = MAX_TOKENS,
                 eos_bias_after: int = 200, seed: int | None = None, tokenizer=None) -> Iterator[str]:
    """Yield the story text so far after every token, until [EOS] or `max_tokens` tokens."""
    s = check_settings(temperature, top_p, max_tokens, eos_bias_after, seed)
    tags = normalize_tags(tags)
    tokenizer = tokenizer or model.tokenizer
    generator = torch.Generator().manual_seed(s["seed"] if s["seed"] is not None else torch.seed())
    reader, story = _Reader(model, tags), []
    text, decoded = "", _StoryText(tokenizer)
    for n in range(s["max_tokens"]):
        logits = reader.next_log_probs().cpu().clone()
        logits[GPT2_VOCAB_SIZE:EOS_ID] = logits[EOS_ID + 1 :] = float("-inf")  # never [PAD] [BOS] or a tag in a story
        if n >= s["eos_bias_after"]:
            logits[EOS_ID] += EOS_BIAS_STEP * (n - s["eos_bias_after"] + 1)
        token = sample_token(logits, s["temperature"], s["top_p"], generator)
        if token == EOS_ID:
            break
        story.append(token)
        reader.append(token)
        new = decoded.append(token, story).strip()
        if not new.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            text = new
            yield text
    final = tokenizer.decode(story).strip()
    if final != text:
        yield final


class _StoryText:
    """tokenizer.decode(story) after every token, without re-decoding the story each time.

    A byte-level BPE tokenizer (GPT-2's) decodes ids by joining their bytes and decoding the bytes as UTF-8,
    each invalid or unfinished sequence becoming one U+FFFD; Python's incremental UTF-8 decoder gives the same
    text one token's bytes at a time (and holds back an unfinished character, shown as U+FFFD as decode
    would). Other tokenizers (or one that cleans up spaces) are decoded in full.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self.byte_level = (
            isinstance(getattr(backend, "decoder", None), ByteLevelDecoder)
            and not getattr(tokenizer, "clean_up_tokenization_spaces", False)
        )
        if self.byte_level:
            self.id_to_token = backend.id_to_token
            self.utf8 = codecs.getincrementaldecoder("utf-8")("replace")
            self.text = ""

    def append(self, token: int, story: list[int]) -> str:
        """The decoded story, `token` (already appended to `story`) included."""
        if not self.byte_level:
            return self.tokenizer.decode(story)
        chars = self.id_to_token(token)
        try:
            raw = bytes(_BYTE_OF_CHAR[c] for c in chars)
        except KeyError:  # not written in the byte alphabet (an added token): its text, as the decoder does
            raw = chars.encode()
        self.text += self.utf8.decode(raw)
        pending = self.utf8.getstate()[0]
        return self.text + pending.decode("utf-8", "replace") if pending else self.text


def _gpt2_byte_of_char() -> dict[str, int]:
    """GPT-2's byte-level alphabet (bytes_to_unicode), inverted: a token's character -> the byte it stands for."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)}
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTE_OF_CHAR = _gpt2_byte_of_char()


def generate(model, tags=(), **kwargs) -> str:
    """The whole story (see stream_story for the settings)."""
    text = ""
    for text in stream_story(model, tags, **kwargs):
        pass
    return text


def generate_text(model=None, tags=(), file=None, **kwargs) -> str:
    """The seed's usage: print "Generating story with [...]" and stream the story to `file` (stdout); return it."""
    from .hub import load_model

    file = file if file is not None else sys.stdout
    model = model if model is not None else load_model()
    tags = normalize_tags(tags)
    print(f"Generating story with {tags}", file=file, flush=True)
    shown = ""
    for text in stream_story(model, tags, **kwargs):
        print(text[len(shown) :] if text.startswith(shown) else "\n" + text, end="", file=file, flush=True)
        shown = text
    print(file=file, flush=True)
    return shown


def main(argv=None) -> int:
    import argparse

    from .hub import CheckpointError, load_model

    p = argparse.ArgumentParser(description="Generate a tag-conditioned children's story.")
    p.add_argument("--model", default=None, help="checkpoint folder or Hub repo id[@revision] (default: bundled)")
    p.add_argument("--tags", default="", help="comma-separated tags, e.g. Dialogue,Twist (none: an untagged story)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    p.add_argument("--temperature", type=float, default=0.8, help="default 0.8: tuned for the bundled weights")
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--eos-bias-after", type=int, default=200)
    args = p.parse_args(argv)
    try:
        tags = normalize_tags(args.tags)
        settings = check_settings(args.temperature, args.top_p, args.max_tokens, args.eos_bias_after, args.seed)
        model = load_model(args.model)
    except (ValueError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    generate_text(model, tags, **settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
