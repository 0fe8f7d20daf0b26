"""The two architectures, one config, one Hub-loadable module.

seed:    the seed's model exactly: token + learned position embeddings, 4 groups of 3 TransformerEncoder layers
         (d=256, 8 heads, FF 768/1024/1024/768), Dropout 0.1 after each group, the last position's output,
         Linear 256 -> vocab. It predicts one token per window, so training costs a window per token.
decoder: a causal pre-LN decoder trained on every position, with a KV cache for generation. Its output is an
         adaptive softmax over frequency-sorted ids (Grave et al. 2017), tied with an adaptive input embedding
         (Baevski & Auli 2019): a proper distribution over all 50,266 ids at a fraction of the cost of a 50k-way
         Linear, which dominates a small model on a CPU.
"""
from __future__ import annotations

import ctypes
import math
import threading
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin

from . import kernels
from .tokenizer import GPT2_VOCAB_SIZE, PAD_ID, VOCAB_SIZE

CONFIG_VERSION = 1
ARCHS = ("seed", "decoder")


class ConfigError(ValueError):
    """A config.json this version cannot load."""


@dataclass
class TinyStoriesConfig:
    arch: str = "decoder"  # "seed" or "decoder"
    approach: int = 2  # 1: tags once at the story start; 2: tags at the start of every window
    context: int = 64  # tokens a window holds (the seed: 50)
    vocab_size: int = VOCAB_SIZE
    d_model: int = 256
    n_heads: int = 8
    dropout: float = 0.1
    # seed: groups of TransformerEncoder layers, one FF width per group
    group_ff: tuple[int, ...] = (768, 1024, 1024, 768)
    layers_per_group: int = 3
    # decoder
    n_layers: int = 6
    d_ff: int = 1024
    cutoffs: tuple[int, ...] = (2000, 10000)  # adaptive softmax clusters over frequency rank; () = full softmax
    div_value: float = 4.0
    storage_dtype: str = "float16"  # dtype of model.safetensors; the model runs in float32
    version: int = CONFIG_VERSION

    def __post_init__(self):
        self.group_ff, self.cutoffs = tuple(self.group_ff), tuple(self.cutoffs)
        if self.arch not in ARCHS:
            raise ConfigError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.approach not in (1, 2):
            raise ConfigError(f"approach must be 1 or 2, got {self.approach!r}")
        if not 8 <= self.context <= 4096:
            raise ConfigError(f"context must be between 8 and 4096 tokens, got {self.context}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if list(self.cutoffs) != sorted(set(self.cutoffs)) or any(not 0 < c < self.vocab_size for c in self.cutoffs):
            raise ConfigError(f"cutoffs must increase strictly within (0, vocab_size), got {self.cutoffs}")
        if self.storage_dtype not in ("float32", "float16", "bfloat16"):
            raise ConfigError(f"storage_dtype must be float32, float16 or bfloat16, got {self.storage_dtype!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "TinyStoriesConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"config must be a JSON object, got {type(d).__name__}")
        version = d.get("version", CONFIG_VERSION)
        unknown = set(d) - {f.name for f in fields(cls)}
        if version != CONFIG_VERSION or unknown:
            raise ConfigError(
                f"config.json is from another version of tinystories (version {version}, this is "
                f"{CONFIG_VERSION}; unknown fields: {sorted(unknown) or 'none'}): retrain or upgrade the package"
            )
        try:
            return cls(**d)
        except TypeError as e:
            raise ConfigError(f"bad config.json: {e}") from None


# ----------------------------------------------------------------------------------------------- seed


class SeedEncoder(nn.Module):
    """The seed's model: encoder groups over a (left-padded) window, predicting from its last position."""

    def __init__(self, cfg: TinyStoriesConfig):
        super().__init__()
        d = cfg.d_model
        self.embedding = nn.Embedding(cfg.vocab_size, d)
        self.position = nn.Embedding(cfg.context, d)  # LearnedPositionalEmbedding(max_length=context)
        self.groups = nn.ModuleList(
            nn.TransformerEncoder(
                nn.TransformerEncoderLayer(d, cfg.n_heads, ff, cfg.dropout, batch_first=True),
                cfg.layers_per_group,
                enable_nested_tensor=False,
            )
            for ff in cfg.group_ff
        )
        self.dropouts = nn.ModuleList(nn.Dropout(cfg.dropout) for _ in cfg.group_ff)
        self.head = nn.Linear(d, cfg.vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx [B, T] -> logits [B, V] of the token that follows idx[:, -1] (SelectLastToken)."""
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.embedding(idx) + self.position(pos)
        pad = idx == PAD_ID
        for group, drop in zip(self.groups, self.dropouts):
            x = drop(group(x, src_key_padding_mask=pad))
        return self.head(x[:, -1])


# ----------------------------------------------------------------------------------------------- decoder


class KVCache:
    """Keys and values of every layer for the tokens fed so far; one batch row per sequence.

    Preallocated for the whole context on first use: a step writes its token's keys and values in place instead
    of concatenating (and so copying) everything cached, every layer, every token.
    """

    def __init__(self, n_layers: int, context: int):
        self.n_layers, self.context = n_layers, context
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.length = 0  # tokens cached (the same in every layer, once a forward pass is done)
        self._pointers = None

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this layer's k, v [B, H, T, hd] after the cached tokens; return all of them (views)."""
        if not self.keys:
            B, H, _, hd = k.shape
            self.keys = [k.new_empty(B, H, self.context, hd) for _ in range(self.n_layers)]
            self.values = [v.new_empty(B, H, self.context, hd) for _ in range(self.n_layers)]
        end = self.length + k.shape[2]
        keys, values = self.keys[layer], self.values[layer]
        keys.narrow(2, self.length, k.shape[2]).copy_(k)
        values.narrow(2, self.length, v.shape[2]).copy_(v)
        return keys.narrow(2, 0, end), values.narrow(2, 0, end)

    def pointers(self):
        """Each layer's keys, then values, as a ctypes array of pointers (the native step writes the next token's
        there), or None where that step cannot use them: not yet allocated, or not one float32 row."""
        if self._pointers is None and self.keys:
            tensors = [t for pair in zip(self.keys, self.values) for t in pair]
            if all(_plain_float32(t) and t.shape[0] == 1 for t in tensors):
                self._pointers = (ctypes.c_void_p * len(tensors))(*(t.data_ptr() for t in tensors))
        return self._pointers


def _storage(t: torch.Tensor) -> tuple[int, int]:
    """What changes when a tensor's values may have: its version (in-place writes) and its data's address (new
    storage under the same tensor: `p.data = ...`, `model.double().float()`). Kept copies and plans compare it."""
    return t._version, t.data_ptr()


def _plain_float32(t: torch.Tensor) -> bool:
    """Whether native code can read `t` as a plain float32 array: on the CPU, contiguous."""
    return t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous()


def _call(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return layer(x)


class CompactWeights:
    """Half-size copies of a decoder's big matrices, for inference on a CPU.

    Generating one token multiplies one vector by every matrix: on a CPU that is time spent reading ~19 MB of
    float32 weights from memory, not arithmetic. Weights loaded from a float16 (or bfloat16) checkpoint hold
    exactly float16 values, so each matrix is kept in float16. One row (a generation step) is multiplied by the
    float16 matrix itself in native code where it runs (tinystories.kernels: widened in registers, the same values
    up to float32 rounding); otherwise, and for several rows, the copy is widened into a small float32 scratch
    buffer right before its product: the very same floats as the float32 weight. A matrix whose values are not
    exactly representable (a model being trained, a float32 checkpoint) is used as it is.
    """

    MIN_SIZE = 1 << 14  # smaller matrices stay in cache anyway

    def __init__(self):
        self.copies: dict[int, tuple] = {}  # id(layer) -> (its weight, _storage(weight), compact copy or None)
        self.local = threading.local()  # per thread (the app serves stories concurrently): scratch buffer, views

    def __deepcopy__(self, memo):
        return CompactWeights()

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()

    def linear(self, layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return product(self.prepare(layer), x)

    def prepare(self, layer: nn.Linear) -> tuple:
        """(compact copy or None, the float32 matrix to multiply by, bias): what `product` needs for layer(x).
        With a copy, the matrix is a view of this thread's scratch buffer, which `product` fills first."""
        w = layer.weight
        entry = self.copies.get(id(layer))
        if entry is None or entry[0] is not w or entry[1] != _storage(w):
            entry = self.copies[id(layer)] = (w, _storage(w), self._exact_copy(w))
        half, bias = entry[2], layer.bias
        if half is None:
            return None, w, bias, None
        return half, self._scratch(half.shape), bias, self._native(half, bias)

    @staticmethod
    def _native(half: torch.Tensor, bias: torch.Tensor | None) -> tuple | None:
        """(kernel, W, b, N, K) for the native product of one row (tinystories.kernels), or None: torch's."""
        fn = kernels.matvec()
        if (fn is None or half.dtype != torch.float16 or half.dim() != 2 or not half.is_contiguous()
                or half.shape[1] % kernels.K_MULTIPLE):
            return None
        if bias is not None and not _plain_float32(bias):
            return None
        return fn, half.data_ptr(), None if bias is None else bias.data_ptr(), half.shape[0], half.shape[1]

    def _scratch(self, shape: torch.Size) -> torch.Tensor:
        """A float32 view of this shape on this thread's scratch buffer (every matrix's, from its start)."""
        local = self.local
        buf, views = getattr(local, "buf", None), getattr(local, "views", None)
        if buf is None or buf.numel() < shape.numel():
            with torch.inference_mode(False):  # a normal tensor: writable in and out of inference mode
                buf = local.buf = torch.empty(shape.numel())
            views = local.views = {}
        view = views.get(shape)
        if view is None:
            with torch.inference_mode(False):
                view = views[shape] = buf[: shape.numel()].view(shape)
        return view

    def _exact_copy(self, w: torch.Tensor) -> torch.Tensor | None:
        if w.device.type != "cpu" or w.dtype != torch.float32 or w.numel() < self.MIN_SIZE:
            return None
        with torch.no_grad():
            for dtype in (torch.float16, torch.bfloat16):
                half = w.detach().to(dtype)
                if torch.equal(half.float(), w):
                    return half
        return None


def product(prepared: tuple, x: torch.Tensor) -> torch.Tensor:
    """x times a matrix prepared by CompactWeights.prepare: F.linear(x, weight, bias). One row (a generation step)
    goes through the native kernel where it runs (the same values up to float32 rounding); otherwise the float16
    copy is widened into the scratch view and F.linear gives the very same floats as the float32 weight."""
    half, w, bias, native = prepared
    if native is not None and x.numel() == native[4] and x.dtype == torch.float32 and x.is_cpu \
            and not torch.is_grad_enabled():
        fn, w_ptr, b_ptr, n, k = native
        x = x.contiguous()
        y = torch.empty(x.shape[:-1] + (n,))
        fn(w_ptr, x.data_ptr(), b_ptr, y.data_ptr(), n, k)  # the tensors it reads are held by `prepared`
        return y
    if half is not None:
        w.copy_(half)
    return F.linear(x, w, bias)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: TinyStoriesConfig):
        super().__init__()
        self.n_heads, self.dropout = cfg.n_heads, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x, cache: KVCache | None = None, layer: int = 0, linear=_call):
        B, T, C = x.shape
        q, k, v = linear(self.qkv, x).view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)
        past = cache is not None and cache.length > 0
        if past and T > 1:
            raise ValueError("feed cached sequences one token at a time")
        if cache is not None:
            k, v = cache.update(layer, k, v)
        # One new token attends to everything cached: no mask. A prompt (no past) is causal.
        causal = not past and T > 1
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=self.dropout if self.training else 0.0)
        return linear(self.proj, y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, cfg: TinyStoriesConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.d_ff), nn.GELU(), nn.Linear(cfg.d_ff, cfg.d_model), nn.Dropout(cfg.dropout)
        )

    def forward(self, x, cache=None, layer=0, linear=_call):
        x = x + self.attn(self.ln1(x), cache, layer, linear)
        fc, act, out, drop = self.mlp  # the Sequential's own steps, so that `linear` can do the products
        return x + drop(linear(out, act(linear(fc, self.ln2(x)))))


class AdaptiveOutput(nn.Module):
    """Adaptive softmax over frequency ranks, whose weights double as the input embedding.

    Ranks: rank_of_id maps a token id to its frequency rank in the training data (specials first), so the
    common tokens share the cheap head cluster. Log-probabilities are returned in token-id order.
    """

    def __init__(self, cfg: TinyStoriesConfig):
        super().__init__()
        self.cutoffs = list(cfg.cutoffs)
        if self.cutoffs:
            self.asm = nn.AdaptiveLogSoftmaxWithLoss(cfg.d_model, cfg.vocab_size, self.cutoffs, cfg.div_value)
            self.starts = [0] + self.cutoffs
            self.ends = self.cutoffs + [cfg.vocab_size]
        else:
            self.linear = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.register_buffer("rank_of_id", torch.arange(cfg.vocab_size))

    @torch.no_grad()
    def set_token_counts(self, counts: np.ndarray) -> None:
        """Order ids by how often they occur in the training data; special tokens first."""
        counts = np.asarray(counts, dtype=np.float64).copy()
        counts[GPT2_VOCAB_SIZE:] = np.inf
        order = np.argsort(-counts, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        self.rank_of_id.copy_(torch.from_numpy(rank))

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        if not self.cutoffs:
            return F.embedding(idx, self.linear.weight)
        if idx.numel() == 1 and not torch.is_grad_enabled():
            return self._embed_one(int(self.rank_of_id[int(idx)])).view(*idx.shape, -1)
        rank = self.rank_of_id[idx]
        out = torch.empty(*idx.shape, self.asm.in_features, device=idx.device, dtype=self.asm.head.weight.dtype)
        for c, (lo, hi) in enumerate(zip(self.starts, self.ends)):
            sel = (rank >= lo) & (rank < hi)
            if c == 0:
                out[sel] = self.asm.head.weight[rank[sel]]
            elif sel.any():
                down, up = self.asm.tail[c - 1]  # output: h -> down -> up; input: up.weight[r] @ down.weight
                out[sel] = up.weight[rank[sel] - lo] @ down.weight
        return out

    def _embed_one(self, rank: int) -> torch.Tensor:
        """The embedding [1, d] of the token of this rank: what `embed` computes, without its per-cluster masks
        (a generation step feeds one token). Same operations on the same [1, ...] shapes, so the same floats."""
        for c, (lo, hi) in enumerate(zip(self.starts, self.ends)):
            if rank < hi:
                if c == 0:
                    return self.asm.head.weight[rank : rank + 1]
                down, up = self.asm.tail[c - 1]
                return up.weight[rank - lo : rank - lo + 1] @ down.weight
        raise IndexError(f"rank {rank} is outside the vocabulary")

    def clusters(self) -> list[tuple[int, int]]:
        """(first rank, end rank) of each cluster: the head's tokens, then each tail cluster's."""
        return list(zip([0] + self.cutoffs, self.cutoffs + [self.rank_of_id.numel()])) if self.cutoffs else []

    def head_log_probs(self, h: torch.Tensor, linear=_call) -> torch.Tensor:
        """h [N, d] -> log-probabilities [N, shortlist + tail clusters] of the head's tokens (by rank), then of
        each tail cluster as a whole. The same floats as `log_probs` gives those tokens."""
        return F.log_softmax(linear(self.asm.head, h), dim=1)

    def tail_log_probs(self, h: torch.Tensor, cluster: int, head: torch.Tensor, linear=_call) -> torch.Tensor:
        """h [N, d], head_log_probs(h) -> log-probabilities [N, cluster size] of tail cluster `cluster` (1, 2, ...)
        by rank: the same operations as AdaptiveLogSoftmaxWithLoss.log_prob, so the same floats."""
        index = self.cutoffs[0] + cluster - 1
        down, up = self.asm.tail[cluster - 1]
        return F.log_softmax(linear(up, linear(down, h)), dim=1) + head[:, index].unsqueeze(1)

    def log_probs(self, h: torch.Tensor) -> torch.Tensor:
        """h [N, d] -> log-probabilities [N, V] over every token id."""
        if not self.cutoffs:  # a full softmax's rows are token ids already (see embed, target_log_probs)
            return F.log_softmax(self.linear(h), -1)
        return self.asm.log_prob(h).index_select(1, self.rank_of_id)  # = [:, rank_of_id], 3x faster on a CPU

    def target_log_probs(self, h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """h [N, d], target ids [N] -> log p(target) [N], computing only the clusters the targets need."""
        if not self.cutoffs:
            return F.log_softmax(self.linear(h), -1).gather(1, target[:, None])[:, 0]
        return self.asm(h, self.rank_of_id[target]).output


class Decoder(nn.Module):
    def __init__(self, cfg: TinyStoriesConfig):
        super().__init__()
        self.context = cfg.context
        self.output = AdaptiveOutput(cfg)
        self.position = nn.Embedding(cfg.context, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.apply(self._init)
        self.compact = CompactWeights()

    def linear(self, layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """layer(x); without gradients, from the matrix's compact copy when it has one (same floats)."""
        return layer(x) if torch.is_grad_enabled() else self.compact.linear(layer, x)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def new_cache(self) -> KVCache:
        return KVCache(len(self.blocks), self.context)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """idx [B, T] -> hidden states [B, T, d]; with a cache, positions continue after the cached tokens."""
        start = cache.length if cache is not None else 0
        if start + idx.shape[1] > self.context:
            raise ValueError(f"{start + idx.shape[1]} tokens exceed the context of {self.context}")
        if start and idx.shape[1] == 1 and not torch.is_grad_enabled() and not self.training:
            return self._step(idx, cache)
        return self._through_modules(idx, cache, start)

    def _through_modules(self, idx: torch.Tensor, cache: KVCache | None, start: int) -> torch.Tensor:
        """forward's general path: positions from `start`, every block as an nn.Module call."""
        pos = torch.arange(start, start + idx.shape[1], device=idx.device)
        x = self.drop(self.output.embed(idx) + self.position(pos))
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i, self.linear)
        if cache is not None:
            cache.length = start + idx.shape[1]
        return self.ln_f(x)

    def _step(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One token after the cached ones, for generation: forward()'s operations on the same tensors (so the
        same floats: tests/test_model.py), as plain function calls on tensors looked up once (_step_plan),
        without nn.Module's per-call and per-attribute overhead, which is a fair share of a step this small."""
        start = cache.length
        x = self.output.embed(idx) + self.position.weight[start : start + 1]
        B, T, C = x.shape
        blocks, ln_f, native = self._step_plan()
        if native is not None and B == 1 and x.dtype == torch.float32:
            pointers = cache.pointers()
            if pointers is not None:  # the whole step in one native call (tinystories.kernels)
                fn, sizes, params, eps, scratch = native
                x, out = x.contiguous(), torch.empty(1, 1, C)  # named: alive until the call returns
                fn(*sizes, params, eps, pointers, start, x.data_ptr(), out.data_ptr(), scratch.data_ptr())
                cache.length = start + 1
                return out
        for i, (ln1, qkv, n_heads, proj, ln2, fc, out) in enumerate(blocks):
            h = F.layer_norm(x, (C,), *ln1)
            q, k, v = product(qkv, h).view(B, T, 3, n_heads, C // n_heads).permute(2, 0, 3, 1, 4)
            k, v = cache.update(i, k, v)
            y = F.scaled_dot_product_attention(q, k, v)
            x = x + product(proj, y.transpose(1, 2).reshape(B, T, C))
            h = F.layer_norm(x, (C,), *ln2)
            x = x + product(out, F.gelu(product(fc, h)))
        cache.length = start + 1
        return F.layer_norm(x, (C,), *ln_f)

    def _step_plan(self) -> tuple[list[tuple], tuple]:
        """Every tensor _step reads, per block, with its products prepared (CompactWeights.prepare). Kept per
        thread (the compact copies' scratch views are) and rebuilt when a tensor is replaced, changes in place, or
        gets new storage (`p.data = ...`, `model.double().float()`: same tensor, same version): training,
        load_state_dict or a dtype round trip between stories. The native step reads the storage itself."""
        local = self.compact.local
        plan = getattr(local, "step_plan", None)
        if plan is not None and all(owner._parameters[name] is t and _storage(t) == storage
                                    for owner, name, t, storage in plan[0]):
            return plan[1]
        used = []  # (module, parameter name, the tensor read)

        def read(module: nn.Module) -> nn.Module:
            used.extend((module, name, t) for name, t in module._parameters.items() if t is not None)
            return module

        def norm(ln: nn.LayerNorm) -> tuple:
            return read(ln).weight, ln.bias, ln.eps

        def prepared(layer: nn.Linear) -> tuple:
            return self.compact.prepare(read(layer))

        blocks = [(norm(b.ln1), prepared(b.attn.qkv), b.attn.n_heads, prepared(b.attn.proj), norm(b.ln2),
                   prepared(b.mlp[0]), prepared(b.mlp[2])) for b in self.blocks]
        final = norm(self.ln_f)
        steps = (blocks, final, self._native_plan(blocks, final))
        local.step_plan = ([(owner, name, t, _storage(t)) for owner, name, t in used], steps)
        return steps

    def _native_plan(self, blocks: list[tuple], ln_f: tuple) -> tuple | None:
        """The native step's arguments for these tensors (kernels.decoder_step: pointers, sizes, a scratch buffer
        for this thread), or None where it cannot run them: no native library, a matrix without a float16 copy,
        a norm that is not plain float32."""
        fn = kernels.decoder_step()
        if fn is None or not blocks:
            return None
        d, n_heads, d_ff = ln_f[0].numel(), blocks[0][2], blocks[0][5][1].shape[0]
        shapes = [(3 * d, d), (d, d), (d_ff, d), (d, d_ff)]
        params, eps = [], []

        def norm(weight, bias, e):
            if not all(t is not None and _plain_float32(t) and t.shape == (d,) for t in (weight, bias)):
                raise ValueError
            eps.append(e)
            return [weight.data_ptr(), bias.data_ptr()]

        def matrix(prepared, shape):
            native = prepared[3]
            if native is None or (native[3], native[4]) != shape:
                raise ValueError
            return [native[1], native[2]]

        try:
            for ln1, qkv, heads, proj, ln2, fc, out in blocks:
                if heads != n_heads:
                    return None
                params += norm(*ln1) + matrix(qkv, shapes[0]) + matrix(proj, shapes[1]) + norm(*ln2)
                params += matrix(fc, shapes[2]) + matrix(out, shapes[3])
            params += norm(*ln_f)
        except ValueError:
            return None
        sizes = (len(blocks), d, n_heads, d_ff, self.context)
        with torch.inference_mode(False):
            scratch = torch.empty(6 * d + d_ff + self.context)
        return fn, sizes, (ctypes.c_void_p * len(params))(*params), (ctypes.c_double * len(eps))(*eps), scratch


# ----------------------------------------------------------------------------------------------- the model


def _encode_config(cfg: TinyStoriesConfig) -> dict:
    return asdict(cfg)


class TinyStoriesModel(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="tinystories",
    tags=["text-generation", "tinystories", "tag-conditioned"],
    license="mit",
    coders={TinyStoriesConfig: (_encode_config, TinyStoriesConfig.from_dict)},
):
    """A tag-conditioned story model of either arch. `tokenizer` is attached by `load_model`."""

    def __init__(self, config: TinyStoriesConfig):
        super().__init__()
        if isinstance(config, dict):
            config = TinyStoriesConfig.from_dict(config)
        self.config = config
        self.tokenizer = None
        if config.arch == "seed":
            self.seed = SeedEncoder(config)
        else:
            self.decoder = Decoder(config)

    @property
    def arch(self) -> str:
        return self.config.arch

    @property
    def approach(self) -> int:
        return self.config.approach

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def target_log_probs(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(y | x) of each scored target. seed: x [B, T], y [B]. decoder: x, y [B, T], IGNORE -> 0."""
        if self.arch == "seed":
            return F.log_softmax(self.seed(x).float(), -1).gather(1, y[:, None])[:, 0]
        h = self.decoder(x)
        out = torch.zeros(y.shape, device=y.device, dtype=torch.float32)
        scored = y >= 0
        out[scored] = self.decoder.output.target_log_probs(h[scored], y[scored]).float()
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy (nats) over the scored targets of a batch."""
        return -self.target_log_probs(x, y).sum() / (y >= 0).sum().clamp(min=1)

    # --- weights on disk: stored in config.storage_dtype, run in float32
    def _save_pretrained(self, save_directory) -> None:
        from safetensors.torch import save_file

        dtype = getattr(torch, self.config.storage_dtype)
        state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(save_directory / "model.safetensors"), metadata={"format": "pt"})

    @classmethod
    def _from_pretrained(cls, *, model_id, revision, cache_dir, force_download, local_files_only, token,
                         map_location="cpu", strict=True, **model_kwargs):
        from .hub import resolve_folder, load_weights

        folder = resolve_folder(model_id, revision=revision, cache_dir=cache_dir, token=token,
                                local_files_only=local_files_only, force_download=force_download)
        model = cls(**model_kwargs)
        load_weights(model, folder / "model.safetensors")
        return model.to(map_location).eval()


def summary(cfg: TinyStoriesConfig) -> str:
    from torchinfo import summary as torchinfo_summary

    model = TinyStoriesModel(cfg)
    x = torch.full((1, cfg.context), PAD_ID)
    depth = 3 if cfg.arch == "seed" else 2
    if cfg.arch == "seed":
        info = torchinfo_summary(model.seed, input_data=[x], depth=depth, verbose=0)
    else:
        info = torchinfo_summary(model.decoder, input_data=[x], depth=depth, verbose=0)
    return f"{info}\nTotal params: {model.num_params():,}"


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description="Print a torchinfo summary of an architecture.")
    p.add_argument("--arch", choices=ARCHS, default="seed")
    p.add_argument("--context", type=int, default=None)
    args = p.parse_args(argv)
    cfg = TinyStoriesConfig(arch=args.arch, context=args.context or (50 if args.arch == "seed" else 64))
    print(summary(cfg))


if __name__ == "__main__":
    main()
