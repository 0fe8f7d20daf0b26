"""Stories in, model windows out.

Loading: one function for a Hub dataset id (default `skeskinen/TinyStories-GPT4`) or local .jsonl/.json/.parquet
files and folders with the same columns (`story`, `features`). Bad rows are skipped and counted, never fatal,
unless nothing usable remains.

Tokens: every story once, as a flat uint16 array cached on disk (a folder of .npy files, memory-mapped on load,
written batch by batch): the 2.7M-story dataset is neither held in RAM nor re-tokenized on the next run.

Windows: the seed's two tag insertion approaches.
  approach 1: [BOS] tags story [EOS] is one sequence; windows slide over it, so the tags leave the context.
  approach 2: every window starts with [BOS] tags (pinned), then the next slice of the story.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import tempfile
import zlib
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .tokenizer import BOS_ID, EOS_ID, PAD_ID, TAGS, normalize_tags, tag_ids

DEFAULT_DATASET = "skeskinen/TinyStories-GPT4"
IGNORE = -100  # label of a position whose next token is not scored
DATA_EXTENSIONS = (".jsonl", ".json", ".parquet")
_SPLIT_NAMES = {"train": ("train",), "valid": ("valid", "validation", "val", "test")}
_SPECIAL_TEXT = re.compile(r"\[(PAD|BOS|EOS|TAG_\d+)\]")


class DataError(ValueError):
    """No usable stories in a data source, or a source that cannot be read."""


class CacheError(ValueError):
    """A token cache folder that is missing, half written or damaged: tokenize_cached rebuilds it."""


@dataclass
class Story:
    text: str
    tags: list[str]


@dataclass
class LoadReport:
    """What a load kept and what it skipped, for the log and the model card."""

    source: str
    split: str
    stories: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> rows
    dropped_features: Counter = field(default_factory=Counter)  # unknown feature name -> count

    def __str__(self) -> str:
        s = f"{self.stories:,} {self.split} stories from {self.source}"
        if self.skipped:
            s += "; skipped rows: " + ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
        if self.dropped_features:
            s += "; dropped unknown features: " + ", ".join(f"{k!r} x{n}" for k, n in self.dropped_features.items())
        return s


# ----------------------------------------------------------------------------------------------- loading


def in_valid_split(text: str, valid_fraction: float) -> bool:
    """Deterministic, order-free split for sources with no validation split: a hash of the story."""
    return zlib.crc32(text.encode("utf-8")) % 10_000 < valid_fraction * 10_000


def iter_stories(
    source: str | os.PathLike = DEFAULT_DATASET,
    split: str = "train",
    max_stories: int | None = None,
    valid_fraction: float = 0.01,
    streaming: bool = False,
    report: LoadReport | None = None,
) -> Iterator[Story]:
    """Stories with their tags, one at a time, from a local file/folder or a Hub dataset id.

    `split` is "train" or "valid". A folder's files are matched by name (train*, valid*/validation*/test*); a
    source with no valid split is split deterministically by a hash of each story (`valid_fraction`), so a
    streamed source splits exactly as a downloaded one. `streaming=True` reads a Hub dataset as a stream
    (`datasets.load_dataset(..., streaming=True)`: nothing is downloaded whole); local files are always read
    lazily (a .json array file is the exception: it is parsed whole). Skipped rows are counted in `report`.
    The source is opened (and checked) at the call, the rows are read as the iterator is consumed.
    """
    if split not in _SPLIT_NAMES:
        raise ValueError(f"split must be 'train' or 'valid', got {split!r}")
    report = report if report is not None else LoadReport(source=str(source), split=split)
    path = Path(source)
    if path.exists():
        rows, hash_split = _local_rows(path, split)
    elif _looks_like_path(str(source)):
        raise DataError(f"data source {source} does not exist (give a .jsonl/.json/.parquet file, a folder, or a Hub id)")
    else:
        rows, hash_split = _hub_rows(str(source), split, streaming)
    return _stories(rows, hash_split, split, max_stories, valid_fraction, report)


def _stories(rows, hash_split: bool, split: str, max_stories, valid_fraction: float, report: LoadReport):
    for row in rows:
        if max_stories is not None and report.stories >= max_stories:
            return  # before the next row is read: a stream is never read further than needed
        story = _clean_row(row, report)
        if story is None:
            continue
        if hash_split and in_valid_split(story.text, valid_fraction) != (split == "valid"):
            continue
        report.stories += 1
        yield story


def load_stories(
    source: str | os.PathLike = DEFAULT_DATASET,
    split: str = "train",
    max_stories: int | None = None,
    valid_fraction: float = 0.01,
    streaming: bool = False,
) -> tuple[list[Story], LoadReport]:
    """All stories of `iter_stories` as a list, and what was skipped; DataError if none is usable."""
    report = LoadReport(source=str(source), split=split)
    stories = list(iter_stories(source, split, max_stories, valid_fraction, streaming, report))
    if not stories:
        raise DataError(f"no usable stories in {source} ({split} split): {report}")
    return stories, report


def _looks_like_path(s: str) -> bool:
    return s.startswith((".", "/", "~")) or s.endswith(DATA_EXTENSIONS) or s.count("/") != 1


def _local_rows(path: Path, split: str) -> tuple[Iterator, bool]:
    if path.is_file():
        return _file_rows(path), True
    files = _local_files(path)
    if not files:
        raise DataError(f"no .jsonl/.json/.parquet files in folder {path}")
    named = [p for p in files if p.name.lower().startswith(_SPLIT_NAMES[split])]
    has_splits = any(p.name.lower().startswith(n) for p in files for names in _SPLIT_NAMES.values() for n in names)
    if has_splits:  # the folder has its own split: use it
        if not named:
            raise DataError(f"folder {path} has no {split} file (looked for {', '.join(_SPLIT_NAMES[split])}*)")
        return (row for p in named for row in _file_rows(p)), False
    return (row for p in files for row in _file_rows(p)), True


def _file_rows(path: Path) -> Iterator:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):  # row groups, not the whole table
            yield from batch.to_pylist()
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.read(1)
        while first and first.isspace():
            first = f.read(1)
        f.seek(0)
        if path.suffix == ".json" and first == "[":
            try:
                yield from json.load(f)
            except json.JSONDecodeError as e:
                raise DataError(f"{path} is not valid JSON: {e}") from None
            return
        for line in f:
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                yield _MALFORMED


_MALFORMED = object()


def _hub_rows(repo_id: str, split: str, streaming: bool) -> tuple[Iterator, bool]:
    import datasets

    try:
        splits = datasets.get_dataset_split_names(repo_id)
    except Exception as e:  # offline, missing repo, private repo...
        raise DataError(f"cannot read dataset {repo_id!r} from the Hugging Face Hub: {e}") from None
    valid_name = next((n for n in _SPLIT_NAMES["valid"] if n in splits), None)
    if valid_name is None:  # no valid split (TinyStories-GPT4 has "train" only): both come from it, by hash
        name, hash_split = ("train" if "train" in splits else splits[0]), True
    else:
        name, hash_split = ("train" if split == "train" else valid_name), False
    ds = datasets.load_dataset(repo_id, split=name, streaming=streaming)
    return iter(ds), hash_split


def _clean_row(row, report: LoadReport) -> Story | None:
    if row is _MALFORMED:
        report.skipped["malformed JSON"] += 1
        return None
    if not isinstance(row, dict):
        report.skipped["not an object"] += 1
        return None
    text = row.get("story")
    if not isinstance(text, str) or not text.strip():
        report.skipped["missing or empty story"] += 1
        return None
    features = row.get("features") or []
    if not isinstance(features, (list, tuple)):
        report.skipped["features not a list"] += 1
        return None
    tags = []
    for f in features:
        try:
            tags += normalize_tags([f])
        except ValueError:
            report.dropped_features[str(f)] += 1
    return Story(text=text.strip(), tags=normalize_tags(tags))


# ----------------------------------------------------------------------------------------------- tokens


def encode_stories(tokenizer, stories: list[Story]) -> list[list[int]]:
    """Token ids of each story's text (no special tokens; special-token strings in a story are removed)."""
    texts = [_SPECIAL_TEXT.sub("", s.text) for s in stories]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


CACHE_VERSION = 2  # 1: one .npz per cache (tokens-*.npz files: ignored now, safe to delete); 2: a folder of .npy


@dataclass
class TokenizedStories:
    """All stories as one flat uint16 token array + offsets, and each story's tags as a bit mask.

    Compact (2 bytes a token) and memory-mappable: `load(folder)` opens the arrays with np.load(mmap_mode="r"),
    so the 2.7M-story dataset (~0.5G tokens) is paged in from disk as windows are cut, never read into RAM.
    The arrays may be read-only memmaps: nothing downstream writes to them.
    """

    tokens: np.ndarray  # uint16 [total tokens]
    offsets: np.ndarray  # int64 [stories + 1]
    tag_bits: np.ndarray  # uint8 [stories], bit i = TAGS[i]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def story_ids(self, i: int) -> list[int]:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]].tolist()

    def tags(self, i: int) -> list[str]:
        return [t for b, t in enumerate(TAGS) if self.tag_bits[i] >> b & 1]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def head(self, n: int) -> "TokenizedStories":
        """The first n stories (views, no copy)."""
        n = min(n, len(self))
        return TokenizedStories(self.tokens[: self.offsets[n]], self.offsets[: n + 1], self.tag_bits[:n])

    def token_counts(self, minlength: int = 0, chunk: int = 1 << 24) -> np.ndarray:
        """How often each id occurs; in chunks, as np.bincount would copy a whole memmap to int64 first."""
        counts = np.zeros(minlength, dtype=np.int64)
        for i in range(0, len(self.tokens), chunk):
            c = np.bincount(self.tokens[i : i + chunk], minlength=minlength)
            if len(c) > len(counts):
                counts = np.pad(counts, (0, len(c) - len(counts)))
            counts[: len(c)] += c
        return counts

    @classmethod
    def build(cls, tokenizer, stories: list[Story], batch: int = 2048) -> "TokenizedStories":
        """Tokenize in memory (small sets: tests, evaluation). `write` builds a cache folder in bounded memory."""
        lengths, tokens, bits = [np.zeros(0, np.int64)], [np.zeros(0, np.uint16)], [np.zeros(0, np.uint8)]
        for n, t, b in _encoded_batches(tokenizer, stories, batch):
            lengths.append(n)
            tokens.append(t)
            bits.append(b)
        offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths))])
        return cls(np.concatenate(tokens), offsets, np.concatenate(bits))

    # --- on disk: a folder tokens.npy + offsets.npy + tag_bits.npy + meta.json, written atomically

    def save(self, path: str | os.PathLike, meta: dict | None = None) -> None:
        """Write arrays already in memory as a cache folder (atomically, like `write`)."""
        with _atomic_folder(Path(path)) as tmp:
            for name in ("tokens", "offsets", "tag_bits"):
                np.save(tmp / f"{name}.npy", getattr(self, name))
            _write_meta(tmp, len(self), len(self.tokens), meta)

    @classmethod
    def write(cls, path: str | os.PathLike, tokenizer, stories: Iterable[Story], batch: int = 2048,
              meta: dict | Callable[[], dict] | None = None) -> "TokenizedStories":
        """Tokenize `stories` (any iterable: a list, a file read lazily, a Hub stream) into a cache folder.

        Memory stays bounded: each batch's tokens are appended to tokens.npy (whose header, written first with
        shape (0,), is rewritten with the final length: numpy pads .npy headers for exactly this), and only the
        per-story lengths and tag bits (9 bytes a story) are kept. Returns the folder, memory-mapped.
        Parallelism: the fast tokenizer's batch call already encodes on every core (Rust threads), so
        datasets.map(num_proc=...) would add processes and pickling for no gain, and a stream has no num_proc.
        `meta`: extra meta.json entries, or a function that gives them once the stories are read.
        Raises DataError, and leaves nothing behind, if `stories` is empty.
        """
        path = Path(path)
        lengths, bits = [], []
        with _atomic_folder(path) as tmp:
            with open(tmp / "tokens.npy", "wb") as f:
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint16)), "fortran_order": False}
                np.lib.format.write_array_header_1_0(f, {**header, "shape": (0,)})
                data_start = f.tell()
                for n, tokens, b in _encoded_batches(tokenizer, stories, batch):
                    tokens.tofile(f)
                    lengths.append(n)
                    bits.append(b)
                if not lengths:
                    raise DataError(f"no stories to tokenize into {path}")
                n_tokens = (f.tell() - data_start) // 2
                f.seek(0)
                np.lib.format.write_array_header_1_0(f, {**header, "shape": (n_tokens,)})
                assert f.tell() == data_start, "the .npy header changed length"
            lengths = np.concatenate(lengths)
            np.save(tmp / "offsets.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
            np.save(tmp / "tag_bits.npy", np.concatenate(bits))
            _write_meta(tmp, len(lengths), n_tokens, meta() if callable(meta) else meta)
        return cls.load(path)

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True) -> "TokenizedStories":
        """Open a cache folder (memory-mapped unless mmap=False). CacheError if it is incomplete or damaged."""
        path = Path(path)
        try:
            meta = json.loads((path / "meta.json").read_text())  # written last: no meta, no finished cache
            arrays = [np.load(path / f"{name}.npy", mmap_mode="r" if mmap else None)
                      for name in ("tokens", "offsets", "tag_bits")]
        except (OSError, ValueError) as e:  # missing files; a truncated .npy ("mmap length is greater...")
            raise CacheError(f"token cache {path} is incomplete or damaged: {e}") from None
        data = cls(*arrays)
        n, n_tokens = meta.get("stories"), meta.get("tokens")
        if (meta.get("version") != CACHE_VERSION or data.tokens.dtype != np.uint16 or data.tokens.shape != (n_tokens,)
                or data.offsets.shape != (n + 1,) or data.tag_bits.shape != (n,)
                or data.offsets[0] != 0 or data.offsets[-1] != n_tokens):
            raise CacheError(f"token cache {path} does not match its meta.json {meta}")
        return data


def _encoded_batches(tokenizer, stories: Iterable[Story], batch: int):
    """Per batch of stories: (their token counts int64, all their tokens uint16, their tag bits uint8)."""
    stories = iter(stories)
    while chunk := list(itertools.islice(stories, batch)):
        ids = encode_stories(tokenizer, chunk)
        lengths = np.array([len(x) for x in ids], dtype=np.int64)
        tokens = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.uint16, count=int(lengths.sum()))
        yield lengths, tokens, _tag_bits(chunk)


def _tag_bits(stories: list[Story]) -> np.ndarray:
    return np.array([sum(1 << TAGS.index(t) for t in s.tags) for s in stories], dtype=np.uint8)


def _write_meta(folder: Path, stories: int, tokens: int, meta: dict | None) -> None:
    info = {"version": CACHE_VERSION, "stories": stories, "tokens": tokens, **(meta or {})}
    (folder / "meta.json").write_text(json.dumps(info, indent=1))


@contextmanager
def _atomic_folder(path: Path):
    """Yield a temp folder next to `path`; if the block succeeds it becomes `path` (a rename), else it is removed.

    A crash leaves at worst a `.NAME.*.tmp` folder, which is never loaded; never a half-written `path`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        try:
            os.replace(tmp, path)
        except OSError:  # a folder is in the way: a damaged cache, or another process just finished the same one
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cache_key(tokenizer, *parts) -> str:
    h = hashlib.sha1(f"v{CACHE_VERSION}".encode())
    h.update(tokenizer.backend_tokenizer.to_str().encode())
    for part in parts:
        h.update(part if isinstance(part, bytes) else repr(part).encode())
    return h.hexdigest()[:16]


def _load_or_build(path: Path, build) -> TokenizedStories:
    if path.exists():
        try:
            return TokenizedStories.load(path)
        except CacheError:
            pass  # a damaged cache: build it again (the rename replaces it)
    return build()


def tokenize_cached(tokenizer, stories: list[Story], cache_dir: str | os.PathLike | None) -> TokenizedStories:
    """Tokenize once; later runs on the same stories and tokenizer open the cached folder, memory-mapped.

    The cache is keyed by the tokenizer and every story's text and tags. Caches from before the folder format
    (tokens-*.npz) are not read: they are rebuilt as folders, and the old files can be deleted.
    """
    if cache_dir is None:
        return TokenizedStories.build(tokenizer, stories)
    h = hashlib.sha1()
    for s in stories:
        h.update(s.text.encode())
        h.update(",".join(s.tags).encode() + b"\0")
    path = Path(cache_dir) / f"tokens-{_cache_key(tokenizer, h.digest())}"
    return _load_or_build(path, lambda: TokenizedStories.write(path, tokenizer, stories))


def tokenize_source_cached(
    tokenizer,
    source: str | os.PathLike,
    split: str,
    cache_dir: str | os.PathLike,
    max_stories: int | None = None,
    valid_fraction: float = 0.01,
    streaming: bool = True,
) -> tuple[TokenizedStories, LoadReport]:
    """The stories of a source, tokenized straight from `iter_stories` into a cache folder (memory-mapped).

    The stories are never all in memory, so the key cannot be their text: it is (source, split, max_stories,
    valid_fraction, tokenizer), plus each local file's size and modification time. The cache is checked before
    the source is opened, so a second run with the same arguments reads neither the files nor the network.
    A Hub dataset that changes under the same id is not noticed: delete the cache folder to re-read it.
    """
    files = _local_files(Path(source)) if Path(source).exists() else []
    stamps = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    key = _cache_key(tokenizer, "source", str(source), split, max_stories, valid_fraction, stamps)
    path = Path(cache_dir) / f"tokens-{key}"

    def build() -> TokenizedStories:
        report = LoadReport(source=str(source), split=split)
        stories = iter_stories(source, split, max_stories, valid_fraction, streaming, report)
        first = next(stories, None)
        if first is None:
            raise DataError(f"no usable stories in {source} ({split} split): {report}")
        return TokenizedStories.write(path, tokenizer, itertools.chain([first], stories),
                                      meta=lambda: {"report": _report_dict(report)})

    data = _load_or_build(path, build)
    meta = json.loads((path / "meta.json").read_text())
    return data, _report_from_dict(meta["report"])


def _local_files(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in DATA_EXTENSIONS)


def _report_dict(report: LoadReport) -> dict:
    return {"source": report.source, "split": report.split, "stories": report.stories,
            "skipped": dict(report.skipped), "dropped_features": dict(report.dropped_features)}


def _report_from_dict(d: dict) -> LoadReport:
    return LoadReport(d["source"], d["split"], d["stories"], Counter(d["skipped"]), Counter(d["dropped_features"]))


# ----------------------------------------------------------------------------------------------- windows


def prefix_and_body(story_ids: list[int], tags, approach: int) -> tuple[list[int], list[int], int]:
    """Split a story into (pinned prefix, body, index of the first body token that is scored).

    approach 1: no pinned prefix; body = [BOS] tags story [EOS]; the tags are input, not targets.
    approach 2: prefix = [BOS] tags, pinned at the start of every window; body = story [EOS].
    """
    head = [BOS_ID] + tag_ids(tags)
    if approach == 1:
        return [], head + list(story_ids) + [EOS_ID], len(head)
    if approach == 2:
        return head, list(story_ids) + [EOS_ID], 0
    raise ValueError(f"approach must be 1 or 2, got {approach!r}")


def default_stride(context: int, prefix_len: int = 7) -> int:
    """How far the window moves when it is full: half the room left after the longest tag prefix."""
    return max(1, (context - prefix_len) // 2)


def windows(story_ids, tags, approach: int, context: int, stride: int | None = None, score: str = "new"):
    """Causal-decoder windows of one story: a list of (input_ids, labels), each at most `context` long.

    labels[j] is the token that follows input_ids[j], or IGNORE. Windows start `stride` body tokens apart.
    score="new": every target token is scored exactly once, in the first window that sees it with the most
    context (evaluation, and the rule generation follows). score="all": every target in every window (training).
    """
    prefix, body, first = prefix_and_body(story_ids, tags, approach)
    room = context - len(prefix)  # body tokens a window holds as input
    if room < 1:
        raise ValueError(f"context {context} is too short for a {len(prefix)}-token tag prefix")
    stride = min(stride or default_stride(context), room)  # a longer stride would skip targets
    out, start, scored_to = [], 0, first  # scored_to: body index of the first target not yet scored
    while True:
        end = min(start + room, len(body) - 1)  # body[start:end] is input; body[end] the last target
        seq = prefix + body[start : end + 1]
        targets = seq[1:]
        positions = range(len(prefix) - 1 if prefix else 0, len(seq) - 1)  # input positions with body targets
        labels = [IGNORE] * len(targets)
        for j in positions:
            body_index = j + 1 - len(prefix) + start
            if prefix and body_index == start > 0:
                # [BOS] tags -> a mid-story token: never a target, or the model would learn that a story may
                # begin anywhere (generation starts from [BOS] tags alone, at the story's first token).
                continue
            if body_index >= first and (score == "all" or body_index >= scored_to):
                labels[j] = targets[j]
        out.append((seq[:-1], labels))
        scored_to = end + 1
        if end >= len(body) - 1:
            return out
        start += stride


def last_token_examples(story_ids, tags, approach: int, context: int):
    """The seed arch's training examples: for every target token, (the `context` tokens before it, target).

    The seed predicts from its last position only, so each target gets its own window, left-padded with [PAD].
    """
    prefix, body, first = prefix_and_body(story_ids, tags, approach)
    room = context - len(prefix)
    out = []
    for t in range(first, len(body)):
        window = prefix + body[max(0, t - room) : t]
        out.append(([PAD_ID] * (context - len(window)) + window, body[t]))
    return out


class WindowDataset:
    """Model examples over TokenizedStories, built lazily: windows for the decoder, per-token ones for the seed.

    Indexing is a (story, window) table, computed once with numpy; examples are cut on demand.
    """

    def __init__(self, data: TokenizedStories, arch: str, approach: int, context: int, score: str = "all",
                 stride: int | None = None):
        self.data, self.arch, self.approach, self.context, self.score = data, arch, approach, context, score
        self.stride = stride or default_stride(context)
        if arch == "seed":
            # story i yields one example per scored target: its story tokens + [EOS]
            counts = data.lengths + 1
        else:
            counts = self._window_counts()
        self.story_of = np.repeat(np.arange(len(data)), counts)
        self.index_in_story = np.arange(len(self.story_of)) - np.repeat(np.cumsum(counts) - counts, counts)

    def _window_counts(self) -> np.ndarray:
        # mirrors windows(): body length n (+ tags for approach 1); windows start every `stride` tokens
        n_tags = np.unpackbits(np.asarray(self.data.tag_bits, dtype=np.uint8)[:, None], axis=1).sum(1, dtype=np.int64)
        if self.approach == 1:
            body = self.data.lengths + 1 + n_tags + 1
            room = np.full(len(body), self.context)
        else:
            body = self.data.lengths + 1
            room = self.context - 1 - n_tags
        stride = np.minimum(self.stride, room)  # as windows(): never past the room a window holds
        # window k covers body[k*stride : k*stride+room]; the last one reaches body[-1]
        last = body - 1
        return 1 + np.maximum(0, np.ceil((last - room) / stride)).astype(np.int64)

    def _story_windows(self, i: int):
        return windows(self.data.story_ids(i), self.data.tags(i), self.approach, self.context, self.stride, self.score)

    def __len__(self) -> int:
        return len(self.story_of)

    def __getitem__(self, k: int):
        i, j = int(self.story_of[k]), int(self.index_in_story[k])
        if self.arch == "seed":
            prefix, body, first = prefix_and_body(self.data.story_ids(i), self.data.tags(i), self.approach)
            t = first + j
            room = self.context - len(prefix)
            window = prefix + body[max(0, t - room) : t]
            return [PAD_ID] * (self.context - len(window)) + window, body[t]
        return self._story_windows(i)[j]


def collate(batch, context: int):
    """Stack examples into tensors: decoder windows are right-padded ([PAD] input, IGNORE label)."""
    import torch

    inputs, labels = zip(*batch)
    if isinstance(labels[0], int):  # seed examples: already left-padded to `context`
        return torch.tensor(inputs), torch.tensor(labels)
    n = max(len(x) for x in inputs)
    x = torch.full((len(batch), n), PAD_ID, dtype=torch.long)
    y = torch.full((len(batch), n), IGNORE, dtype=torch.long)
    for r, (a, b) in enumerate(batch):
        x[r, : len(a)] = torch.tensor(a)
        y[r, : len(b)] = torch.tensor(b)
    return x, y
