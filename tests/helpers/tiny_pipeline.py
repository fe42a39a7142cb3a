"""A FoleyPipeline of real, tiny, randomly initialised stages (no stand-ins).

Stage 1 is the tiny codec of ``helpers.stage2_parts`` (44.1 kHz, 1024 samples per latent frame,
16 mel bands); stage 2 a tiny MM-DiT with tiny CLIP and Synchformer frame encoders at
32 px (so the conditioning really reads the frames); stage 3 an untrained Mono2Stereo
(zero head: it pans nothing, so left = right = the vocoded mono mel).
"""
from __future__ import annotations

import torch

from helpers.stage2_parts import tiny_codec

CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}
SYNC_ARGS = dict(crop_size=32, patch_size=16, dim=32, depth=1, num_heads=2)


def tiny_real_pipeline(window_seconds: float = 1.0, overlap_seconds: float = 0.25, continuity: str = "inpaint",
                       render: str = "vocoder", seed: int = 0):
    """Build the pipeline (deterministic for a given ``seed``)."""
    from foley.encoders import ClipEncoder, SynchformerEncoder
    from foley.flow import FlowMatching
    from foley.models.mmdit import MMDiT
    from foley.models.mono2stereo import Mono2Stereo
    from foley.pipeline import FoleyPipeline, PipelineSettings
    from foley.stages.flow_module import FlowModule
    from foley.stages.stereo_module import StereoModule

    torch.manual_seed(seed)
    codec = tiny_codec()
    network = MMDiT(latent_dim=4, hidden_dim=32, num_heads=2, joint_depth=1, audio_depth=1, clip_dim=16,
                    sync_dim=32, text_dim=32, clip_rate=8.0, sync_rate=25.0, max_text_tokens=16)
    with torch.no_grad():
        # The output layers start at zero; perturb every weight so conditions and context matter.
        for parameter in network.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    flow = FlowModule(network=network, flow=FlowMatching(), codec=codec, clip_encoder=ClipEncoder(model_config=CLIP_CONFIG),
                      sync_encoder=SynchformerEncoder(**SYNC_ARGS), ema_decay=0.0)
    stereo = StereoModule(Mono2Stereo(n_mels=16, hidden=8, layers=1, video_channels=4, video_size=16, video_columns=4),
                          codec=codec, render=render)
    settings = PipelineSettings(window_seconds=window_seconds, overlap_seconds=overlap_seconds, clip_size=32, sync_size=32,
                                window_batch=4, continuity=continuity)
    return FoleyPipeline(flow, stereo, settings)
