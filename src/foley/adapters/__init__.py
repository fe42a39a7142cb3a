"""Adapters (LoRA through peft) for fine-tuning foley models: :mod:`foley.adapters.lora` adds them to
networks, :mod:`foley.adapters.folder` stores them next to a model folder and applies, switches and
merges them in a :class:`~foley.pipeline.FoleyPipeline`."""
from foley.adapters.lora import (
    CODEC_DECODER_TARGETS,
    GENERATOR_TARGETS,
    STEREO_TARGETS,
    LoraSettings,
    add_lora,
    adapter_names,
    load_lora_state,
    lora_state_dict,
    merge_lora,
    set_active_adapter,
)

__all__ = [
    "CODEC_DECODER_TARGETS",
    "GENERATOR_TARGETS",
    "STEREO_TARGETS",
    "LoraSettings",
    "add_lora",
    "adapter_names",
    "load_lora_state",
    "lora_state_dict",
    "merge_lora",
    "set_active_adapter",
]
