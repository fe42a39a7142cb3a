"""Evaluation metrics: the exact synthetic-world evaluator and the published benchmark metrics.

Each metric is one torchmetrics ``Metric``: ``SyntheticWorldMetric``, ``ImageBindScore`` and
``DeSync`` score generated batches directly (``update(generated, batch, sample_rate)``) and
load their networks from local weight files only when constructed. The audio embedders
(``panns``, ``vggish``, ``passt``) and the networks (``imagebind``, ``synchformer_av``) live in
their own modules and are imported from there, so importing this package never pulls in
hear21passt or builds a network.
"""

from foley.metrics.desync import DeSync
from foley.metrics.frechet import FrechetDistance, frechet_distance
from foley.metrics.ib_score import ImageBindScore
from foley.metrics.inception import InceptionScore, inception_score
from foley.metrics.kl import PairedKLDivergence, paired_kl_divergence
from foley.metrics.synthetic import OnsetDetector, SyntheticWorldMetric, match_onsets

__all__ = [
    "DeSync",
    "FrechetDistance",
    "frechet_distance",
    "ImageBindScore",
    "InceptionScore",
    "inception_score",
    "PairedKLDivergence",
    "paired_kl_divergence",
    "OnsetDetector",
    "SyntheticWorldMetric",
    "match_onsets",
]
