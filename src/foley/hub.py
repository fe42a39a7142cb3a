"""Name → model folder: local paths as they are, Hugging Face Hub ids through ``huggingface_hub``.

A Hub repo holds exactly the files of a local model folder (:mod:`foley.model_folder`), so
``FoleyPipeline.from_pretrained("owner/name")`` downloads (or finds in the Hugging Face cache)
a snapshot and reads it like any folder. Offline (``HF_HUB_OFFLINE=1``) or without a
network, a repo that is not cached fails at once with the list of files to fetch and where
to put them.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from foley.model_folder import ENCODERS, PIPELINE_FILE, ModelFolderError

__all__ = ["resolve_model", "looks_like_hub_id", "HubUnavailableError"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")

# Files every model folder has; pipeline.json lists the rest (which encoders, stored or referenced).
_CORE_FILES = (PIPELINE_FILE, "codec.json", "codec.safetensors", "generator.json", "generator.safetensors",
               "stereo.json and stereo.safetensors (models with a stage 3)")


class HubUnavailableError(ModelFolderError):
    """A Hub model that is neither cached nor downloadable now."""


def looks_like_hub_id(name: str) -> bool:
    """``owner/name`` with Hub-legal characters (and not ``.``/``..`` parts)."""
    return bool(_HUB_ID.match(name)) and not any(part in (".", "..") for part in name.split("/"))


def resolve_model(model: str | os.PathLike[str], revision: str | None = None) -> Path:
    """The local folder (or old bundle file) for ``model``: an existing path, else a Hub snapshot.

    Args:
        model: a model folder, an old bundle file, a Hub repo id ``owner/name``, or
            ``mmaudio:<variant>`` (MMAudio's released weights, converted into the cache on first use).
        revision: Hub branch, tag or commit.

    Raises:
        ModelFolderError: ``model`` is neither an existing path nor a Hub id.
        HubUnavailableError: the Hub repo is not cached and cannot be fetched (offline, no
            network, unknown or private repo); the message lists the files and where to put them.
    """
    path = Path(model)
    if path.exists():
        return path
    name = os.fspath(model)
    if name.startswith("mmaudio:"):  # MMAudio's released networks, downloaded and converted on first use
        from foley.convert.mmaudio import resolve_mmaudio

        return resolve_mmaudio(name)
    if not looks_like_hub_id(name):
        raise ModelFolderError(f"{name}: no such model folder (nor a Hugging Face Hub id of the form owner/name)")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, revision=revision, etag_timeout=5))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        offline = " (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else ""
        files = ", ".join(_CORE_FILES) + ", and encoders/{" + ",".join(ENCODERS) + "}.json (+ .safetensors) as pipeline.json lists"
        raise HubUnavailableError(
            f"{name!r} is not a local folder, and Hugging Face Hub repo {name!r} is not in the local cache "
            f"({constants.HF_HUB_CACHE}) and cannot be fetched now{offline}: {type(error).__name__}: {error}\n"
            f"A model folder needs: {files}.\n"
            f"Either fetch them where there is a network (`hf download {name} --local-dir MODEL_DIR`), copy "
            "MODEL_DIR here and pass its path instead of the repo id; or fill the cache with that download "
            "(same HF_HOME) and load the id again."
        ) from error
