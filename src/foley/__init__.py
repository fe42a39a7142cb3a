"""foley: a Lightning framework for Kling-Foley-style video-to-audio generation."""

__version__ = "0.1.0"
