"""The two architectures: the seed's 35M-parameter encoder, and the causal decoder with its adaptive softmax."""
import numpy as np
import pytest
import torch

from conftest import tiny_decoder_config, tiny_seed_config
from tinystories import ConfigError, TinyStoriesConfig, TinyStoriesModel
from tinystories.data import IGNORE
from tinystories.tokenizer import VOCAB_SIZE


def test_seed_architecture_summary_has_about_35m_parameters(run_module):
    result = run_module("tinystories.model", "--arch", "seed")
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("Total params: ")
    n = int(last.removeprefix("Total params: ").replace(",", ""))
    assert 34_000_000 <= n <= 36_000_000
    assert "TransformerEncoder" in result.stdout


def test_seed_config_defaults_are_the_seeds_layers():
    cfg = TinyStoriesConfig(arch="seed", context=50)
    assert (cfg.d_model, cfg.n_heads, cfg.group_ff, cfg.layers_per_group) == (256, 8, (768, 1024, 1024, 768), 3)
    assert cfg.vocab_size == VOCAB_SIZE


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(0)
    model = TinyStoriesModel(tiny_decoder_config()).eval()
    # frequency ranks that are not the identity, so the id <-> rank mapping is exercised
    counts = np.random.default_rng(0).integers(0, 1000, VOCAB_SIZE)
    model.decoder.output.set_token_counts(counts)
    return model


def test_seed_predicts_one_next_token_per_window(seed_model):
    x = torch.randint(0, 50257, (3, 16))
    assert seed_model.seed(x).shape == (3, VOCAB_SIZE)
    y = torch.tensor([1, 2, 3])
    assert seed_model.target_log_probs(x, y).shape == (3,)
    assert seed_model(x, y).shape == ()


def test_decoder_predicts_every_position(decoder):
    x = torch.randint(0, 50257, (2, 10))
    assert decoder.decoder(x).shape == (2, 10, 32)
    y = torch.randint(0, 50257, (2, 10))
    assert decoder.target_log_probs(x, y).shape == (2, 10)
    loss = decoder(x, y)
    assert loss.shape == () and loss > 0


def test_decoder_output_is_a_distribution_over_every_id(decoder):
    x = torch.randint(0, 50266, (2, 12))
    h = decoder.decoder(x).reshape(-1, 32)
    lp = decoder.decoder.output.log_probs(h)
    assert lp.shape == (24, VOCAB_SIZE)
    assert torch.allclose(torch.logsumexp(lp.double(), -1), torch.zeros(24, dtype=torch.float64), atol=1e-4)
    # target_log_probs (only the clusters needed) agrees with the full distribution, ids in any cluster
    y = torch.tensor([[0, 50258, 50259, 50265, 13, 262, 40000, 7454, 11, 995, 50000, 1]] * 2)
    full = lp.reshape(2, 12, VOCAB_SIZE).gather(2, y[..., None])[..., 0]
    assert torch.allclose(decoder.target_log_probs(x, y), full, atol=1e-5)


def test_unscored_positions_cost_nothing(decoder):
    x = torch.randint(0, 50257, (1, 6))
    y = torch.tensor([[IGNORE, IGNORE, 5, 6, IGNORE, 7]])
    lp = decoder.target_log_probs(x, y)
    assert (lp[y == IGNORE] == 0).all() and (lp[y >= 0] < 0).all()
    assert torch.isclose(decoder(x, y), -lp.sum() / 3)


def test_input_embedding_is_tied_to_the_output(decoder):
    out = decoder.decoder.output
    # the most frequent id (rank 0 after the special tokens) is embedded by the head cluster's weights
    first = int(torch.nonzero(out.rank_of_id == 0)[0])
    assert torch.equal(out.embed(torch.tensor([first])), out.asm.head.weight[0:1])


@pytest.mark.parametrize("prompt_len", [1, 5])
def test_kv_cache_decoding_equals_a_full_forward_pass(decoder, prompt_len):
    x = torch.randint(0, 50257, (1, 16))
    with torch.no_grad():
        full = decoder.decoder.output.log_probs(decoder.decoder(x)[0])
        cache = decoder.decoder.new_cache()
        steps = [decoder.decoder(x[:, :prompt_len], cache)[0]]
        for t in range(prompt_len, 16):
            steps.append(decoder.decoder(x[:, t : t + 1], cache)[0])
        cached = decoder.decoder.output.log_probs(torch.cat(steps))
    assert cache.length == 16
    assert torch.allclose(cached, full, atol=1e-4)
    with pytest.raises(ValueError, match="exceed the context"):
        decoder.decoder(x[:, :1], cache)


@pytest.mark.parametrize("bad, message", [
    (dict(arch="rnn"), "arch must be one of"),
    (dict(approach=3), "approach must be 1 or 2"),
    (dict(context=4), "context must be between"),
    (dict(d_model=30, n_heads=4), "not divisible"),
    (dict(cutoffs=(2000, 1000)), "cutoffs"),
    (dict(storage_dtype="int8"), "storage_dtype"),
])
def test_bad_configs_are_refused_with_a_reason(bad, message):
    with pytest.raises(ConfigError, match=message):
        TinyStoriesConfig(**bad)


def test_config_from_another_version_is_refused():
    good = tiny_seed_config().__dict__
    assert TinyStoriesConfig.from_dict(dict(good)) == tiny_seed_config()
    with pytest.raises(ConfigError, match="another version"):
        TinyStoriesConfig.from_dict({**good, "version": 99})
    with pytest.raises(ConfigError, match="rope_theta"):
        TinyStoriesConfig.from_dict({**good, "rope_theta": 10000})
