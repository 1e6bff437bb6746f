"""harness: train, run and compare small text models on identical data.

Plugin authors import the marker and the contract types from here; nothing in this
module imports torch or transformers.
"""

import pluggy

from harness.approach import Approach, RunContext, Settings, setting
from harness.types import ApproachInfo, Artifact, Example, Parity, Prediction, Prompt, Serving, Task

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("harness")

__all__ = [
    "Approach",
    "ApproachInfo",
    "Artifact",
    "Example",
    "Parity",
    "Prediction",
    "Prompt",
    "RunContext",
    "Serving",
    "Settings",
    "Task",
    "hookimpl",
    "setting",
    "__version__",
]
