"""Tag-conditioned children's stories: the seed's model and a fast causal decoder, two tag approaches."""
from .data import DEFAULT_DATASET, DataError, load_stories, windows
from .generate import MAX_TOKENS, GenerationError, check_settings, generate, generate_text, stream_story
from .hub import CheckpointError, load_model, push_folder, save_checkpoint
from .model import ConfigError, TinyStoriesConfig, TinyStoriesModel
from .tokenizer import TAGS, UnknownTagError, build_tokenizer, load_tokenizer, normalize_tags

__all__ = [
    "TAGS", "MAX_TOKENS", "DEFAULT_DATASET",
    "TinyStoriesConfig", "TinyStoriesModel", "load_model", "save_checkpoint", "push_folder",
    "generate", "generate_text", "stream_story", "check_settings",
    "build_tokenizer", "load_tokenizer", "normalize_tags", "load_stories", "windows",
    "UnknownTagError", "GenerationError", "CheckpointError", "ConfigError", "DataError",
]
