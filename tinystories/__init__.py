"""Tag-conditioned children's stories: the seed's model and a fast causal decoder, two tag approaches.

    from tinystories import generate_text, load_model
    generate_text(load_model(), tags=["MoralValue", "Twist"])
"""
import warnings

# `python -m tinystories.generate` imports this package (and so the submodule) before running the submodule as
# __main__; that is intended here, so runpy's "found in sys.modules" warning is noise.
warnings.filterwarnings("ignore", message=r"'tinystories\..*' found in sys.modules", category=RuntimeWarning)

from .data import DEFAULT_DATASET, DataError, load_stories, windows  # noqa: E402
from .evaluate import nats_per_story  # noqa: E402
from .generate import MAX_TOKENS, GenerationError, check_settings, generate, generate_text, stream_story  # noqa: E402
from .hub import CheckpointError, load_model, push_folder, save_checkpoint  # noqa: E402
from .model import ConfigError, TinyStoriesConfig, TinyStoriesModel  # noqa: E402
from .tokenizer import TAGS, UnknownTagError, build_tokenizer, load_tokenizer, normalize_tags  # noqa: E402

__all__ = [
    "TAGS", "MAX_TOKENS", "DEFAULT_DATASET",
    "TinyStoriesConfig", "TinyStoriesModel", "load_model", "save_checkpoint", "push_folder",
    "generate", "generate_text", "stream_story", "check_settings", "nats_per_story",
    "build_tokenizer", "load_tokenizer", "normalize_tags", "load_stories", "windows",
    "UnknownTagError", "GenerationError", "CheckpointError", "ConfigError", "DataError",
]
