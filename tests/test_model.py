"""The two architectures: the seed's 35M-parameter encoder, and the causal decoder with its adaptive softmax."""
import numpy as np
import pytest
import torch

from conftest import fp16_valued_decoder, tiny_decoder_config, tiny_seed_config
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


# --- compact weights: float16 copies widened right before each product, for one-token steps on a CPU




def steps_through_the_cache(model, x, grad: bool):
    dec = model.decoder
    with torch.set_grad_enabled(grad):
        cache = dec.new_cache()
        hs = [dec(x[:, :4], cache)[:, -1]]
        for t in range(4, x.shape[1]):
            hs.append(dec(x[:, t : t + 1], cache)[:, -1])
        h = torch.cat(hs)
        head = dec.output.head_log_probs(h, dec.linear)
        tails = [dec.output.tail_log_probs(h, c, head, dec.linear) for c in range(1, len(dec.output.cutoffs) + 1)]
        return torch.cat([head, *tails], 1)


def test_compact_weights_give_the_very_same_floats(monkeypatch, without_native):
    """Through torch, a float16 copy widened before its product gives F.linear's floats exactly (native code, which
    rounds differently, is tested in test_kernels.py)."""
    monkeypatch.setattr("tinystories.model.CompactWeights.MIN_SIZE", 0)  # the tiny model's matrices too
    model = fp16_valued_decoder()
    x = torch.randint(0, 50257, (1, 12))
    plain = steps_through_the_cache(model, x, grad=True).detach()  # with gradients on: the plain products
    with torch.inference_mode():
        compact = steps_through_the_cache(model, x, grad=False)
    assert torch.equal(plain, compact)
    copies = [entry[2] for entry in model.decoder.compact.copies.values()]
    linears = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Linear)]
    assert len(copies) == len(linears) and all(c is not None and c.dtype == torch.float16 for c in copies)


def test_weights_that_are_not_float16_values_are_used_as_they_are(monkeypatch):
    monkeypatch.setattr("tinystories.model.CompactWeights.MIN_SIZE", 0)
    torch.manual_seed(0)
    model = TinyStoriesModel(tiny_decoder_config()).eval()  # float32 initialisation: not float16 values
    x = torch.randint(0, 50257, (1, 12))
    plain = steps_through_the_cache(model, x, grad=True).detach()
    with torch.no_grad():
        assert torch.equal(plain, steps_through_the_cache(model, x, grad=False))
    assert model.decoder.compact.copies and all(entry[2] is None for entry in model.decoder.compact.copies.values())


def test_a_compact_copy_follows_its_weights_when_they_change(monkeypatch):
    monkeypatch.setattr("tinystories.model.CompactWeights.MIN_SIZE", 0)
    model = fp16_valued_decoder()
    x = torch.randint(0, 50257, (1, 8))
    with torch.no_grad():
        before = model.decoder(x)
        model.decoder.blocks[0].mlp[0].weight.mul_(2)  # in place, as an optimizer step does (powers of 2: exact)
        after = model.decoder(x)
        expected = TinyStoriesModel(model.config).eval()
        expected.load_state_dict(model.state_dict())
    assert not torch.equal(before, after)
    with torch.enable_grad():
        assert torch.equal(after, expected.decoder(x).detach())


def steps_now_and_from_a_fresh_copy(model, x):
    """Steps of x through `model` as it is now, and through a fresh model loaded from its state: the same path
    (native code where it runs), so anything stale in `model` shows as a difference."""
    fresh = TinyStoriesModel(model.config).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.inference_mode():
        return steps_through_the_cache(model, x, grad=False), steps_through_the_cache(fresh, x, grad=False)


def test_generation_steps_follow_weights_changed_in_place_or_replaced(monkeypatch):
    """Decoder._step keeps what it reads (norms, prepared products) between tokens: a weight changed in place
    (an optimizer step, load_state_dict) or replaced by another tensor must be read afresh."""
    monkeypatch.setattr("tinystories.model.CompactWeights.MIN_SIZE", 0)
    model = fp16_valued_decoder()
    x = torch.randint(0, 50257, (1, 10))

    before, _ = steps_now_and_from_a_fresh_copy(model, x)
    with torch.no_grad():
        model.decoder.blocks[1].attn.proj.weight.mul_(2)  # in place; powers of 2 keep float16 values exact
    in_place, expected = steps_now_and_from_a_fresh_copy(model, x)
    assert not torch.equal(in_place, before) and torch.equal(in_place, expected)
    block = model.decoder.blocks[0]
    block.mlp[2].weight = torch.nn.Parameter(block.mlp[2].weight.detach() * 4)
    replaced, expected = steps_now_and_from_a_fresh_copy(model, x)
    assert not torch.equal(replaced, in_place) and torch.equal(replaced, expected)
    shapes = {m.weight.shape for m in model.decoder.modules() if isinstance(m, torch.nn.Linear)}
    assert len(model.decoder.compact.local.views) == len(shapes)  # one scratch view per shape: no stale copies kept


def test_generation_steps_follow_weights_given_new_storage(monkeypatch):
    """`p.data = ...` and a dtype round trip give a parameter new storage without a new tensor or version: the
    steps must read the new values (the native step reads storage directly: a stale address would be freed
    memory)."""
    monkeypatch.setattr("tinystories.model.CompactWeights.MIN_SIZE", 0)
    model = fp16_valued_decoder()
    x = torch.randint(0, 50257, (1, 10))

    before, _ = steps_now_and_from_a_fresh_copy(model, x)
    with torch.no_grad():
        fc, ln = model.decoder.blocks[0].mlp[0].weight, model.decoder.blocks[1].ln2.weight
        versions = fc._version, ln._version
        fc.data = fc.data * 2  # powers of 2 keep float16 values exact
        ln.data = ln.data + 0.5
    assert (fc._version, ln._version) == versions  # what the version check alone would miss
    after, expected = steps_now_and_from_a_fresh_copy(model, x)
    assert not torch.equal(after, before) and torch.equal(after, expected)
    model.double().float()  # new storage for every parameter, the same values
    again, _ = steps_now_and_from_a_fresh_copy(model, x)
    assert torch.equal(again, expected)


def test_threads_generating_at_once_get_what_each_gets_alone(monkeypatch):
    """The compact copies' scratch buffer and the step plan are per thread: the app serves stories concurrently."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr("tinystories.model.CompactWeights.MIN_SIZE", 0)
    model = fp16_valued_decoder()
    prompts = [torch.randint(0, 50257, (1, 16), generator=torch.Generator().manual_seed(i)) for i in range(4)]

    def run(x):
        with torch.inference_mode():
            return steps_through_the_cache(model, x, grad=False)

    alone = [run(x) for x in prompts]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(run, prompts * 3))
    assert all(torch.equal(got, alone[i % 4]) for i, got in enumerate(together))


def test_a_model_with_compact_copies_still_copies_and_pickles(monkeypatch):
    import copy
    import pickle

    monkeypatch.setattr("tinystories.model.CompactWeights.MIN_SIZE", 0)
    model = fp16_valued_decoder()
    with torch.no_grad():
        model.decoder(torch.randint(0, 50257, (1, 8)))
    assert model.decoder.compact.copies
    clone = copy.deepcopy(model)
    assert not clone.decoder.compact.copies  # rebuilt on use, for the clone's own weights
    assert pickle.loads(pickle.dumps(model)).decoder.compact.copies == {}


def test_a_full_softmax_decoder_gives_log_probs_by_token_id():
    """Without adaptive-softmax clusters the output rows are token ids: frequency ranks must not reorder them."""
    torch.manual_seed(0)
    cfg = TinyStoriesConfig(arch="decoder", d_model=32, n_heads=2, n_layers=1, d_ff=64, context=16, cutoffs=())
    model = TinyStoriesModel(cfg).eval()
    model.decoder.output.set_token_counts(np.random.default_rng(0).integers(0, 1000, VOCAB_SIZE))  # as train.py
    x, y = torch.randint(0, 50257, (1, 8)), torch.randint(0, 50257, (8,))
    with torch.no_grad():
        h = model.decoder(x)[0]
        every = model.decoder.output.log_probs(h)
        assert torch.allclose(every.gather(1, y[:, None])[:, 0], model.decoder.output.target_log_probs(h, y),
                              atol=1e-5)
