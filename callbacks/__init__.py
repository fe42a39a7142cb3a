"""Lightning callbacks of foley (installed as ``foley.callbacks``)."""

from foley.callbacks.evaluation import EvaluationReportCallback
from foley.callbacks.generation_metrics import GenerationMetricsCallback

__all__ = ["EvaluationReportCallback", "GenerationMetricsCallback"]
