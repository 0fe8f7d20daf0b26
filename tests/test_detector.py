"""The tag detector and the tag-adherence measurement: what a user of the report numbers relies on.

Offline and fast: the detector learns from a small story fixture written here, the model is a tiny random one.
"""
import json
import random

import numpy as np
import pytest
import torch

from tinystories import TAGS, TinyStoriesConfig, TinyStoriesModel, build_tokenizer
from tinystories.adherence import adherence_prompts, lift_summary, tag_adherence
from tinystories.data import Story
from tinystories.detector import (DEFAULT_DETECTOR, FeatureSettings, TagDetector, best_threshold, bundled_detector,
                                  detect_tags, detection_report)

OPENINGS = ["Tom had a red ball.", "Lily lived near a big park.", "A small dog found a stick.",
            "Sam and Mia went to the farm.", "Ben loved his blue boat.", "The cat sat in the warm sun."]
MIDDLES = ["They played all day.", "The sky was blue and the grass was green.", "They ran to the tree and back.",
           "It was a happy morning.", "They ate apples under the tree."]
CUES = {
    "BadEnding": "In the end the boat sank and never came back, and everyone stayed sad.",
    "Conflict": "They argued and fought over it, and neither would share.",
    "Dialogue": '"Look at this!" said the child. "Wow," said the friend.',
    "Foreshadowing": "Far away, a dark cloud was growing, a hint of what would come later.",
    "MoralValue": "They learned that kindness and sharing are important lessons.",
    "Twist": "But suddenly, to everyone's surprise, the stick turned out to be a magic wand!",
}


def fixture_stories(n: int, seed: int) -> list[Story]:
    rng = random.Random(seed)
    stories = []
    for _ in range(n):
        tags = [t for t in TAGS if rng.random() < 0.4]
        parts = [rng.choice(OPENINGS), rng.choice(MIDDLES)] + [CUES[t] for t in tags] + [rng.choice(MIDDLES)]
        stories.append(Story(" ".join(parts), tags))
    return stories


@pytest.fixture(scope="module")
def detector():
    return TagDetector.train(fixture_stories(120, seed=1), FeatureSettings(min_df=1, max_features=2000),
                             folds=3, progress=False)


def test_detector_finds_obvious_cues_in_unseen_stories(detector):
    held_out = fixture_stories(40, seed=2)
    probs = detector.predict_proba([s.text for s in held_out])
    assert probs.shape == (40, len(TAGS)) and ((probs >= 0) & (probs <= 1)).all()
    report = detection_report([s.tags for s in held_out], detector.predict([s.text for s in held_out]))
    assert report["macro_f1"] >= 0.9, report
    assert detector.detect(held_out[0].text) == [t for t in TAGS if t in detector.detect(held_out[0].text)]


def test_thresholds_come_from_out_of_fold_training_probabilities(detector):
    assert detector.trained_on["folds"] == 3
    assert detector.trained_on["out_of_fold_report"]["macro_f1"] >= 0.9
    assert ((detector.thresholds > 0) & (detector.thresholds < 1)).all()


def test_best_threshold_maximises_f1():
    probs = np.array([0.9, 0.8, 0.7, 0.3, 0.2])
    truth = np.array([1, 1, 0, 1, 0])
    # cuts: top1 f1=2/4, top2 f1=4/5, top3 3/... = 2*2/(3+3)=.67, top4 2*3/(4+3)=.857, top5 .75 -> top 4
    assert best_threshold(probs, truth) == pytest.approx(0.25)
    assert best_threshold(probs, np.zeros(5)) == 1.0  # a tag never seen is never detected


def test_save_and_load_give_identical_probabilities(detector, tmp_path):
    texts = [s.text for s in fixture_stories(10, seed=3)] + ["", "Unknown words only: zebra quantum."]
    detector.save(tmp_path / "det")
    loaded = TagDetector.load(tmp_path / "det")
    assert np.array_equal(loaded.predict_proba(texts), detector.predict_proba(texts))
    assert np.array_equal(loaded.thresholds, detector.thresholds)
    assert loaded.predict(texts) == detector.predict(texts)


def test_report_precision_recall_f1_by_hand():
    truth = [["Dialogue"], ["Dialogue", "Twist"], [], ["Twist"]]
    pred = [["Dialogue"], ["Twist"], ["Dialogue"], []]
    r = detection_report(truth, pred)
    # Dialogue: tp 1 (story 0), fp 1 (story 2), fn 1 (story 1) -> p = r = f1 = 0.5
    assert r["Dialogue"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    # Twist: tp 1 (story 1), fp 0, fn 1 (story 3) -> p 1, r 0.5, f1 2/3
    assert r["Twist"] == {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2}
    # tags never present nor predicted score 0
    assert r["Conflict"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert r["macro_f1"] == pytest.approx(round((0.5 + 0.6667) / 6, 4))


def test_lift_is_asked_rate_minus_not_asked_rate():
    asked = {t: [True, True, False, False] for t in TAGS} | {"Twist": [True, True, True, True]}
    not_asked = {t: [False, False, False, True] for t in TAGS}
    s = lift_summary(asked, not_asked)
    assert s["BadEnding"]["asked_rate"] == 0.5 and s["BadEnding"]["not_asked_rate"] == 0.25
    assert s["BadEnding"]["lift"] == 0.25 and s["Twist"]["lift"] == 0.75
    assert s["mean_lift"] == pytest.approx((5 * 0.25 + 0.75) / 6, abs=1e-4)


def test_prompts_pair_each_tag_with_the_same_other_tags_and_seed():
    prompts = adherence_prompts(5, seed=7)
    assert len(prompts) == 5 * len(TAGS)
    for p in prompts:
        assert p["tag"] in p["asked"] and p["tag"] not in p["not_asked"]
        assert [t for t in p["asked"] if t != p["tag"]] == p["not_asked"]
    assert adherence_prompts(5, seed=7) == prompts
    assert adherence_prompts(5, seed=8) != prompts
    assert adherence_prompts(2, seed=7) == [p for i, p in enumerate(prompts) if i % 5 < 2]  # a prefix per tag


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    cfg = TinyStoriesConfig(arch="decoder", d_model=32, n_heads=2, n_layers=1, d_ff=64, context=16, cutoffs=(100, 1000))
    model = TinyStoriesModel(cfg).eval()
    model.tokenizer = build_tokenizer()
    return model


def test_adherence_is_deterministic_with_a_seed(tiny_model, detector):
    run = lambda seed: tag_adherence(tiny_model, detector, samples_per_tag=2, seed=seed, max_tokens=3, progress=False)
    first = run(5)
    assert json.dumps(first) == json.dumps(run(5))
    assert set(TAGS) | {"mean_lift", "settings"} == set(first)
    assert set(first["Twist"]) >= {"asked_rate", "not_asked_rate", "lift"}
    assert first["Twist"]["lift"] == pytest.approx(first["Twist"]["asked_rate"] - first["Twist"]["not_asked_rate"])


def test_bundled_detector_loads_and_reads_a_story():
    det = TagDetector.load()
    assert (DEFAULT_DETECTOR / "config.json").is_file() and len(det.vocab) > 1000
    assert bundled_detector() is bundled_detector()
    story = ('Mia found a lost kitten in the rain. "Are you cold?" she asked. "Meow," said the kitten. '
             "Mia took it home and gave it warm milk.")
    assert "Dialogue" in detect_tags(story)
    assert "Dialogue" not in detect_tags(story.replace('"', ""))


def test_evaluate_detector_report_prints_json_last(tmp_path, capsys, detector):
    from tinystories.evaluate import main

    data = tmp_path / "valid.jsonl"
    stories = fixture_stories(20, seed=4)
    data.write_text("".join(json.dumps({"story": s.text, "features": s.tags}) + "\n" for s in stories))
    detector.save(tmp_path / "det")
    args = ["--detector-report", "--data", str(tmp_path), "--split", "valid", "--detector", str(tmp_path / "det")]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(report) == set(TAGS) | {"macro_f1"} and report["macro_f1"] >= 0.9
