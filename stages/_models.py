"""Open the model a stage needs. ``models`` (and so torch) is imported here, lazily."""

from __future__ import annotations

from dpo_engine.errors import ModelError


def open_image_text_model(path: str, config):
    from dpo_engine.models.family import ModelConfigError
    from dpo_engine.models.hf.vlm import ImageTextModel

    try:
        return ImageTextModel(path, device=config.device, dtype=config.dtype)
    except ModelConfigError as exc:
        raise ModelError(str(exc)) from exc
    except OSError as exc:
        raise ModelError(f"cannot load the model at {path} ({exc})",
                         "check that the folder holds a complete checkpoint") from exc


def open_text_chat_model(path: str, config):
    from dpo_engine.models.family import ModelConfigError
    from dpo_engine.models.hf.chat import TextChatModel

    try:
        return TextChatModel(path, device=config.device, dtype=config.dtype)
    except (ModelConfigError, ValueError) as exc:
        raise ModelError(str(exc)) from exc
    except OSError as exc:
        raise ModelError(f"cannot load the model at {path} ({exc})",
                         "check that the folder holds a complete checkpoint") from exc
