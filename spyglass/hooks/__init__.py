"""Run the model with hooks; build, save and load traces."""

from spyglass.hooks.capture import MemoryLimitError, capture, estimate_bytes
from spyglass.hooks.spec import ALL_KINDS, KINDS, CaptureSpec
from spyglass.hooks.trace import Trace, TraceFormatError, TraceMismatchError

__all__ = [
    "ALL_KINDS",
    "KINDS",
    "CaptureSpec",
    "MemoryLimitError",
    "Trace",
    "TraceFormatError",
    "TraceMismatchError",
    "capture",
    "estimate_bytes",
]
