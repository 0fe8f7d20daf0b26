"""Story generation for both archs: top-p sampling, a growing EOS bias, streaming, reproducible with a seed.

The context follows the model's approach, exactly as in training and evaluation (data.windows):
approach 1 starts the story with [BOS] tags and lets them slide out of a full window; approach 2 keeps
[BOS] tags pinned at the start of every window. When a decoder's window is full it moves forward by
`default_stride(context)` story tokens and re-reads the window into a fresh KV cache.

EOS bias schedule: from the `eos_bias_after`-th generated token on, the [EOS] logit gets
+EOS_BIAS_STEP * (tokens generated - eos_bias_after + 1), i.e. +0.1 nats per token: +5 fifty tokens later,
+15 at the 350-token cap. Stories end near a natural stopping point instead of being cut off.

Speed (python bench.py, scripts/generation_levers.py): a decoder step feeds one token through the KV cache
(Decoder._step: float16 compact weights, every tensor it reads looked up once per thread); the adaptive
softmax's tail clusters are computed only when the draw needs them (NextToken); top-p sorts only a set of
candidates that provably holds the nucleus; the draw is torch.multinomial's own method without its per-call
checks (_multinomial); and the streamed text is decoded one token at a time (_StoryText). Each gives exactly
what the straightforward code gives: tests/test_generate_reference.py.
"""
from __future__ import annotations

import codecs
import math
import os
import sys
from functools import partial
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers.decoders import ByteLevel as ByteLevelDecoder

from .data import default_stride, prefix_and_body
from .tokenizer import EOS_ID, GPT2_VOCAB_SIZE, PAD_ID, VOCAB_SIZE, normalize_tags

MAX_TOKENS = 350
EOS_BIAS_STEP = 0.1
# torch threads per story for the CLI and the app: one token at a time is a chain of small operations, which a
# second thread does not speed up on a small CPU (bench.py measures both), and two stories at once (the app's
# Compare tab) would oversubscribe it.
THREADS_ENV = "TINYSTORIES_THREADS"
DEFAULT_THREADS = 1


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


def generation_threads(flag: int | None = None, environ=None) -> int:
    """Torch threads to generate with: `flag` (--threads), else $TINYSTORIES_THREADS, else DEFAULT_THREADS."""
    environ = os.environ if environ is None else environ
    value = flag if flag is not None else environ.get(THREADS_ENV, "").strip() or DEFAULT_THREADS
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(f"{THREADS_ENV} (or --threads) must be a positive integer, got {value!r}")
    return threads


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """Nucleus sampling from one row of scores (log-probabilities, possibly adjusted); temperature 0 is greedy.
    The rule is NextToken.sample's."""
    return NextToken.from_scores(logits).sample(temperature, top_p, generator)


_EPS = 1e-9  # relative slack when bounds decide the nucleus: far above float64 rounding, far below a draw
_CANDIDATE_WEIGHTS = (1e-3, 1e-6)  # relative weights above which the nucleus is looked for first


class _Layout:
    """Which ids each block of a distribution holds (ascending), and where to find an id: block, position."""

    def __init__(self, block_ids: list[np.ndarray]):
        self.block_ids = block_ids
        self.size = sum(len(b) for b in block_ids)
        self.block_of, self.pos_of = np.empty(self.size, np.int64), np.empty(self.size, np.int64)
        for i, ids in enumerate(block_ids):
            self.block_of[ids] = i
            self.pos_of[ids] = np.arange(len(ids))
        self._plans: dict[tuple, list] = {}
        self._merged: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def merged(self, blocks: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """(the ids of these blocks ascending, the permutation of their concatenated scores to that order)."""
        if blocks not in self._merged:
            ids = np.concatenate([self.block_ids[k] for k in blocks])
            order = np.argsort(ids, kind="stable")
            self._merged[blocks] = ids[order], order
        return self._merged[blocks]

    def plan(self, ids: tuple[int, ...]) -> list[tuple[int, np.ndarray]]:
        """[(block, positions in it)] of these ids; cached (the same few id sets come back every token)."""
        plan = self._plans.get(ids)
        if plan is None:
            where = np.asarray(ids, dtype=np.int64)
            blocks = self.block_of[where]
            plan = [(int(k), self.pos_of[where[blocks == k]]) for k in np.unique(blocks)]
            if len(self._plans) < 64:
                self._plans[ids] = plan
        return plan


_FULL_LAYOUTS: dict[int, _Layout] = {}


class _Block:
    """Log-probabilities of some token ids (ascending), computed on demand; bound >= each of them."""

    __slots__ = ("compute", "bound", "raw", "scores")

    def __init__(self, compute, bound: float = 0.0):
        self.compute, self.bound, self.raw, self.scores = compute, bound, None, None


class NextToken:
    """The next token's distribution, computed cluster by cluster only as far as the draw needs it.

    A decoder's adaptive softmax gives, from one small matrix, the log-probabilities of the head cluster's tokens
    (the `cutoffs[0]` most frequent) and of each tail cluster as a whole; a tail cluster's own tokens cost a
    matrix the size of the cluster. No token of a tail cluster is more probable than its cluster, which bounds
    where its tokens can sort and how much they can add to the normalizer under any temperature; when those
    bounds already decide the nucleus, the cluster is never computed. So the draw is exactly the one the whole
    distribution gives, the same token and the same generator state (tests/test_generate_reference.py), at the
    cost of the head alone for most tokens of a trained model.

    The rule (`sample`), in numpy: scores s = log-probabilities (float32) + adjustments (-inf bans a token, a
    bias raises one); m = max s; weights w = exp((s - m) / temperature) in float64, total Z = w.sum() in id
    order; order the tokens by s descending, ties by id; keep them in that order while the weight before a token
    is < top_p * Z (the first is always kept); draw one of the kept in proportion to w with torch.multinomial.
    Temperature < 1e-6 is greedy (ties: the lowest id).
    """

    def __init__(self, layout: _Layout, blocks: list[_Block]):
        self.layout, self.blocks = layout, blocks
        self.adjustments: list[tuple[tuple[int, ...], float]] = []
        self._compute(0)

    @classmethod
    def from_scores(cls, scores: torch.Tensor) -> "NextToken":
        """One block: the scores of every token id, in id order."""
        scores = scores.detach().float().cpu().reshape(-1)
        n = scores.numel()
        layout = _FULL_LAYOUTS.get(n) or _FULL_LAYOUTS.setdefault(n, _Layout([np.arange(n)]))
        return cls(layout, [_Block(lambda: scores)])

    def adjust(self, ids, value: float) -> None:
        """Add `value` to the scores of token `ids` (-inf: never draw them)."""
        ids = (int(ids),) if isinstance(ids, int) else tuple(int(i) for i in ids)
        self.adjustments.append((ids, float(value)))
        for k, pos in self.layout.plan(ids):
            b = self.blocks[k]
            if b.scores is not None:
                b.scores[pos] += np.float32(value)
            elif value > 0:
                self._compute(k)  # a raised score can exceed the cluster's bound: know it

    def _compute(self, k: int) -> None:
        b = self.blocks[k]
        b.raw = b.compute().float().cpu().numpy()
        b.scores = b.raw.copy()
        for ids, value in self.adjustments:
            for j, pos in self.layout.plan(ids):
                if j == k:
                    b.scores[pos] += np.float32(value)

    def _full(self, field: str) -> torch.Tensor:
        for k, b in enumerate(self.blocks):
            if b.scores is None:
                self._compute(k)
        out = np.empty(self.layout.size, np.float32)
        for ids, b in zip(self.layout.block_ids, self.blocks):
            out[ids] = getattr(b, field)
        return torch.from_numpy(out)

    def scores(self) -> torch.Tensor:
        """Every token's adjusted score, in id order (computes every cluster)."""
        return self._full("scores")

    def log_probs(self) -> torch.Tensor:
        """Every token's log-probability as the model gives it, in id order (computes every cluster)."""
        return self._full("raw")

    def _known(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids ascending, their scores) of the computed blocks."""
        known = tuple(k for k, b in enumerate(self.blocks) if b.scores is not None)
        if len(known) == 1:
            return self.layout.block_ids[known[0]], self.blocks[known[0]].scores
        ids, order = self.layout.merged(known)
        return ids, np.concatenate([self.blocks[k].scores for k in known])[order]

    def sample(self, temperature: float, top_p: float, generator: torch.Generator) -> int:
        while True:
            ids, s = self._known()
            pending = [k for k, b in enumerate(self.blocks) if b.scores is None]
            i_max = int(np.argmax(s))  # the first of the best: the lowest id
            m = float(s[i_max])
            unsure = [k for k in pending if self.blocks[k].bound >= m]  # may hold a token as good as the best
            if unsure:
                for k in unsure:
                    self._compute(k)
                continue
            if temperature < 1e-6:
                return int(ids[i_max])
            w = s.astype(np.float64)  # a fresh array: exp((s - m) / temperature) computed in place
            w -= m
            if temperature != 1:
                w /= temperature
            np.exp(w, out=w)
            z = float(w.sum())
            # Tokens of pending clusters add between 0 and `extra` to Z, and each scores at most `top`.
            power = max(0.0, 1 - 1 / temperature)  # sum of p^(1/T) over a cluster <= size^power * P^(1/T)
            extra = sum(len(self.layout.block_ids[k]) ** power
                        * math.exp((self.blocks[k].bound - m) / temperature) for k in pending)
            top = max((self.blocks[k].bound for k in pending), default=-math.inf)
            need = top_p * (z + extra) * (1 + _EPS) if pending else top_p * z
            # The nucleus is among the tokens of weight >= c if they weigh enough: sort those only.
            cand = None
            for c in _CANDIDATE_WEIGHTS:
                sel = np.flatnonzero(w >= c)
                if float(w[sel].sum()) >= need * (1 + _EPS):
                    cand = sel
                    break
            cand_ids, cand_s, cand_w = (ids, s, w) if cand is None else (ids[cand], s[cand], w[cand])
            order = np.argsort(-cand_s, kind="stable")  # descending; ties keep id order
            cum = np.cumsum(cand_w[order])
            n = 1 + int(np.count_nonzero(cum[:-1] < top_p * z))
            if not pending or ((n == 1 or float(cum[n - 2]) < top_p * z * (1 - _EPS))
                               and float(cum[n - 1]) >= need and top < float(cand_s[order[n - 1]])):
                break  # the same nucleus whatever the pending clusters hold, and none of their tokens in it
            self._compute(max(pending, key=lambda k: self.blocks[k].bound))
        kept = cand_w[order[:n]]
        return int(cand_ids[order[_multinomial(kept / kept.sum(), generator)]])


def _multinomial(p: np.ndarray, generator: torch.Generator) -> int:
    """torch.multinomial(torch.from_numpy(p), 1, generator=generator) for float64 probabilities p: the same
    draw and the same generator state, by torch's own one-sample method (argmax of p / Exp(1) noise, drawn from
    the generator in one float64 tensor), without its per-call checks of p (tests/test_generate.py)."""
    noise = torch.empty(len(p), dtype=torch.float64).exponential_(generator=generator)
    return int(np.argmax(p / noise.numpy()))


class _Reader:
    """Feeds a growing story to a model under its approach's window rule; gives the next token's distribution."""

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

    def next_token(self) -> NextToken:
        if self.model.training:  # a model mid-training: read as evaluation does, without dropout; then put back
            self.model.eval()
            try:
                return self._next_token()
            finally:
                self.model.train()
        return self._next_token()

    def _next_token(self) -> NextToken:
        if self.model.arch == "seed":
            return NextToken.from_scores(self._seed_log_probs())
        dec = self.model.decoder
        with torch.inference_mode():
            h = self._last_hidden()
            if not dec.output.cutoffs:
                return NextToken.from_scores(dec.output.log_probs(h)[0])
            head = dec.output.head_log_probs(h, dec.linear)
        return _adaptive_next_token(dec.output, h, head, dec.linear)

    @torch.inference_mode()
    def _seed_log_probs(self) -> torch.Tensor:
        m = self.model
        window = self.prefix + self.body[-self.room :]
        x = torch.tensor([[PAD_ID] * (m.config.context - len(window)) + window], device=self.device)
        return F.log_softmax(m.seed(x)[0].float(), -1)

    def _last_hidden(self) -> torch.Tensor:
        """The decoder's hidden state [1, d] after the story so far (call in inference mode)."""
        dec, device = self.model.decoder, self.device
        if self.cache is not None and len(self.body) - self.start <= self.room:
            h = dec(torch.tensor([[self.body[-1]]], device=device), self.cache)
        else:  # first call, or the window is full: move it by whole strides and re-read
            while len(self.body) - self.start > self.room:
                self.start += self.stride
            self.cache = dec.new_cache()
            h = dec(torch.tensor([self.prefix + self.body[self.start :]], device=device), self.cache)
        return h[:, -1]


def _adaptive_next_token(out, h: torch.Tensor, head: torch.Tensor, linear) -> NextToken:
    """h [1, d] and head = out.head_log_probs(h, linear): the head cluster now, each tail cluster when needed
    (`linear`: the decoder's, Decoder.linear)."""
    layout, perms = _cluster_layout(out)
    shortlist = out.cutoffs[0]
    bounds = head[0, shortlist:].tolist()  # log-probability of each tail cluster as a whole
    blocks = [_Block(partial(torch.index_select, head[0, :shortlist], 0, perms[0]))]
    for c in range(1, len(perms)):
        blocks.append(_Block(partial(_tail_scores, out, h, head, linear, c, perms[c]), bounds[c - 1]))
    return NextToken(layout, blocks)


def _tail_scores(out, h, head, linear, cluster: int, perm: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of tail cluster `cluster`'s tokens, in id order."""
    with torch.inference_mode():
        return out.tail_log_probs(h, cluster, head, linear)[0].index_select(0, perm)


def _cluster_layout(out) -> tuple[_Layout, list[torch.Tensor]]:
    """The clusters' ids (ascending) and, per cluster, the permutation from its rank order to id order.
    Cached on the module; recomputed if its rank_of_id changes."""
    rank_of_id = out.rank_of_id  # replaced by .to(device), changed in place (version) by set_token_counts
    cached = out.__dict__.get("_generation_layout")
    if cached is not None and cached[0] is rank_of_id and cached[1] == rank_of_id._version:
        return cached[2]
    id_of_rank = torch.argsort(rank_of_id.cpu())
    ids, perms = [], []
    for lo, hi in out.clusters():
        i, perm = id_of_rank[lo:hi].sort()
        ids.append(i.numpy())
        perms.append(perm.to(rank_of_id.device))
    value = (_Layout(ids), perms)
    object.__setattr__(out, "_generation_layout", (rank_of_id, rank_of_id._version, value))
    return value


_BANNED = tuple(t for t in range(GPT2_VOCAB_SIZE, VOCAB_SIZE) if t != EOS_ID)  # [PAD] [BOS] tags


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
        dist = reader.next_token()
        dist.adjust(_BANNED, float("-inf"))  # never [PAD] [BOS] or a tag in a story
        if n >= s["eos_bias_after"]:
            dist.adjust(EOS_ID, EOS_BIAS_STEP * (n - s["eos_bias_after"] + 1))
        token = dist.sample(s["temperature"], s["top_p"], generator)
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
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help=f"torch threads (default: ${THREADS_ENV}, else {DEFAULT_THREADS})")
    args = p.parse_args(argv)
    try:
        tags = normalize_tags(args.tags)
        settings = check_settings(args.temperature, args.top_p, args.max_tokens, args.eos_bias_after, args.seed)
        torch.set_num_threads(generation_threads(args.threads))
        model = load_model(args.model)
    except (ValueError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    generate_text(model, tags, **settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
