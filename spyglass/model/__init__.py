"""Find, prepare and load models; cut text into tokens."""

from spyglass.model.loader import Model, ModelLoadError, ModelSource, load_model, versions, wrap
from spyglass.model.tokens import ContextLengthError, Tokens, check_text, label_for

__all__ = [
    "ContextLengthError",
    "Model",
    "ModelLoadError",
    "ModelSource",
    "Tokens",
    "check_text",
    "label_for",
    "load_model",
    "versions",
    "wrap",
]
