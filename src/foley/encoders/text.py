"""Text encoders for the optional caption condition: T5 (transformers) and CLIP per-token states (open_clip)."""
from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from torch import Tensor, nn

from foley.configurable import Configurable
from foley.encoders.frames import require

__all__ = ["TextEncoder", "ClipTextEncoder"]

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


class ClipTextEncoder(Configurable, nn.Module):
    """Frozen open_clip text tower giving per-token features (MMAudio's text condition).

    Tokens go through the token embedding, the positional embedding, the causal transformer
    and ``ln_final``; no pooling, no projection. Each token's state is then L2-normalised.
    This is the ``encode_text`` MMAudio patches into its open_clip model. The state dict holds
    the open_clip model's ``token_embedding``, ``positional_embedding``, ``transformer`` and
    ``ln_final`` entries under their open_clip names.

    MMAudio's text stream is ``ClipTextEncoder("hf-hub:apple/DFN5B-CLIP-ViT-H-14-384")`` (the
    defaults): 77 tokens of 1024 features.

    Args:
        model_name: open_clip model name (see :class:`~foley.encoders.clip.ClipEncoder`);
            ``"hf-hub:org/repo"`` or ``"local-dir:DIR"`` bring config and weights.
        pretrained: open_clip pretrained tag for a built-in ``model_name``.
        checkpoint_path: Local open_clip checkpoint for a built-in ``model_name``.
        model_config: Custom open_clip config built with random weights (tests, tiny configs).
        tokenizer_name: open_clip tokenizer (``open_clip.get_tokenizer``); MMAudio's is
            ``"ViT-H-14-378-quickgelu"`` (CLIP's byte-pair tokenizer, lower-cased, 77 tokens,
            shipped with open_clip: no download).
        normalize: L2-normalise each token's features.
        empty_caption: ``"encode"``: an empty caption is tokenised and encoded like any other
            (MMAudio encodes its default prompt and negative prompt ``""`` this way);
            ``"absent"``: its mask row is all False and its features zero, so a generator
            substitutes its "no text" features.
        mask_padding: ``False``: every token position is real, padding included (MMAudio's
            network attends to all 77); ``True``: the mask ends after the end-of-text token.
    """

    def __init__(
        self,
        model_name: str = "hf-hub:apple/DFN5B-CLIP-ViT-H-14-384",
        pretrained: str | None = None,
        checkpoint_path: str | None = None,
        model_config: dict[str, Any] | None = None,
        tokenizer_name: str = "ViT-H-14-378-quickgelu",
        normalize: bool = True,
        empty_caption: Literal["encode", "absent"] = "encode",
        mask_padding: bool = False,
    ) -> None:
        super().__init__()
        if empty_caption not in ("encode", "absent"):
            raise ValueError(f"ClipTextEncoder: empty_caption must be 'encode' or 'absent', got {empty_caption!r}")
        from foley.encoders.clip import _SCHEMAS, create_open_clip

        model, _ = create_open_clip("ClipTextEncoder", model_name, pretrained, checkpoint_path, model_config)
        import open_clip

        if not hasattr(model, "token_embedding"):
            raise ValueError(
                f"ClipTextEncoder: open_clip model {model_name!r} has no built-in text transformer "
                f"({type(model).__name__}); per-token states need a CLIP model with token_embedding/ln_final"
            )
        self.token_embedding = model.token_embedding
        self.positional_embedding = model.positional_embedding
        self.transformer = model.transformer
        self.ln_final = model.ln_final
        self.register_buffer("attn_mask", model.attn_mask, persistent=False)
        self.context_length = int(model.context_length)
        self.dim = int(model.transformer.width)
        del model
        self.tokenizer = open_clip.get_tokenizer(tokenizer_name, context_length=self.context_length)
        self.normalize = normalize
        self.empty_caption = empty_caption
        self.mask_padding = mask_padding
        self.max_length = self.context_length
        self.weights_from_file = model_config is None and (
            model_name.startswith(_SCHEMAS) or checkpoint_path is not None or pretrained is not None
        )
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> ClipTextEncoder:
        # Frozen: stays in eval mode whatever the surrounding LightningModule does.
        return super().train(False)

    def tokenize(self, captions: list[str]) -> Tensor:
        """Token ids ``(B, context_length)`` of the captions (start, text, end, zero padding)."""
        return self.tokenizer(list(captions))

    def encode_tokens(self, tokens: Tensor) -> Tensor:
        """Per-token features ``(B, L, dim)`` of token ids ``(B, L)`` (MMAudio's patched ``encode_text``)."""
        cast_dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(tokens).to(cast_dtype)
        x = x + self.positional_embedding.to(cast_dtype)
        x = self.transformer(x, attn_mask=self.attn_mask)
        x = self.ln_final(x)
        return torch.nn.functional.normalize(x, dim=-1) if self.normalize else x

    @torch.no_grad()
    def forward(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        """Encode captions.

        Returns:
            ``(features (B, context_length, dim), mask (B, context_length))``; see
            ``empty_caption`` and ``mask_padding`` for the mask.
        """
        if isinstance(captions, str):
            raise TypeError("ClipTextEncoder expects a list of captions, got a single string")
        device = self.positional_embedding.device
        tokens = self.tokenize(captions).to(device)
        features = self.encode_tokens(tokens)
        if self.mask_padding:
            # Real tokens run up to the end-of-text token, the largest id in each row.
            end = tokens.argmax(dim=-1)
            mask = torch.arange(tokens.shape[1], device=device)[None] <= end[:, None]
        else:
            mask = torch.ones(tokens.shape, dtype=torch.bool, device=device)
        if self.empty_caption == "absent":
            has_text = torch.tensor([bool(c and c.strip()) for c in captions], dtype=torch.bool, device=device)
            mask = mask & has_text[:, None]
            features = features * has_text[:, None, None].to(features.dtype)
        return features, mask
