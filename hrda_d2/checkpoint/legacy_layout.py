"""This project's checkpoints written before the registered decode heads held the single-scale head as ``head``.

Two layouts are upgraded, both with the single-scale head at ``sem_seg_head.X``:

* hrda_d2 0.1 (before the registered ``HRDAHead``, issue "House II"): the two-scale model's single-scale head as
  ``sem_seg_head.X`` and the scale attention as ``scale_attention.X``; the HRDA meta-architecture now holds both
  inside its ``HRDAHead`` (``sem_seg_head.head.X``, ``sem_seg_head.scale_attention.X``, the original's
  ``decode_head.head.X`` / ``decode_head.scale_attention.X``);
* the one-scale model before the ``SingleScaleHead`` (issue "House III"): its head as ``sem_seg_head.X``, now
  ``sem_seg_head.head.X``.

:func:`upgrade_head_keys` renames them when, and only when, the model expects the new names and the file has the
old ones, so such files still load, resume and evaluate.
"""
import logging
from typing import Iterable, MutableMapping

__all__ = ["upgrade_head_keys"]

logger = logging.getLogger(__name__)

_HEAD = "sem_seg_head."
_NESTED_HEAD = "sem_seg_head.head."
_OLD_ATTENTION = "scale_attention."
_NESTED_ATTENTION = "sem_seg_head.scale_attention."


def upgrade_head_keys(state_dict: MutableMapping[str, object], model_keys: Iterable[str], where: str = "") -> int:
    """Rename the old head keys of ``state_dict`` in place (order kept) if ``model_keys`` (the model's state-dict
    keys) has ``sem_seg_head.head.*`` and the file has ``sem_seg_head.*`` but no ``sem_seg_head.head.*``.

    Returns the number of keys renamed (0 when nothing was to be done); logs one line naming ``where``.
    """
    if not any(k.startswith(_NESTED_HEAD) for k in model_keys):
        return 0
    keys = list(state_dict)
    if any(k.startswith((_NESTED_HEAD, _NESTED_ATTENTION)) for k in keys) or not any(k.startswith(_HEAD) for k in keys):
        return 0
    renamed = 0
    for key in keys:
        value = state_dict.pop(key)
        if key.startswith(_HEAD):
            key, renamed = _NESTED_HEAD + key[len(_HEAD):], renamed + 1
        elif key.startswith(_OLD_ATTENTION):
            key, renamed = _NESTED_ATTENTION + key[len(_OLD_ATTENTION):], renamed + 1
        state_dict[key] = value
    logger.info("%s: %d head keys of the older layout renamed (sem_seg_head.* -> sem_seg_head.head.*, "
                "scale_attention.* -> sem_seg_head.scale_attention.*)", where or "checkpoint", renamed)
    return renamed
