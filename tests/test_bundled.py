"""The bundled checkpoints: what the app and `load_model()` start on must load, be what they claim, and write."""
import pytest

from tinystories import TAGS, generate, load_model
from tinystories.hub import DEFAULT_CHECKPOINT, read_card_metrics
from tinystories.tokenizer import TAG_TOKENS, VOCAB_SIZE


@pytest.fixture(scope="module", params=[1, 2], ids=["approach1", "approach2"])
def bundled(request):
    return request.param, load_model(DEFAULT_CHECKPOINT.parent / f"approach{request.param}")


def test_the_default_model_is_the_bundled_approach2():
    model = load_model()
    assert model.folder == DEFAULT_CHECKPOINT and model.config.approach == 2


def test_config_is_the_documented_decoder(bundled):
    approach, model = bundled
    cfg = model.config
    assert (cfg.arch, cfg.approach, cfg.context, cfg.d_model, cfg.n_layers) == ("decoder", approach, 64, 256, 4)
    assert cfg.storage_dtype == "float16"
    assert (model.folder / "README.md").is_file() and (model.folder / "loss_curve.png").is_file()
    metrics = read_card_metrics(model.folder)
    assert metrics["valid_nats_per_token"] <= 3.5 and metrics["steps"] == 2055


def test_tokenizer_has_the_special_and_tag_tokens(bundled):
    _, model = bundled
    tok = model.tokenizer
    assert len(tok) == VOCAB_SIZE
    assert tok.convert_tokens_to_ids(list(TAG_TOKENS)) == list(range(VOCAB_SIZE - len(TAGS), VOCAB_SIZE))
    assert tok.encode("Once upon a time") == [7454, 2402, 257, 640]


def test_writes_a_reproducible_english_story(bundled):
    _, model = bundled
    story = generate(model, ["Dialogue"], seed=7, max_tokens=40, temperature=0.8)
    assert story == generate(model, ["Dialogue"], seed=7, max_tokens=40, temperature=0.8)
    words = story.split()
    assert len(words) >= 15
    common = {"the", "a", "and", "was", "to", "he", "she", "they", "said", "it", "her", "his"}
    assert sum(w.lower().strip('.,!?"') in common for w in words) >= 3  # trained text, not random ids
