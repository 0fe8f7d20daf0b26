"""train.py: presets, a run that learns, resuming, pushing, and clear errors for bad input."""
import json

import pytest
import torch
from huggingface_hub import HfApi

import train
from conftest import read_rows, tiny_train_args
from fake_hub_datasets import hub_unreachable, serve_dataset
from tinystories import TinyStoriesModel, load_model, load_stories
from tinystories.data import TokenizedStories
from tinystories.evaluate import nats_per_story


def test_seed_preset_is_the_seeds_training_run():
    args = train.parse_args(["--preset", "seed"])
    assert (args.arch, args.context, args.lr, args.batch_size, args.epochs) == ("seed", 50, 1e-4, 1, 10)
    assert (args.max_stories, args.valid_stories, args.optimizer, args.dropout) == (90_000, 10_000, "adam", 0.1)
    assert args.data == "skeskinen/TinyStories-GPT4"


def test_flags_override_a_preset():
    args = train.parse_args(["--preset", "seed", "--lr", "3e-4", "--batch-size", "8", "--max-stories", "100"])
    assert (args.lr, args.batch_size, args.max_stories) == (3e-4, 8, 100)
    assert (args.arch, args.context, args.epochs) == ("seed", 50, 10)  # the rest of the preset stays


def test_defaults_follow_the_arch():
    assert (train.parse_args([]).lr, train.parse_args([]).context) == (2e-3, 64)
    seed = train.parse_args(["--arch", "seed"])
    assert (seed.lr, seed.context) == (1e-4, 50)


def test_a_tiny_run_lowers_the_validation_loss(approach2_dir, approach2_model, tokenizer, stories_dir):
    valid = TokenizedStories.build(tokenizer, load_stories(stories_dir, "valid")[0])
    torch.manual_seed(0)
    untrained = TinyStoriesModel(approach2_model.config).eval()
    before = nats_per_story(untrained, valid, progress=False)["nats_per_token"]
    after = nats_per_story(approach2_model, valid, progress=False)["nats_per_token"]
    assert before > 10  # about ln(50,266) = 10.8: a uniform guess over the vocabulary
    assert after < before - 4
    metrics = json.loads((approach2_dir / "metrics.json").read_text())
    assert metrics["steps"] == 30 and metrics["valid_stories"] == 10
    assert metrics["valid_nats_per_token"] == pytest.approx(after, rel=0.01)  # (saved weights are float16)
    card = (approach2_dir / "README.md").read_text()
    assert "approach 2" in card and f"{metrics['valid_nats_per_story']:.2f}" in card


def test_resume_continues_from_the_saved_step(run_train, tmp_path):
    out = tmp_path / "run"
    assert run_train(*tiny_train_args(2, out, steps=4), "--save-every", 2) == 0
    first = torch.load(out / "trainer_state.pt", weights_only=True)
    assert first["step"] == 4
    assert run_train(*tiny_train_args(2, out, steps=7), "--resume") == 0
    state = torch.load(out / "trainer_state.pt", weights_only=True)
    assert state["step"] == 7 and state["tokens_seen"] > first["tokens_seen"]
    assert [r["step"] for r in state["log"] if "valid_nats_per_token" in r] == [4, 7]  # the log carries on
    assert json.loads((out / "metrics.json").read_text())["steps"] == 7
    model = load_model(out)
    assert model.config.approach == 2
    for name, p in model.state_dict().items():  # the checkpoint holds the resumed run's final weights
        assert torch.allclose(p, state["model"][name].to(p.dtype), atol=1e-2), name


def test_resume_without_a_checkpoint_is_refused(run_train, tmp_path, capsys):
    assert run_train(*tiny_train_args(2, tmp_path / "nothing"), "--resume") == 2
    assert "cannot --resume" in capsys.readouterr().err


def test_a_failed_push_keeps_the_checkpoint_and_says_how_to_retry(run_train, tmp_path, capsys, monkeypatch):
    def create_repo(self, repo_id, **kwargs):
        raise RuntimeError("401 Client Error: Unauthorized")

    def upload_folder(self, **kwargs):
        raise AssertionError("nothing is uploaded when the repo cannot be created")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    out = tmp_path / "run"
    code = run_train(*tiny_train_args(1, out, steps=2), "--push-to-hub", "someone/tiny-stories")
    assert code != 0
    err = capsys.readouterr().err
    assert "push to someone/tiny-stories failed" in err and "Unauthorized" in err
    assert f"safe in {out}" in err and "push_folder" in err
    assert load_model(out).config.approach == 1


def test_a_missing_data_path_exits_with_a_clear_message(run_train, tmp_path, capsys):
    missing = tmp_path / "no-such-stories.jsonl"
    assert run_train("--data", missing, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(missing) in err and "does not exist" in err
    assert not (tmp_path / "out").exists()


def test_an_approach_other_than_1_or_2_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args(["--approach", "3"])
    assert e.value.code == 2
    assert "--approach: invalid choice: 3" in capsys.readouterr().err


def test_a_bad_model_shape_is_refused_before_loading_data(tmp_path, capsys):
    assert train.main(["--d-model", "30", "--n-heads", "4", "--data", str(tmp_path / "x.jsonl"),
                       "--out", str(tmp_path / "out")]) == 2
    assert "not divisible" in capsys.readouterr().err


def test_streaming_trains_from_a_hub_stream_and_a_second_run_needs_no_hub(tmp_path, monkeypatch, tokenizer):
    monkeypatch.setenv("TINYSTORIES_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(train, "build_tokenizer", lambda *a, **k: tokenizer)
    calls = serve_dataset(monkeypatch, {"train": read_rows("train"), "validation": read_rows("valid")})
    args = [*map(str, tiny_train_args(2, tmp_path / "first", steps=3)), "--data", "someone/tiny-stories", "--streaming"]
    assert train.main(args) == 0
    assert {c for c in calls if c[0] == "load_dataset"} == {("load_dataset", "someone/tiny-stories", "train", True),
                                                          ("load_dataset", "someone/tiny-stories", "validation", True)}
    first = json.loads((tmp_path / "first" / "metrics.json").read_text())
    assert (first["train_stories"], first["valid_stories"], first["steps"]) == (40, 10, 3)
    assert load_model(tmp_path / "first").config.approach == 2

    hub_unreachable(monkeypatch)  # the second run finds everything in the token cache
    args[args.index(str(tmp_path / "first"))] = str(tmp_path / "second")
    assert train.main(args) == 0
    second = json.loads((tmp_path / "second" / "metrics.json").read_text())
    assert second["valid_nats_per_token"] == first["valid_nats_per_token"]  # same data, same seed, same model
    assert "40 train stories from someone/tiny-stories" in (tmp_path / "second" / "README.md").read_text()


def test_streaming_is_documented_in_the_help(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    out = capsys.readouterr().out
    assert "--streaming" in out and "memory-mapped" in out
