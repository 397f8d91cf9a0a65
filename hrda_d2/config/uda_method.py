"""Which adaptation method a config trains with (``UDA.METHOD``, and the first release's ``UDA.ENABLED``)."""
from detectron2.config import CfgNode

__all__ = ["MIC_METHODS", "MIC_WITH_OWN_TEACHER", "SELF_TRAINING", "UDA_METHODS", "uda_method"]

UDA_METHODS = ("dacs", "advseg", "minent", "source_only", "target_only")
SELF_TRAINING = "dacs"  # the method with an EMA teacher, pseudo-labels, ClassMix (and optionally FD, MIC)
# the methods MIC (UDA.MIC.ENABLED) can extend: DACS shares its teacher with MIC; AdvSeg and MinEnt get MIC's own
# EMA teacher (docs/method.md §17.6)
MIC_WITH_OWN_TEACHER = ("advseg", "minent")
MIC_METHODS = (SELF_TRAINING,) + MIC_WITH_OWN_TEACHER


def uda_method(cfg: CfgNode) -> str:
    """``UDA.METHOD``, with ``UDA.ENABLED False`` meaning ``"source_only"`` as it always has.

    Raises ``ValueError`` naming both keys when ``UDA.ENABLED False`` contradicts another ``UDA.METHOD`` (no
    silent change of meaning), and naming the methods when ``UDA.METHOD`` is unknown.
    """
    method = str(cfg.UDA.METHOD).lower()
    if method not in UDA_METHODS:
        raise ValueError(f"UDA.METHOD={cfg.UDA.METHOD!r} is not a method of hrda_d2; use one of {UDA_METHODS}")
    if not cfg.UDA.ENABLED:
        if method not in (SELF_TRAINING, "source_only"):
            raise ValueError(f"UDA.ENABLED False means source-only training, which contradicts UDA.METHOD "
                             f"{method!r}: remove UDA.ENABLED False (UDA.METHOD selects the method)")
        return "source_only"
    return method
