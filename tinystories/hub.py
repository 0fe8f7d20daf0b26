"""Checkpoint folders: save (atomically), load (local folder or Hub repo id), push to the Hub.

A checkpoint is a folder: config.json + model.safetensors + tokenizer files + a model card README.md
(+ trainer_state.pt and train_log.jsonl when saved by train.py, so --resume can continue).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from . import kernels
from .model import ConfigError, TinyStoriesConfig, TinyStoriesModel
from .tokenizer import load_tokenizer

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "approach2"
WEIGHTS, CONFIG = "model.safetensors", "config.json"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete, corrupt or unreachable; the message says which and why."""


def split_revision(source: str) -> tuple[str, str | None]:
    """'user/repo@rev' -> ('user/repo', 'rev'); a local path is returned unchanged."""
    if "@" in source and not Path(source).exists():
        repo, rev = source.rsplit("@", 1)
        return repo, rev or None
    return source, None


def _recover(folder: Path) -> None:
    """Finish a save that was killed between its two renames (see save_checkpoint)."""
    old = folder.with_name(folder.name + ".old")
    if not folder.exists() and old.is_dir():
        os.replace(old, folder)


def resolve_folder(source: str | os.PathLike, revision: str | None = None, **hub_kwargs) -> Path:
    """A local checkpoint folder for `source`: the folder itself, or a Hub repo's snapshot."""
    path = Path(source)
    _recover(path)
    if path.is_dir():
        return path
    s = str(source)
    if path.suffix or s.startswith((".", "/", "~")) or s.count("/") != 1:
        raise CheckpointError(f"no checkpoint folder at {s} (expected a folder with {CONFIG} and {WEIGHTS}, or a Hub repo id)")
    from huggingface_hub import snapshot_download

    hub_kwargs = {k: v for k, v in hub_kwargs.items() if v is not None}
    try:
        return Path(snapshot_download(s, revision=revision, **hub_kwargs))
    except Exception as e:  # offline, no such repo, gated, bad revision...
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"cannot download model {s}{'@' + revision if revision else ''} from the Hugging Face Hub: {why}") from None


def load_weights(model: TinyStoriesModel, file: Path) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not file.is_file():
        raise CheckpointError(f"{file} is missing")
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file} is corrupt or truncated ({e}); re-download or re-save it") from None
    try:
        model.load_state_dict(state, strict=True)  # copies into the float32 parameters
    except RuntimeError as e:
        raise CheckpointError(f"{file} does not match its config.json: {str(e).splitlines()[0]}") from None


def load_model(source: str | os.PathLike | None = None, revision: str | None = None, device: str = "cpu") -> TinyStoriesModel:
    """A model with its tokenizer attached (`model.tokenizer`), from a folder or a Hub repo id (`repo@rev` ok).

    No argument: the bundled default weights (checkpoints/approach2).
    """
    source = str(source or DEFAULT_CHECKPOINT)
    if revision is None:
        source, revision = split_revision(source)
    folder = resolve_folder(source, revision)
    config_file = folder / CONFIG
    if not config_file.is_file():
        raise CheckpointError(f"{folder} has no {CONFIG}: not a checkpoint folder")
    try:
        config = TinyStoriesConfig.from_dict(json.loads(config_file.read_text()))
    except (json.JSONDecodeError, ConfigError) as e:
        raise CheckpointError(f"{config_file}: {e}") from None
    model = TinyStoriesModel(config)
    load_weights(model, folder / WEIGHTS)
    try:
        model.tokenizer = load_tokenizer(folder)
    except (OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"tokenizer of {folder}: {e}") from None
    model.source = source + (f"@{revision}" if revision else "")
    model.folder = folder
    if config.arch == "decoder" and torch.device(device).type == "cpu":
        kernels.native()  # build the native step now (once per machine, <1 s), not during the first story
    return model.to(device).eval()


def read_card_metrics(folder: str | os.PathLike) -> dict:
    """The metrics a checkpoint's train.py run recorded (metrics.json), or {}."""
    try:
        return json.loads((Path(folder) / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def save_checkpoint(model: TinyStoriesModel, tokenizer, out: str | os.PathLike, extra_files: dict | None = None,
                    trainer_state: dict | None = None) -> Path:
    """Write a complete checkpoint folder atomically: a kill at any moment leaves the previous one loadable.

    Everything goes to `out.tmp`, then out -> out.old, out.tmp -> out, out.old removed. A kill between the two
    renames is repaired by the next load (see _recover). `extra_files`: name -> str/bytes, or a callable
    that writes the file given its path.
    """
    out = Path(out)
    tmp, old = out.with_name(out.name + ".tmp"), out.with_name(out.name + ".old")
    _recover(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    raw = model.module if hasattr(model, "module") else model
    raw.save_pretrained(tmp, config=raw.config)
    tokenizer.save_pretrained(str(tmp))
    for name, content in (extra_files or {}).items():
        if callable(content):
            content(tmp / name)
        elif isinstance(content, bytes):
            (tmp / name).write_bytes(content)
        else:
            (tmp / name).write_text(content)
    if trainer_state is not None:
        torch.save(trainer_state, tmp / "trainer_state.pt")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def push_folder(folder: str | os.PathLike, repo_id: str, token: str | None = None, private: bool | None = None) -> str:
    """Upload a checkpoint folder (weights, config, tokenizer, card) to a Hub model repo; returns its URL.

    Token: `token`, else HF_TOKEN, else the saved `hf auth login`. trainer_state.pt (optimizer) stays local.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token or os.environ.get("HF_TOKEN"))
    repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(repo_id=repo.repo_id, folder_path=str(folder), repo_type="model",
                      ignore_patterns=["trainer_state.pt", "*.tmp"], commit_message="Upload tinystories checkpoint")
    return f"https://huggingface.co/{repo.repo_id}"
