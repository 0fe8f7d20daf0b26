"""The tokenizer: GPT-2's BPE unchanged, then the seed's special tokens at fixed ids, and the six tags."""
import pytest

from tinystories import TAGS, UnknownTagError, load_tokenizer, normalize_tags
from tinystories.tokenizer import BOS_ID, EOS_ID, PAD_ID, TAG_IDS, VOCAB_SIZE, tag_ids


def test_vocabulary_is_gpt2_plus_nine_special_tokens(tokenizer):
    assert len(tokenizer) == VOCAB_SIZE == 50_266


@pytest.mark.parametrize("text, gpt2_ids", [
    ("Once upon a time", [7454, 2402, 257, 640]),
    (" Once upon a time", [4874, 2402, 257, 640]),
    ("Hello world", [15496, 995]),
])
def test_story_text_gets_the_real_gpt2_ids(tokenizer, text, gpt2_ids):
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == gpt2_ids
    assert tokenizer.decode(gpt2_ids) == text


def test_special_tokens_have_the_seeds_ids(tokenizer):
    names = ["[PAD]", "[BOS]", "[EOS]"] + [f"[TAG_{i}]" for i in range(1, 7)]
    assert tokenizer.convert_tokens_to_ids(names) == list(range(50257, 50266))
    assert (PAD_ID, BOS_ID, EOS_ID) == (50257, 50258, 50259)
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (50257, 50258, 50259)


def test_tags_map_to_tag_tokens_in_the_seeds_order(tokenizer):
    assert TAGS == ("BadEnding", "Conflict", "Dialogue", "Foreshadowing", "MoralValue", "Twist")
    for i, tag in enumerate(TAGS, start=1):
        assert TAG_IDS[tag] == tokenizer.convert_tokens_to_ids(f"[TAG_{i}]") == 50259 + i
    assert tag_ids(["Twist", "BadEnding"]) == [50260, 50265]  # always in the seed's order


@pytest.mark.parametrize("given, canonical", [
    (["moralvalue", "TWIST"], ["MoralValue", "Twist"]),
    ("dialogue, Twist", ["Dialogue", "Twist"]),  # a comma-separated string, as on the command line
    (["Twist", "twist", "Dialogue"], ["Dialogue", "Twist"]),  # duplicates removed, seed order
    ([], []),
    ("", []),
    (None, []),
])
def test_tags_are_case_insensitive(given, canonical):
    assert normalize_tags(given) == canonical


def test_unknown_tag_is_refused_with_the_list_of_tags():
    with pytest.raises(UnknownTagError) as e:
        normalize_tags(["Dialogue", "Happy"])
    message = str(e.value)
    assert "'Happy'" in message
    for tag in TAGS:
        assert tag in message
    assert isinstance(e.value, ValueError)


def test_tokenizer_saved_in_a_checkpoint_reloads_with_identical_ids(tokenizer, tmp_path):
    text = 'Lily said, "Hi!" [BOS] The café was 🙂 fun.\n\nThe end.'
    tokenizer.save_pretrained(str(tmp_path))
    reloaded = load_tokenizer(tmp_path)
    assert len(reloaded) == len(tokenizer)
    assert reloaded(text, add_special_tokens=False)["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = list(range(0, 50266, 997)) + [BOS_ID, EOS_ID]
    assert reloaded.decode(ids) == tokenizer.decode(ids)


def test_a_folder_without_a_tokenizer_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
