"""Stories in, windows out: loading local data, and the two tag approaches' exact token layout."""
import json
import random

import numpy as np
import pytest

from conftest import read_rows
from fake_hub_datasets import hub_unreachable, serve_dataset
from tinystories import DataError, load_stories, windows
from tinystories.data import (IGNORE, CacheError, LoadReport, Story, TokenizedStories, WindowDataset, collate,
                              encode_stories, in_valid_split, iter_stories, last_token_examples, tokenize_cached,
                              tokenize_source_cached)
from tinystories.tokenizer import TAGS

# Readable names for the special ids in the literal layouts below.
PAD, BOS, EOS = 50257, 50258, 50259
DIALOGUE, TWIST = 50262, 50265
_ = IGNORE  # a position whose next token is not scored

STORY = [11, 12, 13, 14, 15, 16, 17, 18]  # eight story tokens
TAGGED = ["Twist", "dialogue"]  # -> [TAG_3] [TAG_6]


# ----------------------------------------------------------------------------------------------- windows


def test_approach_2_pins_bos_and_tags_at_the_start_of_every_window():
    got = windows(STORY, TAGGED, approach=2, context=8, stride=3)
    assert got == [
        ([BOS, DIALOGUE, TWIST, 11, 12, 13, 14, 15],
         [_, _, 11, 12, 13, 14, 15, 16]),
        ([BOS, DIALOGUE, TWIST, 14, 15, 16, 17, 18],
         [_, _, _, _, _, 17, 18, EOS]),
    ]


def test_approach_1_gives_the_tags_once_and_they_slide_out_of_the_window():
    got = windows(STORY, TAGGED, approach=1, context=8, stride=3)
    assert got == [
        ([BOS, DIALOGUE, TWIST, 11, 12, 13, 14, 15],
         [_, _, 11, 12, 13, 14, 15, 16]),  # the tags are input, never targets
        ([11, 12, 13, 14, 15, 16, 17, 18],
         [_, _, _, _, _, 17, 18, EOS]),
    ]


def test_training_windows_score_every_target_of_every_window():
    got = windows(STORY, TAGGED, approach=1, context=8, stride=3, score="all")
    assert [labels for _, labels in got] == [[_, _, 11, 12, 13, 14, 15, 16], [12, 13, 14, 15, 16, 17, 18, EOS]]
    got = windows(STORY, TAGGED, approach=2, context=8, stride=3, score="all")
    # [BOS] tags -> 14 is never a target: a story starts at its first token, not in the middle
    assert [labels for _, labels in got] == [[_, _, 11, 12, 13, 14, 15, 16], [_, _, _, 15, 16, 17, 18, EOS]]


def test_an_untagged_story_starts_with_bos_alone():
    assert windows([11, 12], [], approach=2, context=8) == [([BOS, 11, 12], [11, 12, EOS])]
    assert windows([11, 12], [], approach=1, context=8) == [([BOS, 11, 12], [11, 12, EOS])]


def test_seed_examples_one_per_target_left_padded():
    story = [11, 12, 13, 14, 15]
    assert last_token_examples(story, TAGGED, approach=2, context=6) == [
        ([PAD, PAD, PAD, BOS, DIALOGUE, TWIST], 11),
        ([PAD, PAD, BOS, DIALOGUE, TWIST, 11], 12),
        ([PAD, BOS, DIALOGUE, TWIST, 11, 12], 13),
        ([BOS, DIALOGUE, TWIST, 11, 12, 13], 14),
        ([BOS, DIALOGUE, TWIST, 12, 13, 14], 15),
        ([BOS, DIALOGUE, TWIST, 13, 14, 15], EOS),
    ]
    assert last_token_examples(story, TAGGED, approach=1, context=4) == [
        ([PAD, BOS, DIALOGUE, TWIST], 11),
        ([BOS, DIALOGUE, TWIST, 11], 12),
        ([DIALOGUE, TWIST, 11, 12], 13),
        ([TWIST, 11, 12, 13], 14),
        ([11, 12, 13, 14], 15),
        ([12, 13, 14, 15], EOS),
    ]


CASES = [(n, tags, context, stride) for n in (0, 1, 5, 23, 64) for tags in ([], ["Conflict"], list(TAGS))
         for context in (8, 13, 32) for stride in (None, 1, 4)]


@pytest.mark.parametrize("approach", [1, 2])
def test_every_target_is_scored_exactly_once(approach):
    for n, tags, context, stride in CASES:
        story = list(range(100, 100 + n))
        if approach == 2 and context - 1 - len(tags) < 1:
            continue
        got = windows(story, tags, approach, context, stride, score="new")
        scored = [y for _, labels in got for y in labels if y != IGNORE]
        assert scored == story + [EOS], (n, tags, context, stride)
        for inputs, labels in got:
            assert len(inputs) == len(labels) <= context
            # a label is the next input token: windows are a real sequence, not shuffled pieces
            assert all(y == IGNORE or y == nxt for y, nxt in zip(labels, inputs[1:]))
            if approach == 2:
                assert inputs[: 1 + len(tags)] == [BOS] + [50260 + TAGS.index(t) for t in tags]
        if approach == 1 and len(got) > 1:
            assert all(BOS not in inputs for inputs, _ in got[1:])


def _tokenized(stories):
    """TokenizedStories built by hand: no tokenizer needed."""
    lengths = [len(s) for s, _ in stories]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = np.array([t for s, _ in stories for t in s], dtype=np.uint16)
    bits = np.array([sum(1 << TAGS.index(t) for t in tags) for _, tags in stories], dtype=np.uint8)
    return TokenizedStories(tokens, offsets, bits)


@pytest.mark.parametrize("approach", [1, 2])
@pytest.mark.parametrize("context, stride", [(8, None), (8, 2), (16, 5), (32, None), (32, 25)])
def test_window_dataset_has_one_item_per_window(approach, context, stride):
    rng = random.Random(context * 10 + approach)
    stories = [(list(range(200, 200 + n)), sorted(rng.sample(TAGS, rng.randint(0, 6)), key=TAGS.index))
               for n in (0, 1, 2, 7, 8, 9, 30, 31, 33, 100)]
    data = _tokenized(stories)
    for score in ("new", "all"):
        ds = WindowDataset(data, "decoder", approach, context, score=score, stride=stride)
        expected = [w for s, tags in stories for w in windows(s, tags, approach, context, stride, score)]
        assert len(ds) == len(expected)
        assert [ds[k] for k in range(len(ds))] == expected
    seed_ds = WindowDataset(data, "seed", approach, context)
    assert [seed_ds[k] for k in range(len(seed_ds))] == [
        e for s, tags in stories for e in last_token_examples(s, tags, approach, context)]


def test_collate_right_pads_decoder_windows():
    x, y = collate([([1, 2, 3], [2, 3, 4]), ([5], [_])], context=8)
    assert x.tolist() == [[1, 2, 3], [5, PAD, PAD]]
    assert y.tolist() == [[2, 3, 4], [_, _, _]]


def test_special_token_text_inside_a_story_is_not_a_special_token(tokenizer):
    [ids] = encode_stories(tokenizer, [Story("The end. [EOS] [TAG_1] More.", [])])
    assert not set(ids) & set(range(50257, 50266))


# ----------------------------------------------------------------------------------------------- loading


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_fixture_folder_uses_its_own_train_and_valid_files(stories_dir):
    train, report = load_stories(stories_dir, "train")
    valid, _ = load_stories(stories_dir, "valid")
    assert len(train) == report.stories == 40 and len(valid) == 10
    assert [s.text for s in valid] == [r["story"] for r in read_rows("valid")]
    assert [s.tags for s in train] == [r["features"] for r in read_rows("train")]
    assert {t for s in train for t in s.tags} == set(TAGS) and any(not s.tags for s in train)
    assert len(load_stories(stories_dir, "train", max_stories=7)[0]) == 7


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet"])
def test_local_file_formats_give_the_same_stories(tmp_path, fmt):
    rows = read_rows("train")
    path = tmp_path / f"stories.{fmt}"
    if fmt == "jsonl":
        _write_jsonl(path, rows)
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    train, _ = load_stories(path, "train", valid_fraction=0.25)
    valid, _ = load_stories(path, "valid", valid_fraction=0.25)
    assert sorted(s.text for s in train + valid) == sorted(r["story"] for r in rows)
    features = {r["story"]: r["features"] for r in rows}
    assert all(s.tags == features[s.text] for s in train + valid)


def test_a_file_without_a_valid_split_is_split_by_a_hash_of_each_story(tmp_path):
    rows = read_rows("train") + read_rows("valid")
    a = _write_jsonl(tmp_path / "a.jsonl", rows)
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    b = _write_jsonl(tmp_path / "b.jsonl", shuffled)
    train = {s.text for s in load_stories(a, "train", valid_fraction=0.3)[0]}
    valid = {s.text for s in load_stories(a, "valid", valid_fraction=0.3)[0]}
    assert train and valid and not train & valid and train | valid == {r["story"] for r in rows}
    assert valid == {r["story"] for r in rows if in_valid_split(r["story"], 0.3)}
    # the same split whatever the row order: a story never moves between train and valid
    assert {s.text for s in load_stories(b, "valid", valid_fraction=0.3)[0]} == valid


def test_a_folder_without_split_names_is_hash_split_too(tmp_path):
    rows = read_rows("train")
    _write_jsonl(tmp_path / "part-0.jsonl", rows[:20])
    _write_jsonl(tmp_path / "part-1.jsonl", rows[20:])
    train, _ = load_stories(tmp_path, "train", valid_fraction=0.3)
    valid, _ = load_stories(tmp_path, "valid", valid_fraction=0.3)
    assert len(train) + len(valid) == 40 and valid


def test_bad_rows_are_skipped_and_counted(tmp_path):
    good = {"story": "Tim ran.", "features": ["Dialogue"], "words": [], "id": 1}
    path = _write_jsonl(tmp_path / "train.jsonl", [
        good,
        '{"story": "cut off',  # malformed JSON line
        {"features": ["Twist"]},  # no story
        {"story": "   ", "features": []},  # empty story
        {"story": None},
        {"story": "Sue sang.", "features": "Twist"},  # features not a list
        "[1, 2]",  # not an object
        "",  # blank lines are not rows
        {"story": "  Max hid.  ", "features": None},  # no features: an untagged story
    ])
    stories, report = load_stories(path.parent, "train")
    assert [(s.text, s.tags) for s in stories] == [("Tim ran.", ["Dialogue"]), ("Max hid.", [])]
    assert report.stories == 2
    assert dict(report.skipped) == {"malformed JSON": 1, "missing or empty story": 3, "features not a list": 1,
                                    "not an object": 1}
    assert "skipped rows" in str(report) and "malformed JSON" in str(report)


def test_unknown_features_are_dropped_and_counted(tmp_path):
    path = _write_jsonl(tmp_path / "train.jsonl", [
        {"story": "A.", "features": ["Dialogue", "Happy", "twist"]},
        {"story": "B.", "features": ["Happy", "Rhyme"]},
    ])
    stories, report = load_stories(path.parent, "train")
    assert [s.tags for s in stories] == [["Dialogue", "Twist"], []]
    assert dict(report.dropped_features) == {"Happy": 2, "Rhyme": 1}
    assert "Happy" in str(report)


@pytest.mark.parametrize("content", ["", "\n\n", '{"story": ""}\nnot json\n'])
def test_a_file_without_usable_stories_is_a_data_error(tmp_path, content):
    path = tmp_path / "train.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match="no usable stories"):
        load_stories(path.parent, "train")


def test_a_missing_path_is_a_data_error(tmp_path):
    missing = tmp_path / "nowhere" / "stories.jsonl"
    with pytest.raises(DataError, match="does not exist") as e:
        load_stories(missing)
    assert str(missing) in str(e.value)


def test_a_folder_without_the_requested_split_or_data_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no .jsonl/.json/.parquet files"):
        load_stories(tmp_path)
    _write_jsonl(tmp_path / "train.jsonl", read_rows("train")[:2])
    with pytest.raises(DataError, match="no valid file"):
        load_stories(tmp_path, "valid")


def test_split_names_other_than_train_and_valid_are_refused(stories_dir):
    with pytest.raises(ValueError, match="split must be"):
        load_stories(stories_dir, "dev")


# ----------------------------------------------------------------------------------------------- token cache


def _same(a: TokenizedStories, b: TokenizedStories) -> bool:
    return all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("tokens", "offsets", "tag_bits"))


def _cache_folders(cache):
    return sorted(p for p in cache.iterdir() if p.name.startswith("tokens-"))


@pytest.fixture(scope="module")
def train_stories(stories_dir):
    return load_stories(stories_dir, "train")[0]


def test_the_token_cache_is_a_folder_opened_as_memmaps_that_equals_a_fresh_build(tokenizer, train_stories, tmp_path):
    cached = tokenize_cached(tokenizer, train_stories, tmp_path)
    [folder] = _cache_folders(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "offsets.npy", "tag_bits.npy", "tokens.npy"]
    assert all(isinstance(a, np.memmap) for a in (cached.tokens, cached.offsets, cached.tag_bits))
    fresh = TokenizedStories.build(tokenizer, train_stories)
    assert _same(cached, fresh)
    assert json.loads((folder / "meta.json").read_text())["stories"] == 40
    # everything downstream reads the read-only memmaps exactly as in-memory arrays
    for arch, approach in [("decoder", 1), ("decoder", 2), ("seed", 2)]:
        a, b = WindowDataset(cached, arch, approach, 16), WindowDataset(fresh, arch, approach, 16)
        assert len(a) == len(b) and all(a[k] == b[k] for k in range(0, len(a), 7))
    assert np.array_equal(cached.token_counts(50266), np.bincount(fresh.tokens, minlength=50266))
    assert np.array_equal(cached.token_counts(50266, chunk=100), cached.token_counts(50266))
    assert _same(cached.head(3), TokenizedStories.build(tokenizer, train_stories[:3]))


def test_tokens_are_written_batch_by_batch_into_the_same_arrays(tokenizer, train_stories, tmp_path):
    written = TokenizedStories.write(tmp_path / "c", tokenizer, iter(train_stories), batch=7)
    assert _same(written, TokenizedStories.build(tokenizer, train_stories))
    assert _same(TokenizedStories.load(tmp_path / "c", mmap=False), written)
    written.save(tmp_path / "saved")  # arrays in memory (or memmaps) saved as a folder of their own
    assert _same(TokenizedStories.load(tmp_path / "saved"), written)


def test_a_second_call_reads_the_cache_without_tokenizing(tokenizer, train_stories, tmp_path, monkeypatch):
    first = tokenize_cached(tokenizer, train_stories, tmp_path)

    def no_build(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(TokenizedStories, "write", no_build)
    assert _same(tokenize_cached(tokenizer, train_stories, tmp_path), first)
    with pytest.raises(AssertionError):  # other stories: another cache
        tokenize_cached(tokenizer, train_stories[:5], tmp_path)


def _drop_meta(folder):
    (folder / "meta.json").unlink()


def _truncate_tokens(folder):
    with open(folder / "tokens.npy", "r+b") as f:
        f.truncate(f.seek(0, 2) - 10)


def _drop_offsets(folder):
    (folder / "offsets.npy").unlink()


def _wrong_counts(folder):
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "tokens": meta["tokens"] + 1}))


@pytest.mark.parametrize("damage", [_drop_meta, _truncate_tokens, _drop_offsets, _wrong_counts])
def test_a_damaged_cache_folder_is_rebuilt(tokenizer, train_stories, tmp_path, damage):
    tokenize_cached(tokenizer, train_stories, tmp_path)
    [folder] = _cache_folders(tmp_path)
    damage(folder)
    with pytest.raises(CacheError):
        TokenizedStories.load(folder)
    rebuilt = tokenize_cached(tokenizer, train_stories, tmp_path)
    assert _same(rebuilt, TokenizedStories.build(tokenizer, train_stories))
    assert _cache_folders(tmp_path) == [folder] and _same(TokenizedStories.load(folder), rebuilt)


def test_a_crash_while_tokenizing_leaves_no_cache_behind(tokenizer, train_stories, tmp_path):
    def stories_then_crash():
        yield from train_stories[:10]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        TokenizedStories.write(tmp_path / "tokens-x", tokenizer, stories_then_crash(), batch=4)
    assert list(tmp_path.iterdir()) == []  # neither a half cache nor its temp folder


# ----------------------------------------------------------------------------------------------- streaming


def test_a_streamed_hub_dataset_gives_the_stories_a_download_gives(monkeypatch):
    rows = read_rows("train") + read_rows("valid")  # "train" only, like TinyStories-GPT4: split by hash
    calls = serve_dataset(monkeypatch, {"train": rows})
    for split in ("train", "valid"):
        streamed, report = load_stories("someone/stories", split, valid_fraction=0.3, streaming=True)
        downloaded, _ = load_stories("someone/stories", split, valid_fraction=0.3)
        assert streamed == downloaded and report.stories == len(streamed)
        assert [s.text for s in streamed] == [r["story"] for r in rows
                                              if in_valid_split(r["story"], 0.3) == (split == "valid")]
    assert ("load_dataset", "someone/stories", "train", True) in calls


def test_iter_stories_reads_no_further_than_max_stories(tmp_path):
    rows = read_rows("train")
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:5]) + "not json\n" * 3)
    report = LoadReport(str(path), "train")
    assert [s.text for s in iter_stories(path.parent, "train", max_stories=5, report=report)] == [
        r["story"] for r in rows[:5]]
    assert not report.skipped  # the bad rows after the fifth story were never read


def test_a_streamed_source_is_tokenized_into_the_cache_and_reused_without_the_hub(tokenizer, tmp_path, monkeypatch):
    rows = read_rows("train") + read_rows("valid")
    calls = serve_dataset(monkeypatch, {"train": rows})
    data, report = tokenize_source_cached(tokenizer, "someone/stories", "valid", tmp_path, valid_fraction=0.3)
    assert calls[-1] == ("load_dataset", "someone/stories", "train", True)
    expected = load_stories("someone/stories", "valid", valid_fraction=0.3)[0]
    assert isinstance(data.tokens, np.memmap) and _same(data, TokenizedStories.build(tokenizer, expected))
    hub_unreachable(monkeypatch)
    again, report_again = tokenize_source_cached(tokenizer, "someone/stories", "valid", tmp_path, valid_fraction=0.3)
    assert _same(again, data) and str(report_again) == str(report) == f"{len(expected)} valid stories from someone/stories"
    with pytest.raises(DataError, match="cannot read dataset"):  # other arguments: another cache, read afresh
        tokenize_source_cached(tokenizer, "someone/stories", "valid", tmp_path, valid_fraction=0.5)


def test_a_local_source_is_re_read_when_its_file_changes(tokenizer, tmp_path):
    rows = read_rows("train")
    path = tmp_path / "data" / "train.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:20]))
    first, report = tokenize_source_cached(tokenizer, path.parent, "train", tmp_path / "cache")
    assert len(first) == report.stories == 20
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    second, report = tokenize_source_cached(tokenizer, path.parent, "train", tmp_path / "cache")
    assert len(second) == 40 and report.skipped == {"malformed JSON": 1}


def test_a_streamed_source_without_usable_stories_is_a_data_error_and_caches_nothing(tokenizer, tmp_path):
    (tmp_path / "train.jsonl").write_text('{"story": ""}\n')
    with pytest.raises(DataError, match="no usable stories"):
        tokenize_source_cached(tokenizer, tmp_path, "train", tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())
