"""The settings of one benchmark run, shared by the driver and its per-(variant, phase) worker processes."""
import json
from dataclasses import asdict, dataclass, field
from typing import List, Optional

__all__ = ["BenchmarkSettings"]


@dataclass
class BenchmarkSettings:
    """What ``tools/benchmark.py`` was asked for (its flags of the same names).

    config_file: base config (None: the paper's GTA -> Cityscapes config). tiny: ``--tiny``. opts: config
    overrides ``KEY VALUE ...``. device: ``cuda`` or ``cpu``. iters / warmup: measured and unmeasured training
    iterations. infer_runs: measured inference runs (after one warm-up). image_size: test image ``[H, W]``.
    flops: count FLOPs (fvcore). threads: torch threads per process (0 = torch's default; the ``ddp`` phase's
    CPU ranks then share the cores). vit: the DINOv2 ViT size of the ``vfm_infer`` phase (``s``, ``b``, ``l``).
    deploy_full: the ``deploy`` phase measures every option row at the main image size too (default: only at the
    demo's 128 x 256).
    """

    config_file: Optional[str] = None
    tiny: bool = False
    opts: List[str] = field(default_factory=list)
    device: str = "cpu"
    iters: int = 2
    warmup: int = 1
    infer_runs: int = 1
    image_size: List[int] = field(default_factory=lambda: [1024, 2048])
    flops: bool = True
    threads: int = 0
    vit: str = "s"
    deploy_full: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "BenchmarkSettings":
        return cls(**json.loads(text))
