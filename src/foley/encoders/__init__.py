"""Frozen condition encoders: open_clip images (visual semantics), Synchformer (sync), T5 or CLIP (text).

Each takes uint8 frames ``(B, T, 3, H, W)`` (or a list of captions) and normalises on its
own device; each returns ``(features, mask)``. The heavy optional dependencies
(open_clip, transformers) are imported only when an encoder is built.
"""
from foley.encoders.clip import ClipEncoder
from foley.encoders.synchformer import SynchformerEncoder
from foley.encoders.text import ClipTextEncoder, TextEncoder

__all__ = ["ClipEncoder", "ClipTextEncoder", "SynchformerEncoder", "TextEncoder"]
