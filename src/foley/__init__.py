"""foley: a Lightning framework for Kling-Foley-style video-to-audio generation.

Three lines from a model folder (``foley export``) or a Hugging Face Hub repo of one::

    from foley import FoleyPipeline
    pipe = FoleyPipeline.from_pretrained("demo_out/model")
    audio = pipe("clip.mp4", prompt="footsteps on gravel")   # (2, N) float32, 44.1 kHz
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["FoleyPipeline", "PipelineSettings", "GenerationDefaults", "__version__"]

if TYPE_CHECKING:
    from foley.pipeline import FoleyPipeline, GenerationDefaults, PipelineSettings


def __getattr__(name: str) -> Any:
    # Imported on first use, so `import foley` (and the `foley` command's start-up) stays light.
    if name in ("FoleyPipeline", "PipelineSettings", "GenerationDefaults"):
        from foley import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'foley' has no attribute {name!r}")
