"""The seed's metric: nats per story, every story token and its [EOS] scored once given the tags, under the
model's own approach and context, over the full vocabulary."""
import json

import pytest
import torch

from conftest import tiny_seed_config
from tinystories import TinyStoriesModel, load_stories
from tinystories.data import TokenizedStories
from tinystories.evaluate import nats_per_story


@pytest.fixture(scope="module")
def valid_stories(stories_dir):
    return load_stories(stories_dir, "valid")[0]


@pytest.fixture(scope="module")
def valid_data(tokenizer, valid_stories):
    return TokenizedStories.build(tokenizer, valid_stories[:3])


def _by_hand(model, data, reference_log_probs):
    per_story = [-sum(reference_log_probs(model, data.story_ids(i), data.tags(i))) for i in range(len(data))]
    tokens = sum(len(data.story_ids(i)) + 1 for i in range(len(data)))
    return sum(per_story) / len(data), sum(per_story) / tokens, tokens


def _seed(approach):
    torch.manual_seed(approach)
    return TinyStoriesModel(tiny_seed_config(approach=approach)).eval()


@pytest.mark.parametrize("arch, approach", [("decoder", 1), ("decoder", 2), ("seed", 1), ("seed", 2)])
def test_nats_per_story_equals_a_hand_computation(request, valid_data, reference_log_probs, arch, approach):
    model = request.getfixturevalue(f"approach{approach}_model") if arch == "decoder" else _seed(approach)
    assert max(len(valid_data.story_ids(i)) for i in range(len(valid_data))) > 2 * model.config.context
    per_story, per_token, tokens = _by_hand(model, valid_data, reference_log_probs)
    got = nats_per_story(model, valid_data, batch_size=7, progress=False)
    assert got["stories"] == 3 and got["tokens"] == tokens
    assert got["nats_per_story"] == pytest.approx(per_story, rel=1e-5)
    assert got["nats_per_token"] == pytest.approx(per_token, rel=1e-5)


def test_the_batch_size_does_not_change_the_result(approach2_model, valid_data):
    a = nats_per_story(approach2_model, valid_data, batch_size=1, progress=False)
    b = nats_per_story(approach2_model, valid_data, batch_size=64, progress=False)
    assert a["tokens"] == b["tokens"] and a["nats_per_story"] == pytest.approx(b["nats_per_story"], rel=1e-6)


def test_evaluation_leaves_a_training_model_in_training_mode(valid_data):
    model = _seed(2).train()
    nats_per_story(model, valid_data, progress=False)
    assert model.training


def test_cli_prints_the_metrics_as_json(run_module, approach2_dir, approach2_model, tokenizer, stories_dir,
                                        valid_stories):
    result = run_module("tinystories.evaluate", "--model", approach2_dir, "--data", "tests/fixtures/stories",
                        "--max-stories", 5)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(metrics) == {"nats_per_story", "nats_per_token", "stories", "tokens"}
    expected = nats_per_story(approach2_model, TokenizedStories.build(tokenizer, valid_stories[:5]), progress=False)
    assert metrics["stories"] == 5 and metrics["tokens"] == expected["tokens"]
    assert metrics["nats_per_story"] == pytest.approx(expected["nats_per_story"], rel=1e-4)
    assert "5 valid stories from tests/fixtures/stories" in result.stderr

