"""Checkpoint folders: config.json + model.safetensors + tokenizer + README.md, loadable locally or from the Hub."""
import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from huggingface_hub import HfApi
from huggingface_hub.utils import filter_repo_objects
from safetensors import safe_open

from conftest import tiny_decoder_config, tiny_seed_config
from tinystories import CheckpointError, TinyStoriesModel, load_model, push_folder, save_checkpoint
from tinystories.tokenizer import VOCAB_SIZE

X = torch.tensor([[50258, 50262, 7454, 2402, 257, 640, 11, 612, 373, 257]])


def _outputs(model):
    """Next-token log-probs at every position (decoder) or the last one (seed), in float64."""
    with torch.no_grad():
        if model.arch == "seed":
            return torch.log_softmax(model.seed(X).double(), -1)
        return model.decoder.output.log_probs(model.decoder(X)[0]).double()


def _model(arch, **cfg):
    torch.manual_seed(0)
    model = TinyStoriesModel(tiny_seed_config(**cfg) if arch == "seed" else tiny_decoder_config(**cfg)).eval()
    if arch == "decoder":
        model.decoder.output.set_token_counts(np.random.default_rng(0).integers(0, 1000, VOCAB_SIZE))
    return model


@pytest.fixture(scope="module")
def checkpoint(tokenizer, tmp_path_factory):
    """A saved decoder (default storage: float16) and the model it was saved from."""
    model = _model("decoder")
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("hub") / "ckpt"), model


@pytest.mark.parametrize("arch", ["seed", "decoder"])
def test_float32_checkpoint_round_trip_is_exact(tokenizer, tmp_path, arch):
    model = _model(arch, storage_dtype="float32")
    folder = save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    loaded = load_model(folder)
    assert loaded.config == model.config and not loaded.training
    assert torch.equal(_outputs(loaded), _outputs(model))
    assert loaded.tokenizer("Once upon a time")["input_ids"] == [7454, 2402, 257, 640]


def test_weights_are_stored_in_float16_by_default_and_run_in_float32(checkpoint):
    folder, model = checkpoint
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert torch.float16 in dtypes and torch.float32 not in dtypes
    loaded = load_model(folder)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert torch.equal(loaded.decoder.output.rank_of_id, model.decoder.output.rank_of_id)  # ints stay exact
    assert torch.allclose(_outputs(loaded), _outputs(model), atol=2e-3)


def test_checkpoint_folder_contents(checkpoint):
    folder, model = checkpoint
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names
    config = json.loads((folder / "config.json").read_text())
    assert config["arch"] == "decoder" and config["version"] == 1 and config["storage_dtype"] == "float16"
    assert not any(n.endswith((".tmp", ".old")) for n in os.listdir(folder.parent))


def test_from_pretrained_loads_a_local_folder(checkpoint):
    folder, model = checkpoint
    loaded = TinyStoriesModel.from_pretrained(str(folder))
    assert isinstance(loaded, TinyStoriesModel) and not loaded.training
    assert loaded.config == model.config
    assert torch.allclose(_outputs(loaded), _outputs(load_model(folder)), atol=0)


def test_saving_over_a_checkpoint_replaces_it(tokenizer, tmp_path):
    folder = save_checkpoint(_model("decoder"), tokenizer, tmp_path / "ckpt", extra_files={"notes.txt": "first"})
    torch.manual_seed(1)
    second = TinyStoriesModel(tiny_decoder_config(storage_dtype="float32")).eval()
    save_checkpoint(second, tokenizer, folder)
    assert not (folder / "notes.txt").exists()
    assert torch.equal(_outputs(load_model(folder)), _outputs(second))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_save_killed_between_its_renames_is_repaired_on_load(checkpoint, tmp_path):
    folder, _ = checkpoint
    shutil.copytree(folder, tmp_path / "ckpt.old")  # the old folder was moved aside, the new one never arrived
    loaded = load_model(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "config.json").is_file() and loaded.arch == "decoder"


@pytest.fixture
def broken(checkpoint, tmp_path):
    """A writable copy of the checkpoint, to damage."""
    return shutil.copytree(checkpoint[0], tmp_path / "broken")


def test_a_missing_folder_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint folder at") as e:
        load_model(tmp_path / "missing")
    assert str(tmp_path / "missing") in str(e.value)


def test_a_truncated_weights_file_is_a_checkpoint_error(broken):
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(broken)


def test_missing_weights_or_config_are_checkpoint_errors(broken):
    (broken / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        load_model(broken)
    (broken / "config.json").unlink()
    with pytest.raises(CheckpointError, match="has no config.json"):
        load_model(broken)


@pytest.mark.parametrize("change, message", [
    ({"version": 99}, "version 99"),
    ({"rope_theta": 10000.0}, "unknown fields: \\['rope_theta'\\]"),
])
def test_a_config_from_another_version_is_a_checkpoint_error(broken, change, message):
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(CheckpointError, match=message) as e:
        load_model(broken)
    assert "another version" in str(e.value)


def test_weights_that_do_not_match_the_config_are_a_checkpoint_error(broken):
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "n_layers": 3}))
    with pytest.raises(CheckpointError, match="does not match its config.json"):
        load_model(broken)


def test_an_unreachable_hub_repo_is_a_checkpoint_error():
    # HF_HUB_OFFLINE is set for the tests: the Hub cannot be reached, as on a machine without network
    with pytest.raises(CheckpointError, match="cannot download model someone/no-such-model@v2"):
        load_model("someone/no-such-model@v2")


def test_push_folder_uploads_the_checkpoint_but_not_the_optimizer_state(checkpoint, tmp_path, monkeypatch):
    folder = shutil.copytree(checkpoint[0], tmp_path / "ckpt")
    torch.save({"step": 1}, folder / "trainer_state.pt")
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = dict(repo_id=repo_id, **kwargs)
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, **kwargs):
        calls["upload_folder"] = kwargs

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    url = push_folder(folder, "someone/tiny-stories")
    assert url == "https://huggingface.co/someone/tiny-stories"
    assert calls["create_repo"]["repo_id"] == "someone/tiny-stories" and calls["create_repo"]["exist_ok"]
    up = calls["upload_folder"]
    assert up["repo_id"] == "someone/tiny-stories" and up.get("repo_type", "model") == "model"
    assert os.path.samefile(up["folder_path"], folder)
    # which files the Hub client would send, given the patterns push_folder passed
    sent = set(filter_repo_objects(os.listdir(folder), allow_patterns=up.get("allow_patterns"),
                                   ignore_patterns=up.get("ignore_patterns")))
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= sent
    assert "trainer_state.pt" not in sent
