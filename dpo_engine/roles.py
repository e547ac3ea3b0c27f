"""Model roles, and the one place that maps a role to the model configured for it.

A stage names only its ``model_role``. ``RoleModels`` knows, for one run, which checkpoint
serves each role, what kind of adapter opens it and with which backend; executors ask it for
a model and keep what it gave them while consecutive stages use the same one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import RunConfig
from .errors import ModelError


@dataclass(frozen=True)
class Role:
    """A model a pipeline needs. ``kind`` says which adapter opens it: "image-text" (a VLM)
    or "chat" (a text chat model)."""

    name: str
    kind: str
    flag: str  # the CLI option that names it
    hint: str = ""
    default: str | None = None  # the role whose model serves this one when it is not set apart


INSTRUCT = Role("instruct", "image-text", "--instruct-model", "pass the folder of the model to be trained")
REWARD = Role("reward", "image-text", "--reward-model", "pass the folder of a DPO-trained reward VLM")
# dpo_reward: the model the reward model was DPO-trained from, the denominator of its implicit
# reward; unset, the instruct model (as the reference computes it).
REFERENCE = Role("reference", "image-text", "--reference-model", default="instruct")
LABELER = Role("labeler", "image-text", "--labeler-model")
SPLIT = Role("split", "chat", "--split-model")
QUESTION = Role("question", "chat", "--question-model")


def check_model_folder(path: str, role: Role, trust_remote_code: bool = False) -> None:
    """Fail early, before anything loads, on a folder that is not a checkpoint we can open."""
    from .models.family import ModelConfigError, detect_family

    if not Path(path).is_dir():
        raise ModelError(f"{role.name} model {path} is not a folder", "pass a local checkpoint folder")
    try:
        detect_family(path, trust_remote_code=trust_remote_code)
    except ModelConfigError as exc:
        raise ModelError(f"{role.name} model: {exc}") from exc
    for weights in sorted(Path(path).glob("*.safetensors")):
        problem = safetensors_problem(weights)
        if problem:
            raise ModelError(f"{role.name} model: {weights} is not a usable weights file ({problem})",
                             "copy or download the checkpoint again")


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file cannot be loaded, from its header alone (no tensor is read):
    the header must parse and every tensor's bytes must lie inside the file."""
    import json
    import struct

    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{size} bytes, shorter than a header"
            (length,) = struct.unpack("<Q", head)
            if length > size - 8:
                return f"the header says {length} bytes, the file has {size}"
            header = json.loads(fh.read(length))
    except (OSError, ValueError) as exc:
        return f"unreadable header: {exc}"
    if not isinstance(header, dict):
        return "the header is not a JSON object"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)
               and "data_offsets" in t), default=0)
    if 8 + length + end > size:
        return f"truncated: its tensors need {8 + length + end} bytes, the file has {size}"
    return None


class RoleModels:
    """Which model serves each role of one run, and how to open it."""

    def __init__(self, config: RunConfig, roles: Sequence[Role]):
        self.config = config
        self.roles = {role.name: role for role in roles}

    def key(self, role: str, use: str = "generate") -> tuple[str, str, str]:
        """Equal keys mean the same loaded model can serve both (role, use): ``use`` is what a
        stage does with it ("generate" or "score"), which picks the backend."""
        return (self.roles[role].kind, str(self.config.model_path(role)), self.config.backend_for(use))

    def open(self, role: str, use: str = "generate") -> Any:
        from .models import open_model
        from .models.family import ModelConfigError

        kind, path, backend = self.key(role, use)
        try:
            return open_model(kind, path, device=self.config.device, dtype=self.config.dtype, backend=backend,
                              **self.config.backend_options(backend))
        except (ModelConfigError, ValueError) as exc:
            raise ModelError(f"{role} model: {exc}") from exc
        except ImportError as exc:
            raise ModelError(f"the {backend} backend is not installed here ({exc})",
                             f"install the extra: pip install -e '.[{backend}]' (see the README)") from exc
        except OSError as exc:
            raise ModelError(f"cannot load the {role} model at {path} ({exc})",
                             "check that the folder holds a complete checkpoint") from exc
