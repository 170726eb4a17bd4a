"""Finding a checkpoint: a local directory, or a hub id fetched with huggingface_hub (safetensors preferred).

Offline, a hub id that is not in the local cache fails with ``HubUnreachableError`` naming the fix (download the
repository elsewhere and pass its directory).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")  # "name" or "org/name"
_DOWNLOAD_HINT = (
    "pass a local directory containing config.json and *.safetensors instead, e.g. one downloaded with "
    "`huggingface-cli download {id} --local-dir DIR`"
)


class HubUnreachableError(OSError):
    """The hub could not be reached (offline, no network) and the model is not in the local cache."""


def resolve_model_path(path_or_id: str | Path, revision: str | None = None) -> Path:
    """A local checkpoint directory for ``path_or_id``: the directory itself, or a hub snapshot.

    ``"./x"``, ``"/x"``, ``"~/x"`` and anything that cannot be a hub id are treated as local paths and raise
    FileNotFoundError when missing. Hub downloads skip duplicate weight formats (``*.bin`` is only fetched
    when a repository has no ``*.safetensors``).
    """
    text = os.fspath(path_or_id)
    if not text.strip():  # Path("") is the working directory: an unset variable would load whatever is there
        raise ValueError("the model path is empty (an unset variable?); pass a checkpoint directory or a hub id")
    local = Path(text).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise NotADirectoryError(f"{text} is a file; pass the checkpoint directory that contains config.json")
    looks_local = isinstance(path_or_id, Path) or text.startswith((".", "/", "~", "\\")) or ":" in text
    if looks_local or not _HUB_ID.match(text):
        raise FileNotFoundError(f"checkpoint directory {text} does not exist")
    return _snapshot(text, revision)


def _snapshot(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    skip = ["*.bin", "*.pt", "*.pth", "*.h5", "*.msgpack", "*.onnx", "*.gguf", "*.ckpt", "*.tflite"]
    try:
        path = Path(snapshot_download(repo_id, revision=revision, ignore_patterns=skip))
        if not any(path.glob("*.safetensors")):
            path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=["*.bin", "*.json"]))
    except GatedRepoError as e:
        raise PermissionError(
            f"{repo_id} is gated on the hub: accept its terms on huggingface.co and log in "
            "(`huggingface-cli login`), or " + _DOWNLOAD_HINT.format(id=repo_id)
        ) from e
    except RepositoryNotFoundError as e:
        raise FileNotFoundError(
            f"{repo_id} is neither a local directory nor a model on the hub (or it is private: log in first)"
        ) from e
    except RevisionNotFoundError as e:
        raise FileNotFoundError(f"{repo_id} has no revision {revision!r} on the hub") from e
    except HFValidationError as e:
        raise FileNotFoundError(f"{repo_id} is neither a local directory nor a valid hub model id") from e
    except Exception as e:
        # offline mode (LocalEntryNotFoundError), DNS / connection failures, timeouts, 5xx answers
        if not isinstance(e, (LocalEntryNotFoundError, ConnectionError, TimeoutError)) and not _is_network_error(e):
            raise  # e.g. a full disk or an unwritable cache: not the hub's fault, keep the original error
        raise HubUnreachableError(
            f"{repo_id} is not a local directory (no {Path(repo_id).resolve()}), and the Hugging Face hub could not "
            f"be reached to fetch it ({type(e).__name__}); check the path, or " + _DOWNLOAD_HINT.format(id=repo_id)
        ) from e
    return path


def _is_network_error(e: BaseException) -> bool:
    """Errors of the HTTP stacks huggingface_hub uses (transport failures, 5xx answers)."""
    stacks = ("httpx", "httpx2", "httpcore", "requests", "urllib3", "socket", "ssl")
    return any(b.__module__.split(".")[0] in stacks for b in type(e).__mro__)


def lfs_pointer_error(file: Path, what: str = "the weights") -> ValueError | None:
    """The error for a Git LFS pointer found where ``what`` belongs (a repository cloned without git-lfs, where
    downloading it the same way again would not help), or None when ``file`` is not one."""
    try:
        with open(file, "rb") as f:
            head = f.read(64)
    except OSError:
        return None
    if not head.startswith(b"version https://git-lfs"):
        return None
    return ValueError(
        f"{file} is a Git LFS pointer, not {what}: the repository was cloned without git-lfs; run "
        f"`git lfs install && git lfs pull` in {file.parent} (or download it with `huggingface-cli download ID "
        "--local-dir DIR`)"
    )
