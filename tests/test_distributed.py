"""Data-parallel training: `torchrun --nproc_per_node 2 train.py` on CPU (gloo) trains one model, not two.

Every rank ends with the same weights (train.py prints each rank's weights fingerprint under DDP), only rank 0
evaluates and writes the checkpoint, and the checkpoint loads with exactly those weights.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

pytestmark = pytest.mark.slow

NAMES, THINGS = ["Tom", "Lily", "Ben", "Mia"], ["ball", "cat", "tree", "cake"]
TAG_SETS = [["Dialogue"], ["Twist"], [], ["MoralValue", "Conflict"]]


def write_stories(folder: Path, train: int = 9, valid: int = 3) -> Path:
    """Short stories (one training window each) over a few dozen distinct tokens. 9 windows do not split evenly
    over 2 ranks, and no target ever falls in the tiny preset's adaptive-softmax tail clusters (whose weights
    then get no gradient): the two things DDP does not forgive."""
    folder.mkdir(parents=True)
    for split, n, first in (("train", train, 0), ("valid", valid, 100)):
        rows = [{"story": f"{NAMES[i % 4]} had a {THINGS[i // 4 % 4]}. It was fun.", "features": TAG_SETS[i % 4]}
                for i in range(first, first + n)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_two_cpu_processes_train_one_model(tmp_path):
    import train
    from tinystories import load_model

    data, out = write_stories(tmp_path / "data"), tmp_path / "checkpoint"
    # --max-minutes: the LR schedule follows the clock too, and every rank must read the same clock
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "train.py", "--preset", "tiny", "--data", str(data), "--out", str(out), "--max-steps", "5",
           "--epochs", "5", "--max-minutes", "30", "--batch-size", "4", "--warmup", "1", "--save-every", "0",
           "--threads", "1", "--storage-dtype", "float32", "--seed", "0"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TINYSTORIES_CACHE": str(tmp_path / "token-cache"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]

    fingerprints = dict(re.findall(r"rank (\d+): weights sha256 ([0-9a-f]{64})", proc.stderr))
    assert sorted(fingerprints) == ["0", "1"], proc.stderr[-4000:]
    assert fingerprints["0"] == fingerprints["1"], "the ranks' weights drifted apart"

    model = load_model(out)  # written by rank 0 alone, in float32: exactly the trained weights
    assert train.weights_sha256(model) == fingerprints["0"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 5 and metrics["device"] == "cpu x2"
    assert len(re.findall(r"step 5: valid", proc.stderr)) == 1  # evaluated once, on rank 0
