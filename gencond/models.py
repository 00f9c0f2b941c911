"""Saved models whose constructor arguments were renamed: the ``config.json`` written before still loads."""
from __future__ import annotations

from typing import Any, ClassVar


class RenamedArguments:
    """Mixin for a diffusers ``ConfigMixin`` model (listed before it): ``RENAMED_ARGUMENTS`` (old name -> new)
    renames the keys of a ``config.json`` saved under the old names, so ``from_pretrained`` builds the same model."""

    RENAMED_ARGUMENTS: ClassVar[dict[str, str]] = {}

    @classmethod
    def extract_init_dict(cls, config_dict: dict[str, Any], **kwargs):
        config_dict = dict(config_dict)
        for old, new in cls.RENAMED_ARGUMENTS.items():
            if old in config_dict:
                value = config_dict.pop(old)
                config_dict.setdefault(new, value)
        return super().extract_init_dict(config_dict, **kwargs)
