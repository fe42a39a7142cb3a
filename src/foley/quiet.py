"""The one place where foley hides its dependencies' messages that are expected by design.

A ``foley`` command should show the user foley's progress, not deprecations inside the
libraries it is built on, nor advertisements. :func:`silence_expected_warnings` (called by
``foley.cli.main`` before anything else) hides exactly the messages listed below, each
matched by its own text or origin and each with the reason it is expected; every other
warning still shows. foley's own code uses the non-deprecated APIs (e.g. jsonargparse's
``instantiate``), so nothing of ours is hidden here.
"""

from __future__ import annotations

import logging
import warnings

__all__ = ["silence_expected_warnings", "EXPECTED_WARNINGS"]

# (message regex, category, module regex, why it is expected). The regexes match the start
# of the message / the module the warning is attributed to, as in ``warnings.filterwarnings``.
EXPECTED_WARNINGS: tuple[tuple[str, type[Warning], str, str], ...] = (
    ("", DeprecationWarning, r"lightning\.pytorch\.cli",
     "LightningCLI 2.6.6 itself calls jsonargparse APIs deprecated in 4.49 (instantiate_classes, "
     "add_instantiator, skip_none); only Lightning can move to their replacements"),
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, "",
     "Lightning 2.6.6 builds torch's LeafSpec, which torch 2.14 deprecates"),
    (r"'set_vital' is deprecated", UserWarning, "",
     "torchdata's StatefulDataLoader (used by Lightning) calls torch.set_vital"),
    (r"Found \d+ module\(s\) in eval mode at the start of training", Warning, "",
     "the frozen encoders (CLIP, Synchformer, T5) and the frozen codec stay in eval mode on purpose"),
    (r"predict returned None if it was on purpose", Warning, "",
     "foley extract writes its feature shards inside predict_step and returns nothing on purpose"),
)

# Lightning logs these on its rank-zero logger at INFO: advertisements of optional packages.
_LIGHTNING_TIP_PREFIX = "💡 Tip:"
_LIGHTNING_RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"


class _DropLightningTips(logging.Filter):
    """Drops Lightning's "💡 Tip: try installing litlogger / litmodels" lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_LIGHTNING_TIP_PREFIX)


def silence_expected_warnings() -> None:
    """Hide the dependency messages in :data:`EXPECTED_WARNINGS` and Lightning's tips (idempotent)."""
    for message, category, module, _why in EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    tips = logging.getLogger(_LIGHTNING_RANK_ZERO_LOGGER)
    if not any(isinstance(existing, _DropLightningTips) for existing in tips.filters):
        tips.addFilter(_DropLightningTips())
