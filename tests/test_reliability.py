"""Reliability: many users at once, hostile input, interrupted training, broken weights, bad data, failed pushes.

Each test injects one fault and checks that the project survives it with a clear message (and no traceback) or
recovers by itself. Related checks that already live elsewhere, not repeated here:
  tests/test_hub.py   load_model on a missing folder / truncated weights / version-99 or unknown-field config /
                      unreachable Hub repo (each a CheckpointError), and a save killed between its renames
  tests/test_data.py  malformed JSON lines, missing story, non-list features, unknown tags, empty files
                      (skipped and counted in LoadReport, DataError when nothing is left)
  tests/test_train.py a push whose create_repo fails; --resume without a checkpoint
  tests/test_app.py   the documented bad values one by one, through the functions and through the API
"""
from __future__ import annotations

import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from huggingface_hub import HfApi  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import app  # noqa: E402
import tinystories.hub  # noqa: E402
from tinystories.evaluate import main as evaluate_main  # noqa: E402
from tinystories.generate import main as generate_main  # noqa: E402
from conftest import ROOT, STORIES, free_port, read_rows, tiny_train_args  # noqa: E402
from tinystories import (MAX_TOKENS, TAGS, CheckpointError, TinyStoriesConfig, TinyStoriesModel, load_model,  # noqa: E402
                         save_checkpoint)

FIGURES: dict = {}  # what the tests measured, printed at the end (pytest -s) for the README


def tiny_model(approach: int, tokenizer) -> TinyStoriesModel:
    torch.manual_seed(approach)
    model = TinyStoriesModel(TinyStoriesConfig(arch="decoder", approach=approach, d_model=32, n_heads=2, n_layers=1,
                                               d_ff=64, context=16, cutoffs=(100, 1000))).eval()
    model.tokenizer = tokenizer
    return model


def subprocess_env(**extra) -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra}


# ------------------------------------------------------------------------------ 1. many users at once


USERS = 8


@pytest.mark.slow
def test_eight_users_at_once_all_get_their_stories_two_at_a_time(loopback, monkeypatch):
    from gradio_client import Client

    models, notes = app.load_models(app.model_sources(environ={}))
    assert set(models) == {1, 2}, notes
    running = dict(now=0, peak=0)
    lock = threading.Lock()

    def counted(fn):
        def wrapper(*args, **kwargs):
            with lock:
                running["now"] += 1
                running["peak"] = max(running["peak"], running["now"])
            try:
                yield from fn(*args, **kwargs)
            finally:
                with lock:
                    running["now"] -= 1
        return wrapper

    monkeypatch.setattr(app, "generate_story", counted(app.generate_story))
    monkeypatch.setattr(app, "compare_stories", counted(app.compare_stories))
    demo = app.build_demo(models, notes)
    # the queue's limit is the documented one, on both events, shared by them (one pool of CONCURRENCY slots)
    events = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name in ("generate", "compare")}
    assert set(events) == {"generate", "compare"}
    assert {fn.concurrency_limit for fn in events.values()} == {app.CONCURRENCY}
    assert len({fn.concurrency_id for fn in events.values()}) == 1
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        def user(i: int):
            client = Client(demo.local_url, verbose=False)
            request = dict(tags=[TAGS[i % len(TAGS)]], temperature=1.0, top_p=0.9, max_tokens=20, eos_bias_after=200,
                           seed=i)
            if i % 2:
                return "compare", client.predict(**request, api_name="/compare")
            return "generate", client.predict(**request, approach=1 + i // 2 % 2, api_name="/generate")

        t0 = time.time()
        with ThreadPoolExecutor(USERS) as pool:
            results = list(pool.map(user, range(USERS)))
        seconds = time.time() - t0
    finally:
        demo.close()
    for kind, result in results:
        stories = result[:2] if kind == "compare" else result[:1]
        assert all(isinstance(s, str) and s.strip() for s in stories), result
    assert running["now"] == 0
    assert running["peak"] == app.CONCURRENCY  # 8 waiting, 2 served at a time, never more
    FIGURES["concurrent users"] = f"{USERS} users ({sum(k == 'compare' for k, _ in results)} compare, " \
                                  f"{sum(k == 'generate' for k, _ in results)} generate), all served in {seconds:.1f} s, " \
                                  f"at most {running['peak']} at a time"


# ------------------------------------------------------------------------------ 2. hostile input, 500 cases


@pytest.fixture(scope="module")
def tiny_models(tokenizer):
    return {a: tiny_model(a, tokenizer) for a in (1, 2)}


STORY_TOKENS = 3  # a valid request streams at most this many tokens here: 500 cases in seconds


@pytest.fixture(scope="module")
def capped_stream():
    """app.stream_story, recording the validated settings the app passes, and streaming at most STORY_TOKENS."""
    real = app.stream_story
    seen = []

    def stream(model, tags, **settings):
        seen.append(settings)
        yield from real(model, tags, **{**settings, "max_tokens": min(settings["max_tokens"], STORY_TOKENS)})

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(app, "stream_story", stream)
        yield seen


TAG_NAMES = st.sampled_from(list(TAGS) + [t.lower() for t in TAGS] + [f" {t.upper()} " for t in TAGS] + ["", " "])
BAD_TAGS = st.sampled_from(["Happy", "[BOS]", "[TAG_1]", "Dialogue;Twist", "🐉", "None", "0", "Twist\x00"])
LONG = "x" * 100_000
HOSTILE = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-2**80, max_value=2**80),
    st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324, -1e-300]),
    st.text(max_size=12), st.just(LONG), st.just("9" * 5000), st.sampled_from(["nan", "inf", "-1", "1e3", " 7 ", "0x10"]),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.binary(max_size=4), st.complex_numbers(max_magnitude=10),
    st.decimals(allow_nan=True, allow_infinity=True), st.sampled_from([Decimal("sNaN"), Decimal("1e999999")]),
)


def setting(valid):
    """Mostly a valid value (as a number or as the text a client might send), sometimes a hostile one."""
    return st.integers(0, 9).flatmap(lambda i: valid if i < 7 else valid.map(str) if i < 9 else HOSTILE)


REQUESTS = st.fixed_dictionaries(dict(
    fn=st.sampled_from(["generate", "compare"]),
    tags=st.integers(0, 9).flatmap(lambda i: [
        st.lists(TAG_NAMES, max_size=8), st.lists(TAG_NAMES, max_size=8), st.lists(TAG_NAMES, max_size=8),  # duplicates
        st.lists(TAG_NAMES, max_size=8), st.lists(TAG_NAMES, max_size=4).map(",".join), st.none(), st.just([]),
        st.lists(st.one_of(TAG_NAMES, BAD_TAGS, HOSTILE), min_size=1, max_size=3), BAD_TAGS, HOSTILE][i]),
    temperature=setting(st.floats(0.0, 2.0)),
    top_p=setting(st.floats(0.05, 1.0)),
    max_tokens=setting(st.integers(1, MAX_TOKENS)),
    eos_bias_after=setting(st.integers(0, MAX_TOKENS)),
    seed=setting(st.one_of(st.none(), st.just(""), st.just("  "), st.integers(0, 2**40))),
    approach=st.integers(0, 9).flatmap(lambda i: st.sampled_from([1, 2, 1.0, 2.0, "1", "2", " 2 "]) if i < 8
                                       else st.integers(-3, 5) if i < 9 else HOSTILE),
))

HYPOTHESIS_CASES = 500
TALLY = dict(cases=0, stories=0, errors=0)


@pytest.mark.slow
@settings(max_examples=HYPOTHESIS_CASES, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate],  # no shrinking: 100,000-character inputs shrink for minutes
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(request=REQUESTS)
def test_any_input_gives_a_story_or_a_readable_error(tiny_models, capped_stream, request):
    request = dict(request)
    fn = request.pop("fn")
    if fn == "compare":
        request.pop("approach")
        calls = app.compare_stories(**request, models=tiny_models)
    else:
        calls = app.generate_story(**request, models=tiny_models)
    TALLY["cases"] += 1
    before = len(capped_stream)
    try:
        chunks = list(calls)
    except gr.Error as e:
        TALLY["errors"] += 1
        message = e.message
        assert isinstance(message, str) and message.strip()
        assert len(message) <= 600, f"an unreadable {len(message):,}-character message"
        assert "Traceback" not in message
        assert "Story generation failed" not in message, message  # that one means a bug inside generation
        return
    TALLY["stories"] += 1
    final = chunks[-1]
    stories = final[:2] if fn == "compare" else final[:1]
    assert all(isinstance(s, str) for s in stories)
    assert isinstance(final[len(stories)], int)  # the seed used
    for used in capped_stream[before:]:  # what reached the model: validated, and never more than 350 tokens
        assert type(used["max_tokens"]) is int and 1 <= used["max_tokens"] <= MAX_TOKENS
        assert type(used["seed"]) is int and used["seed"] >= 0


@pytest.fixture(scope="module", autouse=True)
def report_figures():
    yield
    if TALLY["cases"]:
        FIGURES["hypothesis"] = (f"{TALLY['cases']} generated requests: {TALLY['stories']} stories, "
                                 f"{TALLY['errors']} readable gr.Errors, nothing else escaped")
    for k, v in FIGURES.items():
        print(f"\nRELIABILITY {k}: {v}")


@pytest.mark.slow
def test_memory_stays_bounded_over_many_requests(tiny_models, capped_stream):
    """500 stories and 500 refused requests: the process's peak memory grows by less than 200 MB."""
    def rss_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    for _ in range(20):  # warm-up: first-use allocations are not a leak
        list(app.generate_story(["Twist"], 1.0, 0.9, 5, 200, None, 2, models=tiny_models))
    before = rss_mb()
    for i in range(500):
        list(app.compare_stories(["Dialogue", "Twist"], 1.0, 0.9, MAX_TOKENS, 0, i, models=tiny_models))
        with pytest.raises(gr.Error):
            list(app.generate_story(LONG, 1.0, 0.9, 5, 200, i, 2, models=tiny_models))
    grown = rss_mb() - before
    assert grown < 200, f"peak memory grew by {grown:.0f} MB"
    FIGURES["memory"] = f"peak RSS grew {grown:.1f} MB over 500 compares + 500 refused requests"


def test_max_tokens_is_capped_at_350(tiny_models):
    """The cap holds for the real stream: a model that never ends a story stops at exactly 350 tokens."""
    model = tiny_models[2]
    with pytest.raises(gr.Error, match="max_tokens must be between 1 and 350"):
        next(app.generate_story([], 1.0, 0.9, MAX_TOKENS + 1, 0, 1, 2, models=tiny_models))
    from tinystories.generate import stream_story

    # stream_story yields once per generated token; no EOS bias within the cap, so a tiny model rarely stops early
    chunks = list(stream_story(model, [], temperature=1.0, top_p=0.9, max_tokens=MAX_TOKENS, eos_bias_after=MAX_TOKENS,
                               seed=0))
    assert len(chunks) <= MAX_TOKENS


@pytest.mark.parametrize("temperature", [5e-324, 2.2e-313, 1e-40, 1e-7])
def test_a_vanishing_temperature_is_greedy_instead_of_nan(tiny_models, temperature):
    """Found by the property test: float32 logits divided by 2.2e-313 are inf, and softmax gave NaN."""
    def story(t):
        return list(app.compare_stories(["Twist"], t, 0.9, 5, 200, 3, models=tiny_models))[-1][:2]

    assert story(temperature) == story(0.0)


def test_a_huge_value_gets_a_short_error_that_still_names_the_setting_and_the_choices(tiny_models):
    with pytest.raises(gr.Error) as error:
        next(app.generate_story([], LONG, 0.9, 5, 200, 1, 2, models=tiny_models))
    assert error.value.message.startswith("temperature must be a number, got 'xxx") and len(error.value.message) < 200
    with pytest.raises(gr.Error) as error:
        next(app.generate_story([f"Tag{i}" for i in range(5000)], 1.0, 0.9, 5, 200, 1, 2, models=tiny_models))
    message = error.value.message
    assert message.startswith("unknown tag(s) 'Tag0', 'Tag1'") and len(message) <= 500
    assert message.endswith("choose from: " + ", ".join(TAGS))


# ------------------------------------------------------------------------------ 3. interrupted training


def read_state(out: Path) -> dict | None:
    try:
        return torch.load(out / "trainer_state.pt", map_location="cpu", weights_only=True)
    except (FileNotFoundError, RuntimeError, EOFError, OSError):
        return None  # not saved yet, or between the two renames of a save


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_and_finishes_at_step_40(run_train, tmp_path, token_cache, capsys):
    out = tmp_path / "run"
    args = ["--preset", "tiny", "--save-every", 5, "--max-steps", 40, "--out", out, "--batch-size", 8, "--epochs", 3,
            "--warmup", 5, "--threads", 1, "--seed", 0]
    proc = subprocess.Popen([sys.executable, "train.py", "--data", STORIES, *map(str, args)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=subprocess_env(TINYSTORIES_CACHE=str(token_cache)))
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            state = read_state(out)
            if state and state["step"] >= 5:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        err = proc.communicate()[1]
    assert proc.returncode == -signal.SIGKILL, err[-3000:]
    killed_at = load_model(out)  # loadable as it was left (a kill between renames is repaired here)
    state = read_state(out)
    assert 5 <= state["step"] < 40 and state["step"] % 5 == 0, "the run was not interrupted mid-way"
    FIGURES["sigkill"] = f"killed at step {state['step']}"
    assert killed_at.config.approach == 2

    # And as if the kill had come between the two renames of a save: out moved aside, the new one never arrived.
    os.replace(out, out.with_name("run.old"))
    assert run_train("--preset", "tiny", "--out", out, "--resume", "--threads", 1) == 0
    assert f"resuming {out} at step {state['step']}" in capsys.readouterr().err
    final = read_state(out)
    assert final["step"] == 40 and final["tokens_seen"] > state["tokens_seen"]
    assert json.loads((out / "metrics.json").read_text())["steps"] == 40
    assert [r["step"] for r in final["log"] if "loss" in r][-1] == 40  # the log carried on past the kill
    assert load_model(out).config.approach == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no .tmp or .old left behind


@pytest.fixture
def saved(tokenizer, tmp_path):
    out = save_checkpoint(tiny_model(2, tokenizer), tokenizer, tmp_path / "ckpt", {"notes.txt": "first"})
    return out, load_model(out)


def same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("failing_rename", [1, 2], ids=["out->old", "tmp->out"])
def test_a_save_that_dies_midway_leaves_the_previous_checkpoint_loadable(saved, tokenizer, monkeypatch,
                                                                          failing_rename):
    out, first = saved
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == failing_rename:
            raise KeyboardInterrupt("killed mid-save")  # not an Exception: nothing in save_checkpoint handles it
        return real(src, dst)

    monkeypatch.setattr(tinystories.hub.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tiny_model(1, tokenizer), tokenizer, out, {"notes.txt": "second"})
    monkeypatch.setattr(tinystories.hub.os, "replace", real)
    loaded = load_model(out)  # the previous checkpoint, whole
    assert loaded.config.approach == 2 and same_weights(loaded, first)
    assert (out / "notes.txt").read_text() == "first"
    # and the next save goes through, leaving nothing behind
    save_checkpoint(tiny_model(1, tokenizer), tokenizer, out, {"notes.txt": "third"})
    assert load_model(out).config.approach == 1 and (out / "notes.txt").read_text() == "third"
    assert sorted(p.name for p in out.parent.iterdir()) == ["ckpt"]


def test_a_folder_moved_to_dot_old_is_recovered_by_load_model(saved):
    out, first = saved
    os.replace(out, out.with_name("ckpt.old"))
    assert same_weights(load_model(out), first)
    assert out.is_dir() and not out.with_name("ckpt.old").exists()


# ------------------------------------------------------------------------------ 4. broken weights


def _damage(kind: str, folder: Path, monkeypatch) -> str:
    """Break a copy of a checkpoint in one way; returns the source string to load."""
    if kind == "missing folder":
        return str(folder.parent / "no-such-folder")
    if kind == "truncated weights":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    elif kind in ("config version 99", "config unknown field"):
        config = json.loads((folder / "config.json").read_text())
        config.update({"version": 99} if kind == "config version 99" else {"rope_theta": 10000.0})
        (folder / "config.json").write_text(json.dumps(config))
    elif kind == "hub repo not found":
        def snapshot_download(repo_id, **kwargs):
            raise RuntimeError(f"404 Client Error. Repository Not Found for url: https://huggingface.co/api/models/{repo_id}")
        import huggingface_hub

        monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
        return "someone/no-such-model"
    elif kind == "hub unreachable":
        return "someone/tinystories@v1"  # HF_HUB_OFFLINE=1 (conftest): the Hub cannot be reached
    return str(folder)


FAULTS = ["missing folder", "truncated weights", "config version 99", "config unknown field", "hub repo not found",
          "hub unreachable"]
EXPECTED = {"missing folder": "no checkpoint folder at", "truncated weights": "corrupt or truncated",
            "config version 99": "version 99", "config unknown field": "rope_theta",
            "hub repo not found": "Repository Not Found", "hub unreachable": "cannot download model someone/tinystories@v1"}


@pytest.fixture(scope="module")
def good_checkpoint(tokenizer, tmp_path_factory):
    return save_checkpoint(tiny_model(1, tokenizer), tokenizer, tmp_path_factory.mktemp("good") / "ckpt")


@pytest.mark.parametrize("fault", FAULTS)
def test_broken_weights_give_one_clear_error_the_app_falls_back_and_the_clis_exit(fault, good_checkpoint, tmp_path,
                                                                                  monkeypatch, capsys):
    source = _damage(fault, shutil.copytree(good_checkpoint, tmp_path / "broken"), monkeypatch)
    with pytest.raises(CheckpointError) as error:
        load_model(source)
    message = str(error.value)
    assert EXPECTED[fault] in message and "\n" not in message and len(message) < 500
    assert source.split("@")[0] in message  # it names what failed to load

    models, notes = app.load_models({1: source})
    assert Path(models[1].folder) == app.BUNDLED[1]
    assert source in notes[1] and EXPECTED[fault] in notes[1]
    info = app.model_info(models, notes)
    assert "Fell back to the bundled checkpoints/approach1" in info and "bundled folder `checkpoints/approach1`" in info

    assert generate_main(["--model", source, "--max-tokens", "5"]) == 2
    assert evaluate_main(["--model", source, "--data", str(STORIES)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    errors = captured.err.strip().splitlines()
    assert len(errors) == 2 and all(e.startswith("error: ") and EXPECTED[fault] in e for e in errors)


@pytest.mark.slow
@pytest.mark.parametrize("module, extra", [("tinystories.generate", []),
                                           ("tinystories.evaluate", ["--data", "tests/fixtures/stories"])])
@pytest.mark.parametrize("fault", ["truncated weights", "hub unreachable"])
def test_the_clis_refuse_bad_weights_without_a_traceback(run_module, good_checkpoint, tmp_path, monkeypatch, module,
                                                         extra, fault):
    source = _damage(fault, shutil.copytree(good_checkpoint, tmp_path / "broken"), monkeypatch)
    result = run_module(module, "--model", source, *extra)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert result.stderr.startswith("error: ") and EXPECTED[fault] in result.stderr


# ------------------------------------------------------------------------------ 5. bad data


BAD_ROWS = ['{"story": "cut off', '{"features": ["Twist"]}', '{"story": "Sue sang.", "features": "Twist"}', "[1, 2]",
            '{"story": "   "}', "not json at all"]


@pytest.mark.slow
def test_train_on_an_all_bad_file_exits_with_a_clear_message_and_no_traceback(tmp_path, token_cache):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("\n".join(BAD_ROWS) + "\n")
    (data / "valid.jsonl").write_text("")
    result = subprocess.run([sys.executable, "train.py", "--data", str(data), "--preset", "tiny", "--out",
                             str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env=subprocess_env(TINYSTORIES_CACHE=str(token_cache)))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "error: no usable stories" in result.stderr and "malformed JSON" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_train_skips_bad_rows_counts_them_and_records_them_in_the_model_card(run_train, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    good = [json.dumps(r) for r in read_rows("train")]
    unknown = json.dumps({"story": "Tom saw a cat.", "features": ["Happy", "Twist"]})
    (data / "train.jsonl").write_text("\n".join(good[:20] + BAD_ROWS + [unknown] + good[20:]) + "\n")
    shutil.copy(STORIES / "valid.jsonl", data / "valid.jsonl")
    out = tmp_path / "out"
    assert run_train(*tiny_train_args(2, out, steps=2), "--data", data) == 0
    report = "41 train stories from {}; skipped rows: 1 features not a list, 2 malformed JSON, " \
             "2 missing or empty story, 1 not an object; dropped unknown features: 'Happy' x1".format(data)
    assert report in capsys.readouterr().err
    assert report in (out / "README.md").read_text()


# ------------------------------------------------------------------------------ 6. failed pushes


@pytest.fixture(scope="module")
def trained(run_train, tmp_path_factory):
    out = tmp_path_factory.mktemp("push") / "run"
    assert run_train(*tiny_train_args(1, out, steps=2)) == 0
    return out


def push_again(run_train, trained, tmp_path, capsys) -> tuple[int, str, Path]:
    """train.py --resume with nothing left to train, then --push-to-hub: the push step alone."""
    out = shutil.copytree(trained, tmp_path / "run")
    code = run_train(*tiny_train_args(1, out, steps=2), "--resume", "--push-to-hub", "someone/tiny-stories")
    return code, capsys.readouterr().err, out


def retry_command(err: str) -> str:
    match = re.search(r'run: python -c "(.*?)"$', err, re.M)
    assert match, err
    return match.group(1)


def test_a_failed_upload_keeps_the_checkpoint_and_the_printed_retry_command_works(run_train, trained, tmp_path,
                                                                                   capsys, monkeypatch):
    uploads = []

    def create_repo(self, repo_id, **kwargs):
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, **kwargs):
        if not uploads:
            uploads.append("failed")
            raise ConnectionError("Connection reset by peer")
        uploads.append(kwargs["folder_path"])

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    code, err, out = push_again(run_train, trained, tmp_path, capsys)
    assert code == 1
    assert "push to someone/tiny-stories failed (ConnectionError: Connection reset by peer)" in err
    assert f"the checkpoint is safe in {out}" in err and "Traceback" not in err
    assert load_model(out).config.approach == 1
    exec(retry_command(err), {})  # the command it prints, as a user would run it (the Hub is back)
    assert uploads == ["failed", str(out)]


def test_a_push_without_a_token_keeps_the_checkpoint_and_says_how_to_log_in(run_train, trained, tmp_path, capsys,
                                                                             monkeypatch):
    from huggingface_hub.errors import LocalTokenNotFoundError

    tokens = []

    def create_repo(self, repo_id, **kwargs):  # what the Hub client raises when a write needs a token and has none
        tokens.append(self.token)
        raise LocalTokenNotFoundError("Token is required but no token found. You need to provide a token or be logged "
                                      "in to Hugging Face with `hf auth login`.")

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    code, err, out = push_again(run_train, trained, tmp_path, capsys)
    assert tokens == [None]
    assert code == 1 and "Traceback" not in err
    assert "push to someone/tiny-stories failed (LocalTokenNotFoundError: Token is required" in err
    assert "Log in with `hf auth login` or set HF_TOKEN" in err and f"safe in {out}" in err
    assert "push_folder" in retry_command(err)
    assert load_model(out).config.approach == 1
