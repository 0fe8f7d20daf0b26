"""Tag detector: the probability that a story carries each of the six narrative tags.

It measures tag adherence (tinystories.adherence): a model asked for a Twist should write stories this detector
calls Twist. One-vs-rest logistic regression (L2, L-BFGS) over
  - word uni+bi-grams, plus the unigrams of the story's first and last thirds (where hints and endings live),
    the `max_features` most frequent in the training stories, log counts, L2-normalised per story;
  - two story-level cues for quoted speech (Dialogue).
Each tag's decision threshold maximises its F1 on out-of-fold probabilities of the TRAIN stories (5 hash
folds), so it is never chosen on the stories it is scored on; the saved weights are then refit on all of them.

Valid split of the project corpus (300 stories): macro F1 0.867 (Dialogue 1.00, MoralValue 0.99, BadEnding 0.98,
Conflict 0.85, Twist 0.76, Foreshadowing 0.63); out-of-fold on train 0.859. Alternatives (fit on 80% of train,
thresholds on the other 20%, valid macro F1): this design 0.872, at l2 = 1e-4 / 1e-6 0.846 / 0.864, 15k / 60k
n-grams 0.868 / 0.872; without the first/last-third unigrams at l2 = 1e-3 / 1e-4 / 1e-5 0.754 / 0.830 / 0.832,
unigrams only 0.800. Thresholds left at 0.5: 0.706 (vs 0.826 tuned, same model, no regions, l2 = 1e-4). A quote rule for Dialogue scores the same 1.00 as the learned weights.

On disk a detector is a folder (checkpoints/tag_detector/, loaded by default): config.json (tags,
thresholds, feature settings, how it was trained and its reports) + vocab.txt (one n-gram a line) +
weights.safetensors.

    python -m tinystories.detector --data ../shared/data --out checkpoints/tag_detector
"""
from __future__ import annotations

import json
import os
import re
import sys
import warnings
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from .tokenizer import TAGS, normalize_tags

DEFAULT_DETECTOR = Path(__file__).resolve().parent.parent / "checkpoints" / "tag_detector"
CONFIG, VOCAB, WEIGHTS = "config.json", "vocab.txt", "weights.safetensors"
FORMAT_VERSION = 1

_PLAIN = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"})
_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|[\"!?.,]")
DENSE = ("has_quote", "log_quotes")  # story-level cues, appended after the n-gram columns


class DetectorError(RuntimeError):
    """A detector folder that is missing, incomplete or from another format version."""


@dataclass
class FeatureSettings:
    bigrams: bool = True
    max_features: int = 30_000  # most frequent n-grams (by stories containing them) kept as columns
    min_df: int = 3  # an n-gram must occur in this many training stories
    regions: bool = True  # also unigrams of the story's first and last thirds, marked "first:" / "last:"
    dense: bool = True  # the quoted-speech cues in DENSE


def words(text: str) -> list[str]:
    """Lower-case word tokens of a story plus the punctuation that carries tags (quotes, ! ? . ,)."""
    return _TOKEN.findall(text.lower().translate(_PLAIN))


def ngram_counts(text: str, settings: FeatureSettings) -> Counter:
    toks = words(text)
    counts = Counter(toks)
    if settings.bigrams:
        counts.update(f"{a} {b}" for a, b in zip(toks, toks[1:]))
    if settings.regions:
        counts.update("first:" + t for t in toks[: len(toks) // 3])
        counts.update("last:" + t for t in toks[2 * len(toks) // 3 :])
    return counts


def dense_features(text: str) -> list[float]:
    quotes = text.translate(_PLAIN).count('"')
    return [float(quotes > 0), float(np.log1p(quotes / 2))]


def _story_parts(stories) -> tuple[list[str], np.ndarray]:
    """Texts and a [n, 6] 0/1 label matrix from Story objects or (text, tags) pairs."""
    texts, labels = [], np.zeros((len(stories), len(TAGS)), dtype=np.float32)
    for i, s in enumerate(stories):
        text, tags = (s.text, s.tags) if hasattr(s, "text") else s
        texts.append(text)
        for t in normalize_tags(tags):
            labels[i, TAGS.index(t)] = 1
    return texts, labels


def build_vocab(counts: list[Counter], settings: FeatureSettings) -> list[str]:
    """The n-grams in at least `min_df` stories, most frequent first (ties alphabetical), at most `max_features`.

    `counts`: ngram_counts of each story.
    """
    df = Counter()
    for c in counts:
        df.update(c.keys())
    kept = sorted((g for g, n in df.items() if n >= settings.min_df), key=lambda g: (-df[g], g))
    return kept[: settings.max_features]


def featurize(texts: list[str], vocab: dict[str, int], settings: FeatureSettings, counts: list[Counter] | None = None):
    """Sparse rows (indptr, indices, values): L2-normalised log(1 + count) of known n-grams, then the cues.

    `counts`: the stories' ngram_counts, when the caller has them already.
    """
    indptr, indices, values = [0], [], []
    for i, text in enumerate(texts):
        story = counts[i] if counts is not None else ngram_counts(text, settings)
        known = [(vocab[g], n) for g, n in story.items() if g in vocab]
        vals = np.log1p(np.array([n for _, n in known], dtype=np.float64))
        norm = np.sqrt((vals**2).sum())
        indices += [c for c, _ in known]
        values += list(vals / norm) if norm > 0 else []
        if settings.dense:
            indices += range(len(vocab), len(vocab) + len(DENSE))
            values += dense_features(text)
        indptr.append(len(indices))
    return np.array(indptr, dtype=np.int64), np.array(indices, dtype=np.int64), np.array(values, dtype=np.float32)


def take_rows(rows, idx: np.ndarray):
    """The sparse rows `idx` of (indptr, indices, values)."""
    indptr, indices, values = rows
    starts, ends = indptr[idx], indptr[idx + 1]
    picked = np.concatenate([np.arange(a, e) for a, e in zip(starts, ends)]) if len(idx) else np.zeros(0, np.int64)
    return np.r_[0, np.cumsum(ends - starts)], indices[picked], values[picked]


def sparse_proba(rows, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """sigmoid(rows @ weights + bias) for sparse rows, in float64."""
    indptr, indices, values = rows
    n = len(indptr) - 1
    row = np.repeat(np.arange(n), np.diff(indptr))
    x = values.astype(np.float64)
    logits = np.stack([np.bincount(row, x * weights[indices, j], minlength=n) for j in range(weights.shape[1])], 1)
    return 1 / (1 + np.exp(-(logits + bias)))


def fit_logistic(rows, labels: np.ndarray, n_features: int, l2: float, max_iter: int = 400):
    """One-vs-rest L2-regularised logistic regression: for every tag, mean log-loss + l2/2 * |w|^2.

    All tags at once with full-batch L-BFGS in torch; the gradient is written out (X^T (p - y) / n), with X
    and X^T as CSR matrices, because autograd through a sparse matmul re-sorts X on every step.
    Returns weights [n_features, tags] and bias [tags], float32. Deterministic for fixed inputs.
    """
    import torch

    indptr, indices, values = rows
    n = len(indptr) - 1
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        x = torch.sparse_csr_tensor(torch.from_numpy(indptr), torch.from_numpy(indices),
                                    torch.from_numpy(values.astype(np.float64)), (n, n_features))
        xt = x.t().to_sparse_csr()
    y = torch.from_numpy(labels.astype(np.float64))
    w = torch.zeros(n_features, labels.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(labels.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, tolerance_grad=1e-6, tolerance_change=1e-9,
                            history_size=20, line_search_fn="strong_wolfe")

    @torch.no_grad()
    def closure():
        z = x @ w + b
        loss = (torch.nn.functional.softplus(z) - y * z).sum() / n + 0.5 * l2 * (w * w).sum()
        g = (torch.sigmoid(z) - y) / n
        w.grad = xt @ g + l2 * w
        b.grad = g.sum(0)
        return loss

    opt.step(closure)
    return w.detach().float().numpy(), b.detach().float().numpy()


def best_threshold(probs: np.ndarray, truth: np.ndarray) -> float:
    """The cut (midway between two observed probabilities) that maximises F1 on these stories."""
    if not truth.any():
        return 1.0  # a tag never seen: never detect it
    order = np.argsort(-probs, kind="stable")
    p, t = probs[order], truth[order].astype(bool)
    tp = np.cumsum(t)
    k = np.arange(1, len(p) + 1)  # predict the top k
    f1 = 2 * tp / (k + t.sum())
    last_of_tie = np.r_[p[1:] != p[:-1], True]  # a cut can only fall between distinct probabilities
    f1 = np.where(last_of_tie, f1, -1)
    i = int(np.argmax(f1))
    return float((p[i] + p[i + 1]) / 2) if i + 1 < len(p) else float(p[i] / 2)


def fold_of(text: str, folds: int) -> int:
    """Deterministic fold of a story: a hash of its text, independent of the order stories come in."""
    return zlib.crc32(text.encode("utf-8")) % folds


@dataclass
class TagDetector:
    vocab: list[str]
    weights: np.ndarray  # float32 [len(vocab) + len(DENSE), len(TAGS)]
    bias: np.ndarray  # float32 [len(TAGS)]
    thresholds: np.ndarray  # float64 [len(TAGS)]: a tag is detected when its probability is >= its threshold
    settings: FeatureSettings = field(default_factory=FeatureSettings)
    l2: float = 1e-5
    trained_on: dict = field(default_factory=dict)  # what the training run saw and reported

    def __post_init__(self):
        self._index = {g: i for i, g in enumerate(self.vocab)}

    # ------------------------------------------------------------------------------------------- training

    @classmethod
    def train(cls, stories, settings: FeatureSettings | None = None, l2: float = 1e-5, folds: int = 5,
              max_iter: int = 400, progress: bool = True) -> "TagDetector":
        """Learn from tagged stories (Story objects or (text, tags) pairs).

        The vocabulary comes from all of them (it uses no labels). Thresholds: each tag's F1-best cut on
        out-of-fold probabilities (`folds` hash folds of these stories); then the weights are refit on all of
        them. folds=1: no cross-fitting, thresholds 0.5.
        """
        settings = settings or FeatureSettings()
        texts, labels = _story_parts(stories)
        log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if progress else (lambda *a: None)
        counts = [ngram_counts(t, settings) for t in texts]
        vocab = build_vocab(counts, settings)
        n_features = len(vocab) + (len(DENSE) if settings.dense else 0)
        rows = featurize(texts, {g: i for i, g in enumerate(vocab)}, settings, counts)
        thresholds, oof_report = np.full(len(TAGS), 0.5), None
        if folds > 1:
            fold = np.array([fold_of(t, folds) for t in texts])
            oof = np.zeros(labels.shape)
            for k in range(folds):
                fit, held = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
                if not len(fit) or not len(held):
                    continue
                log(f"detector: fold {k + 1}/{folds} ({len(fit):,} stories)")
                w, b = fit_logistic(take_rows(rows, fit), labels[fit], n_features, l2, max_iter)
                oof[held] = sparse_proba(take_rows(rows, held), w, b)
            thresholds = np.array([best_threshold(oof[:, j], labels[:, j]) for j in range(len(TAGS))])
            truth = [[t for j, t in enumerate(TAGS) if labels[i, j]] for i in range(len(texts))]
            pred = [[t for j, t in enumerate(TAGS) if oof[i, j] >= thresholds[j]] for i in range(len(texts))]
            oof_report = detection_report(truth, pred)
        log(f"detector: final fit on {len(texts):,} stories, {n_features:,} features")
        w, b = fit_logistic(rows, labels, n_features, l2, max_iter)
        trained_on = {"stories": len(texts), "folds": folds, "max_iter": max_iter, "out_of_fold_report": oof_report,
                      "tag_counts": {t: int(labels[:, j].sum()) for j, t in enumerate(TAGS)}}
        return cls(vocab, w, b, thresholds, settings, l2, trained_on)

    # ------------------------------------------------------------------------------------------- scoring

    def predict_proba(self, texts) -> np.ndarray:
        """[n, 6] probabilities, columns in TAGS order. A single string counts as one story."""
        if isinstance(texts, str):
            texts = [texts]
        return sparse_proba(featurize(list(texts), self._index, self.settings), self.weights, self.bias)

    def predict(self, texts) -> list[list[str]]:
        """The detected tags of each story."""
        return [[t for t, p, c in zip(TAGS, row, self.thresholds) if p >= c] for row in self.predict_proba(texts)]

    def detect(self, text: str) -> list[str]:
        """The tags detected in one story, in TAGS order."""
        return self.predict([text])[0]

    # ------------------------------------------------------------------------------------------- files

    def save(self, out: str | os.PathLike) -> Path:
        from safetensors.numpy import save_file

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        config = {
            "format_version": FORMAT_VERSION, "tags": list(TAGS), "thresholds": [float(c) for c in self.thresholds],
            "settings": asdict(self.settings), "dense_features": list(DENSE) if self.settings.dense else [],
            "l2": self.l2, "trained_on": self.trained_on,
        }
        (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        (out / VOCAB).write_text("".join(g + "\n" for g in self.vocab), encoding="utf-8")
        save_file({"weights": np.ascontiguousarray(self.weights), "bias": self.bias}, str(out / WEIGHTS))
        return out

    @classmethod
    def load(cls, folder: str | os.PathLike | None = None) -> "TagDetector":
        """A saved detector; no argument: the bundled one (checkpoints/tag_detector)."""
        from safetensors.numpy import load_file

        folder = Path(folder or DEFAULT_DETECTOR)
        try:
            config = json.loads((folder / CONFIG).read_text())
            vocab = (folder / VOCAB).read_text(encoding="utf-8").split("\n")[:-1]
            arrays = load_file(str(folder / WEIGHTS))
        except (OSError, json.JSONDecodeError) as e:
            raise DetectorError(f"no readable tag detector in {folder}: {e}") from None
        if config.get("format_version") != FORMAT_VERSION or config.get("tags") != list(TAGS):
            raise DetectorError(f"{folder / CONFIG} is for another detector format or tag set")
        det = cls(vocab, arrays["weights"], arrays["bias"], np.array(config["thresholds"]),
                  FeatureSettings(**config["settings"]), config["l2"], config.get("trained_on", {}))
        if det.weights.shape != (len(vocab) + len(config["dense_features"]), len(TAGS)):
            raise DetectorError(f"{folder}: weights {det.weights.shape} do not match vocab.txt ({len(vocab)} n-grams)")
        return det


@lru_cache(maxsize=1)
def bundled_detector() -> TagDetector:
    return TagDetector.load(DEFAULT_DETECTOR)


def detect_tags(text: str) -> list[str]:
    """The tags the bundled detector finds in a story."""
    return bundled_detector().detect(text)


# ----------------------------------------------------------------------------------------------- report


def detection_report(truth: list[list[str]], predicted: list[list[str]]) -> dict:
    """Per tag precision, recall, f1 and support (stories that have it), plus macro_f1 over the six tags.

    An undefined ratio (nothing predicted, or no support) counts as 0.
    """
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} true tag lists but {len(predicted)} predicted")
    report = {}
    for tag in TAGS:
        tp = sum(tag in t and tag in p for t, p in zip(truth, predicted))
        fp = sum(tag not in t and tag in p for t, p in zip(truth, predicted))
        fn = sum(tag in t and tag not in p for t, p in zip(truth, predicted))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        report[tag] = {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
                       "support": tp + fn}
    report["macro_f1"] = round(sum(report[t]["f1"] for t in TAGS) / len(TAGS), 4)
    return report


def report_on(detector: TagDetector, stories) -> dict:
    texts, _ = _story_parts(stories)
    truth = [normalize_tags(s.tags if hasattr(s, "tags") else s[1]) for s in stories]
    return detection_report(truth, detector.predict(texts))


def main(argv=None) -> int:
    import argparse

    from .data import DataError, load_stories

    p = argparse.ArgumentParser(description="Train the tag detector on tagged stories; print its valid report.")
    p.add_argument("--data", default="../shared/data", help="Hub dataset id or local file/folder")
    p.add_argument("--out", default=str(DEFAULT_DETECTOR), help="folder to save the detector in")
    p.add_argument("--max-stories", type=int, default=None)
    p.add_argument("--max-features", type=int, default=FeatureSettings.max_features)
    p.add_argument("--min-df", type=int, default=FeatureSettings.min_df)
    p.add_argument("--l2", type=float, default=1e-5, help="L2 penalty on the weights (per story, mean loss)")
    p.add_argument("--folds", type=int, default=5, help="folds of TRAIN for the out-of-fold thresholds")
    p.add_argument("--max-iter", type=int, default=400, help="L-BFGS iterations per fit")
    p.add_argument("--no-bigrams", action="store_true")
    p.add_argument("--no-dense", action="store_true", help="drop the quoted-speech cues")
    p.add_argument("--no-regions", action="store_true", help="drop the unigrams of the first and last thirds")
    args = p.parse_args(argv)
    settings = FeatureSettings(bigrams=not args.no_bigrams, max_features=args.max_features, min_df=args.min_df,
                               regions=not args.no_regions, dense=not args.no_dense)
    try:
        train, train_report = load_stories(args.data, "train", args.max_stories)
        print(train_report, file=sys.stderr)
        detector = TagDetector.train(train, settings, l2=args.l2, folds=args.folds, max_iter=args.max_iter)
        detector.trained_on["source"] = str(args.data)
        valid, valid_report = load_stories(args.data, "valid")
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(valid_report, file=sys.stderr)
    detector.trained_on["valid_report"] = report_on(detector, valid)
    detector.save(args.out)
    print(f"saved to {args.out}; out-of-fold (train) macro_f1 "
          f"{(detector.trained_on['out_of_fold_report'] or {}).get('macro_f1')}", file=sys.stderr)
    print(json.dumps(detector.trained_on["valid_report"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
