"""Tag-conditioned children's stories: the seed's model and a fast causal decoder, two tag approaches.

    from tinystories import generate_text, load_model
    generate_text(load_model(), tags=["MoralValue", "Twist"])

Names are imported lazily, so `python -m tinystories.generate` (and friends) run without double imports.
"""
from importlib import import_module

_EXPORTS = {
    "tokenizer": ["TAGS", "UnknownTagError", "build_tokenizer", "load_tokenizer", "normalize_tags"],
    "data": ["DEFAULT_DATASET", "DataError", "load_stories", "windows"],
    "model": ["ConfigError", "TinyStoriesConfig", "TinyStoriesModel"],
    "hub": ["CheckpointError", "load_model", "push_folder", "save_checkpoint"],
    "generate": ["MAX_TOKENS", "GenerationError", "check_settings", "generate", "generate_text", "stream_story"],
    "evaluate": ["nats_per_story"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tinystories' has no attribute {name!r}")


def __dir__():
    return __all__
