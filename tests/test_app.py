"""The Gradio app: what a visitor and an API client rely on, against the bundled checkpoints, offline.

The pure functions of app.py are called directly; the API tests launch `build_demo(...)` on a free localhost
port in this process (prevent_thread_lock=True) and call it with gradio_client, by keyword.
"""
import math
import os
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home from a test

import gradio as gr  # noqa: E402
import pytest  # noqa: E402
from conftest import free_port  # noqa: E402
from gradio_client import Client  # noqa: E402

import app  # noqa: E402
from tinystories import TAGS  # noqa: E402

SHORT = dict(temperature=1.0, top_p=0.9, max_tokens=30, eos_bias_after=200)  # short stories: fast tests


@pytest.fixture(scope="module")
def loaded():
    """The bundled checkpoints, whatever TINYSTORIES_APPROACH1/2 the shell may set."""
    models, notes = app.load_models(app.model_sources(environ={}))
    assert set(models) == {1, 2}, notes
    return models, notes


@pytest.fixture(scope="module")
def models(loaded):
    return loaded[0]


def final(stream):
    """The last thing a stream yields (what an API client gets as the result)."""
    last = None
    for last in stream:
        pass
    return last


def story(models, tags=("Dialogue",), seed=3, approach=2, **settings) -> str:
    return final(app.generate_story(list(tags), **{**SHORT, **settings}, seed=seed, approach=approach,
                                    models=models))[0]


# --- the Story tab's function

def test_a_story_streams_token_by_token_with_the_seed_used(models):
    chunks = list(app.generate_story(["Dialogue", "Twist"], **SHORT, seed=7, approach=2, models=models))
    stories = [c[0] for c in chunks]
    assert stories[0] == "" and stories[-1]
    assert len(set(stories)) > 10  # it grew a token at a time, not all at once
    assert {c[1] for c in chunks} == {7}
    details = chunks[-1][2]
    assert "**Tags requested:** Dialogue, Twist" in details
    words, tokens = app.story_length(models[2], stories[-1])
    assert f"{words} words, {tokens} tokens" in details
    assert 0 < tokens <= 30 + 2  # re-encoding may merge or split a token or two
    for n, (text, _, streaming) in enumerate(chunks[:-1]):  # while streaming: the tokens generated so far
        assert f"**Length:** {len(text.split())} words, {n} tokens" in streaming and "**Detected tags:** …" in streaming


def test_streaming_details_do_not_re_encode_the_story_at_every_token(models, monkeypatch):
    """Re-encoding the whole story per token would cost more than generating it: once, when it is finished."""
    tokenizer = models[2].tokenizer
    calls = []
    real = tokenizer.encode
    monkeypatch.setattr(tokenizer, "encode", lambda *a, **k: calls.append(1) or real(*a, **k))
    chunks = list(app.generate_story(["Dialogue"], **SHORT, seed=7, approach=2, models=models))
    assert len(chunks) > 10 and len(calls) == 1


def test_the_same_seed_gives_the_same_story(models):
    assert story(models, seed=11) == story(models, seed=11)
    assert story(models, seed=11) != story(models, seed=12)


@pytest.mark.parametrize("blank", [None, "", "  "])
def test_a_blank_seed_draws_one_and_shows_it_so_the_story_can_be_reproduced(models, blank):
    text, seed_used, _ = final(app.generate_story(["Conflict"], **SHORT, seed=blank, approach=1, models=models))
    assert isinstance(seed_used, int) and 0 <= seed_used < app.SEED_RANGE
    assert story(models, ["Conflict"], seed=seed_used, approach=1) == text


@pytest.mark.parametrize("tags", [[], None])
def test_no_tag_is_allowed(models, tags):
    text, _, details = final(app.generate_story(tags, **SHORT, seed=5, approach=2, models=models))
    assert "**Tags requested:** none" in details


def test_tags_are_case_insensitive_and_may_be_a_comma_separated_string():
    tags, settings = app.check_request("twist, dialogue", 1.0, 0.9, 30, 200, " 4 ")
    assert tags == ["Dialogue", "Twist"]
    assert settings == dict(temperature=1.0, top_p=0.9, max_tokens=30, eos_bias_after=200, seed=4)


def test_max_tokens_caps_the_story_at_350(models):
    text, _, _ = final(app.generate_story([], **{**SHORT, "max_tokens": 5}, seed=1, approach=2, models=models))
    assert 0 < app.story_length(models[2], text)[1] <= 6  # re-encoding may split a token
    assert app.check_request([], 1.0, 0.9, 350, 200, 1)[1]["max_tokens"] == 350
    with pytest.raises(gr.Error, match="max_tokens must be between 1 and 350"):
        app.check_request([], 1.0, 0.9, 351, 200, 1)


BAD = [
    (dict(temperature=math.nan), "temperature must be between 0.0 and 2.0"),
    (dict(temperature=2.5), "temperature must be between 0.0 and 2.0"),
    (dict(temperature="hot"), "temperature must be a number"),
    (dict(top_p=0.0), "top_p must be between 0.05 and 1.0"),
    (dict(top_p=None), "top_p must be a number"),
    (dict(max_tokens=351), "max_tokens must be between 1 and 350"),
    (dict(max_tokens=0), "max_tokens must be between 1 and 350"),
    (dict(max_tokens=3.5), "max_tokens must be an integer"),
    (dict(max_tokens=math.inf), "max_tokens must be between 1 and 350"),
    (dict(eos_bias_after=-1), "eos_bias_after must be between 0 and 350"),
    (dict(seed=-1), "seed must be between 0"),
    (dict(seed="abc"), "seed must be an integer"),
    (dict(seed=math.nan), "seed must be an integer"),
    (dict(tags=["Happy"]), "unknown tag(s) 'Happy'; choose from: " + ", ".join(TAGS)),
    (dict(tags=5), "tags must be a list of tag names"),
    (dict(approach=3), "approach must be 1 or 2"),
    (dict(approach="two"), "approach must be 1 or 2"),
    (dict(approach=None), "approach must be 1 or 2"),
    (dict(approach=math.nan), "approach must be 1 or 2"),
]


@pytest.mark.parametrize("bad, message", BAD, ids=[f"{next(iter(b))}={next(iter(b.values()))!r}" for b, _ in BAD])
def test_a_bad_value_gets_a_readable_error_naming_it(models, bad, message):
    request = dict(tags=["Dialogue"], **SHORT, seed=3, approach=2)
    with pytest.raises(gr.Error) as error:
        next(app.generate_story(**{**request, **bad}, models=models))
    assert message in error.value.message


@pytest.mark.parametrize("approach", [1, 2, 2.0, "1", "2"])
def test_approach_is_1_or_2_however_a_client_types_it(approach):
    assert app.check_approach(approach) == int(float(approach))


def test_an_approach_without_a_model_says_so(models):
    with pytest.raises(gr.Error, match="Approach 1 has no model"):
        next(app.generate_story([], **SHORT, seed=1, approach=1, models={2: models[2]}))


# --- the Compare tab's function

def test_compare_streams_both_approaches_at_once_from_the_same_tags_and_seed(models):
    chunks = list(app.compare_stories(["Dialogue", "Twist"], **SHORT, seed=9, models=models))
    first, second, seed_used, details1, details2 = chunks[-1]
    assert seed_used == 9
    assert first == story(models, ["Dialogue", "Twist"], seed=9, approach=1)  # approach 1 first
    assert second == story(models, ["Dialogue", "Twist"], seed=9, approach=2)
    assert first != second
    # interleaved: both stories were growing in the same updates, neither waited for the other to finish
    assert any(c[0] and c[1] and c[0] != first and c[1] != second for c in chunks)
    for details, text, model in [(details1, first, models[1]), (details2, second, models[2])]:
        words, tokens = app.story_length(model, text)
        assert "**Tags requested:** Dialogue, Twist" in details and f"{words} words, {tokens} tokens" in details


def test_detected_tags_show_under_each_finished_story(models, monkeypatch):
    # the bundled detector reads quoted speech as Dialogue and a plain sentence as untagged
    assert "Dialogue" in app.detect_tags('"Can I play?" asked Tom. "Yes, you can," said Mom with a smile.')
    assert app.detect_tags("Once upon a time there was a cat. The cat slept in the sun.") == []
    *_, details1, details2 = final(app.compare_stories([], **SHORT, seed=2, models=models))
    assert "**Detected tags:**" in details1 and "no tag detector" not in details1
    monkeypatch.setattr(app, "detect_tags", lambda text: None)
    *_, details1, details2 = final(app.compare_stories([], **SHORT, seed=2, models=models))
    assert "**Detected tags:** — (no tag detector yet)" in details1
    monkeypatch.setattr(app, "detect_tags", lambda text: ["Twist"])
    *_, details1, details2 = final(app.compare_stories([], **SHORT, seed=2, models=models))
    assert "**Detected tags:** Twist" in details1 and "**Detected tags:** Twist" in details2
    monkeypatch.setattr(app, "detect_tags", lambda text: 1 / 0)
    assert "the tag detector failed" in final(app.generate_story([], **SHORT, seed=2, approach=2, models=models))[2]


def test_compare_rejects_bad_values_before_generating(models):
    with pytest.raises(gr.Error, match="temperature must be between"):
        next(app.compare_stories([], **{**SHORT, "temperature": -1}, seed=1, models=models))


# --- weights: where they come from, and what the Model tab says

def test_weights_come_from_the_cli_else_the_env_else_the_bundled_folders():
    env = {"TINYSTORIES_APPROACH1": "me/approach1@v2", "TINYSTORIES_APPROACH2": "me/approach2"}
    assert app.model_sources(environ={}) == {1: str(app.BUNDLED[1]), 2: str(app.BUNDLED[2])}
    assert app.model_sources(environ=env) == {1: "me/approach1@v2", 2: "me/approach2"}
    assert app.model_sources("/my/folder", None, environ=env) == {1: "/my/folder", 2: "me/approach2"}


def test_a_source_that_fails_falls_back_to_the_bundled_folder_and_says_so(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    models, notes = app.load_models({1: str(broken)})
    assert Path(models[1].folder) == app.BUNDLED[1]
    assert str(broken) in notes[1] and "Fell back to the bundled checkpoints/approach1" in notes[1]
    info = app.model_info(models, notes)
    assert "Fell back to the bundled checkpoints/approach1" in info
    assert "bundled folder `checkpoints/approach1`" in info


def test_the_model_tab_shows_source_arch_size_context_and_metrics(loaded):
    models, notes = loaded
    info = app.model_info(models, notes)
    for a, model in models.items():
        assert f"bundled folder `checkpoints/approach{a}`" in info
        cfg = model.config
        assert f"| {cfg.arch} | {cfg.approach} | {model.num_params():,} | {cfg.context} tokens |" in info
    for key in app.read_card_metrics(models[2].folder):
        assert f"| {key} |" in info
    assert "No fallback" in info
    assert f"**Generation steps on this server:** {app.kernels.describe()}" in info  # native, or torch and why


def test_a_hub_source_is_shown_with_its_revision_and_commit():
    model = SimpleNamespace(source="me/tinystories@v1", folder=Path("/cache/snapshots/0123456789abcdef0123"))
    assert app.describe_source(model, 2) == (
        "Hugging Face Hub repo [me/tinystories](https://huggingface.co/me/tinystories), revision `v1`, "
        "commit `0123456789ab`")


def test_help_documents_the_options(capsys):
    with pytest.raises(SystemExit) as done:
        app.parse_args(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for word in ["--approach1", "--approach2", "TINYSTORIES_APPROACH1", "TINYSTORIES_APPROACH2", "--host", "--port",
                 "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "user/repo@revision"]:
        assert word in text


# --- the running app, through gradio_client

@pytest.fixture(scope="module")
def client(loaded, loopback):
    demo = app.build_demo(*loaded)
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield Client(demo.local_url, verbose=False)
    finally:
        demo.close()


def test_generate_by_keyword_returns_the_story_first(client, models):
    result = client.predict(tags=["Dialogue"], temperature=1.0, top_p=0.9, max_tokens=30, eos_bias_after=200,
                            seed=3, approach=2, api_name="/generate")
    assert result[0] == story(models, ["Dialogue"], seed=3, approach=2)
    assert result[1] == "3"  # the seed used, as the Seed box shows it


def test_the_api_reproduces_a_story_from_its_seed(client):
    request = dict(tags=["MoralValue"], **SHORT, seed=21, approach=1, api_name="/generate")
    assert client.predict(**request)[0] == client.predict(**request)[0]


def test_the_api_streams_the_story(client):
    job = client.submit(tags=[], **SHORT, seed=4, approach=2, api_name="/generate")
    text = job.result()[0]
    outputs = [o[0] for o in job.outputs()]
    assert outputs[-1] == text and len(set(outputs)) > 10


def test_compare_returns_two_different_stories_approach_1_first(client):
    request = dict(tags=["Dialogue", "Twist"], **SHORT, seed=8)
    first, second, seed_used, *_ = client.predict(**request, api_name="/compare")
    assert first != second and seed_used == "8"
    assert first == client.predict(**request, approach=1, api_name="/generate")[0]
    assert second == client.predict(**request, approach=2, api_name="/generate")[0]


def test_a_blank_seed_and_no_tags_work_through_the_api(client):
    text, seed_used, details = client.predict(tags=[], **SHORT, approach=2, api_name="/generate")
    assert seed_used.isdigit() and "**Tags requested:** none" in details
    assert client.predict(tags=[], **SHORT, seed=seed_used, approach=2, api_name="/generate")[0] == text


@pytest.mark.parametrize("bad, message", [
    (dict(max_tokens=1000), "max_tokens must be between 1 and 350, got 1000"),
    (dict(temperature="warm"), "temperature must be a number, got 'warm'"),
    (dict(tags=["Dialogue", "Romance"]), "unknown tag(s) 'Romance'; choose from: BadEnding"),
    (dict(approach=3), "approach must be 1 or 2, got 3"),
])
def test_bad_values_through_the_api_get_a_readable_error_and_the_app_keeps_serving(client, bad, message):
    request = dict(tags=["Dialogue"], **SHORT, seed=3, approach=2)
    with pytest.raises(Exception) as error:
        client.predict(**{**request, **bad}, api_name="/generate")
    assert message in str(error.value) and "Traceback" not in str(error.value)
    assert client.predict(**{**request, "max_tokens": 3}, api_name="/generate")[0]


# --- serving settings: torch threads per story, memory

@pytest.fixture
def restore_threads():
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def threads_in_a_new_thread() -> int:
    """torch.get_num_threads() as a Gradio worker thread (started later, first torch call there) sees it."""
    import threading

    import torch

    seen = []
    worker = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    worker.start()
    worker.join()
    return seen[0]


def test_threads_default_to_1_unless_the_flag_or_the_env_var_says_otherwise():
    assert app.DEFAULT_THREADS == 1
    assert app.generation_threads(None, environ={}) == 1
    assert app.generation_threads(None, environ={"TINYSTORIES_THREADS": " 2 "}) == 2
    assert app.generation_threads(3, environ={"TINYSTORIES_THREADS": "2"}) == 3  # the flag wins
    for bad in ["0", "-1", "two", "1.5"]:
        with pytest.raises(ValueError, match="TINYSTORIES_THREADS .* must be a positive integer"):
            app.generation_threads(None, environ={"TINYSTORIES_THREADS": bad})


@pytest.mark.parametrize("env, argv, expected", [(None, [], 1), ("2", [], 2), ("2", ["--threads", "1"], 1)])
def test_startup_sets_torch_threads_before_loading_for_every_worker_thread(monkeypatch, restore_threads, env, argv,
                                                                         expected):
    import torch

    torch.set_num_threads(2 if expected == 1 else 1)  # the opposite, so the test sees main() change it
    if env is None:
        monkeypatch.delenv("TINYSTORIES_THREADS", raising=False)
    else:
        monkeypatch.setenv("TINYSTORIES_THREADS", env)
    seen = {}

    def load_models(sources):  # stop main() right after the point where it loads: no models, exit code 2
        seen["main"], seen["worker"] = torch.get_num_threads(), threads_in_a_new_thread()
        return {}, {1: "not loaded in this test"}

    monkeypatch.setattr(app, "load_models", load_models)
    assert app.main(argv) == 2
    assert seen == {"main": expected, "worker": expected}


def test_a_bad_thread_count_stops_startup_with_a_message(monkeypatch, capsys):
    monkeypatch.setenv("TINYSTORIES_THREADS", "many")
    monkeypatch.setattr(app, "load_models", lambda sources: pytest.fail("loaded despite a bad thread count"))
    assert app.main([]) == 2
    assert "TINYSTORIES_THREADS (or --threads) must be a positive integer, got 'many'" in capsys.readouterr().err


def test_help_documents_threads(capsys):
    with pytest.raises(SystemExit):
        app.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--threads N" in text and "TINYSTORIES_THREADS" in text


def test_models_with_identical_tokenizer_files_share_one_tokenizer_and_stories_stay_the_same(models, tmp_path):
    own = {a: m.tokenizer for a, m in models.items()}
    before = {a: story(models, seed=5, approach=a) for a in (1, 2)}
    try:
        assert app.share_tokenizers(models) == (1 if own[1] is not own[2] else 0)
        assert models[1].tokenizer is models[2].tokenizer  # the bundled folders carry the same tokenizer files
        assert {a: story(models, seed=5, approach=a) for a in (1, 2)} == before
    finally:
        for a, tok in own.items():
            models[a].tokenizer = tok
    other = tmp_path / "other"  # different files: each keeps its own
    other.mkdir()
    (other / "tokenizer.json").write_text("{}")
    apart = {1: SimpleNamespace(folder=models[1].folder, tokenizer=object()),
             2: SimpleNamespace(folder=other, tokenizer=object())}
    assert app.share_tokenizers(apart) == 0 and apart[1].tokenizer is not apart[2].tokenizer


def test_requests_do_not_import_matplotlib_through_gradio():
    import contextlib

    app.skip_gradio_matplotlib()
    assert gr.utils.MatplotlibBackendMananger is contextlib.nullcontext
