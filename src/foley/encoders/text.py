"""T5 text encoder (through transformers) for the optional caption condition."""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from foley.configurable import Configurable
from foley.encoders.frames import require

__all__ = ["TextEncoder"]

logger = logging.getLogger(__name__)


class TextEncoder(Configurable, nn.Module):
    """Frozen T5 encoder: captions → token features and a padding mask.

    An empty (or whitespace-only) caption means "no text": its row of the mask is all
    False and its features are zero, so the generator substitutes its learnable text
    placeholder. It is not the encoding of ``""``.

    Args:
        model_name: Hugging Face name or local folder of a T5 model (encoder weights and
            tokenizer), e.g. ``"google/flan-t5-base"``. Offline, it must already be in the
            Hugging Face cache or be a local folder.
        model_config: ``transformers.T5Config`` arguments for a randomly initialised encoder
            (tests, tiny configs). With it the tokenizer is ByT5's byte tokenizer, which needs
            no files, unless ``tokenizer_name`` is given.
        tokenizer_name: Tokenizer source when it differs from ``model_name``.
        max_length: Maximum tokens per caption (longer captions are truncated).
    """

    def __init__(
        self,
        model_name: str = "google/flan-t5-base",
        model_config: dict[str, Any] | None = None,
        tokenizer_name: str | None = None,
        max_length: int = 77,
    ) -> None:
        super().__init__()
        require("transformers>=5", "TextEncoder")
        from transformers import AutoTokenizer, ByT5Tokenizer, T5Config, T5EncoderModel

        self.max_length = max_length
        try:
            if model_config is not None:
                self.model = T5EncoderModel(T5Config(**model_config))
                self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_name) if tokenizer_name else ByT5Tokenizer()
            else:
                self.model = T5EncoderModel.from_pretrained(model_name)
                self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_name or model_name)
        except OSError as error:
            raise RuntimeError(
                f"TextEncoder could not load T5 model/tokenizer {tokenizer_name or model_name!r}: {error}. "
                "Offline, download it once into the Hugging Face cache or pass a local folder as model_name."
            ) from error
        self.dim = int(self.model.config.d_model)
        self.weights_from_file = model_config is None
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> TextEncoder:
        # Frozen: stays in eval mode whatever the surrounding LightningModule does.
        return super().train(False)

    @torch.no_grad()
    def forward(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        """Encode captions.

        Returns:
            ``(features (B, max_length, dim), mask (B, max_length))``; mask rows of empty
            captions are all False.
        """
        if isinstance(captions, str):
            raise TypeError("TextEncoder expects a list of captions, got a single string")
        device = next(self.parameters()).device
        has_text = torch.tensor([bool(c and c.strip()) for c in captions], dtype=torch.bool, device=device)
        tokens = self.tokenizer(
            [c if c else " " for c in captions],
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )
        input_ids = tokens["input_ids"].to(device)
        attention = tokens["attention_mask"].to(device).bool()
        features = self.model(input_ids=input_ids, attention_mask=attention.long()).last_hidden_state
        mask = attention & has_text[:, None]
        return features * mask[..., None].to(features.dtype), mask
