"""Training and test data loaders.

``build_train_loader(cfg, start_iter)`` yields ``(source_batch, target_batch)`` pairs forever
(``target_batch`` is None for source-only training; ``target_only`` yields ``(labelled target batch, None)``,
see :func:`build_train_loader`); each stream is its own Detectron2
loader (``build_batch_data_loader`` over a :class:`~hrda_d2.data.common.PositionSeededDataset` with an
:class:`~hrda_d2.data.samplers.InfinitePositionSampler`), with
``DATALOADER.NUM_WORKERS`` worker processes per stream and ``SOLVER.IMS_PER_BATCH`` images per
iteration in total over all ranks (Detectron2 convention: each rank gets ``IMS_PER_BATCH /
world_size``). Batches are lists of mapped dicts (see ``hrda_d2.data.dataset_mappers``).

Exact resume: sample number p of a stream (``p = iteration * IMS_PER_BATCH + index``) is a pure
function of ``(cfg.SEED, stream, p)``; a loader built with ``start_iter = k`` yields exactly what the
loader built with 0 yields from iteration k on, for any number of workers (see
:mod:`hrda_d2.data.common`). The streams are the source (stream 0; rare class sampling when
``DATASETS.RCS.ENABLED``, else one shuffled pass over the split per epoch) and the target (stream 1;
shuffled passes). ``cfg.SEED < 0`` draws one seed shared by all ranks (logged; resume then is not exact).

Keys read: ``DATASETS.SOURCE``, ``DATASETS.TARGET`` (split names; several are concatenated, RCS needs
exactly one source split whose metadata has ``dataset_root``), ``DATASETS.RCS.{ENABLED, CLASS_TEMP,
MIN_PIXELS, MIN_CROP_RATIO}``, ``DATALOADER.NUM_WORKERS``, ``SOLVER.IMS_PER_BATCH``, ``SEED``,
``INPUT.SYNC_CROP_SIZE`` (one window for the source and target sample of each position, :mod:`.sync_crop`), and
the mappers' ``INPUT.*`` / ``MODEL.SEM_SEG_HEAD.{NUM_CLASSES, IGNORE_VALUE}`` keys.
"""
import logging
from typing import Any, Dict, Iterator, List, Optional, Tuple

from detectron2.data import MetadataCatalog, build_batch_data_loader, build_detection_test_loader
from detectron2.data.common import DatasetFromList, MapDataset
from detectron2.utils import comm
from torch.utils.data import DataLoader, Dataset

from ..config import uda_method
from .datasets import load_split
from .dataset_mappers import SourceTrainMapper, TargetTrainMapper, TestMapper
from .common import PositionSeededDataset
from .samplers import InfinitePositionSampler
from .rare_class_sampling import RareClassSamplingDataset, load_rcs_statistics
from .sync_crop import SynchronizedCropStream

__all__ = [
    "SOURCE_STREAM_ID",
    "TARGET_STREAM_ID",
    "TrainPairLoader",
    "build_source_train_dataset",
    "build_target_train_dataset",
    "build_source_train_loader",
    "build_target_train_loader",
    "build_train_loader",
    "build_test_loader",
]

logger = logging.getLogger(__name__)

SOURCE_STREAM_ID, TARGET_STREAM_ID = 0, 1

Batch = List[Dict[str, Any]]


def _stream_seed(cfg) -> int:
    """``cfg.SEED``, or (if negative) one random seed shared by all ranks."""
    if cfg.SEED >= 0:
        return int(cfg.SEED)
    seed = int(comm.shared_random_seed())
    logger.warning("SEED=%d < 0: the training streams use the random seed %d (resume is not exact)", cfg.SEED, seed)
    return seed


def load_training_dicts(names: Tuple[str, ...]) -> List[Dict[str, Any]]:
    """Dataset dicts of the splits ``names``, each split checked and sorted by image path
    (:func:`~hrda_d2.data.datasets.load_split`): the training streams index into this list, so its order must
    not depend on the file system (Detectron2's Cityscapes loader lists files in directory order)."""
    if not names:
        raise ValueError("no training split given (DATASETS.SOURCE / DATASETS.TARGET)")
    return [d for name in names for d in load_split(name)]


def build_source_train_dataset(cfg) -> Tuple[Dataset, bool]:
    """The source dataset before position seeding, and whether its items are drawn (not indexed).

    With ``DATASETS.RCS.ENABLED``: a :class:`RareClassSamplingDataset` over the (single) source split
    with the statistics of its metadata's ``dataset_root``; otherwise
    ``MapDataset(DatasetFromList(dicts), SourceTrainMapper(cfg))``.
    """
    names = tuple(cfg.DATASETS.SOURCE)
    dicts = load_training_dicts(names)
    mapper = SourceTrainMapper(cfg)
    if not cfg.DATASETS.RCS.ENABLED:
        return MapDataset(DatasetFromList(dicts, copy=False), mapper), False
    if len(names) != 1:
        raise ValueError(f"rare class sampling needs exactly one source split in DATASETS.SOURCE, got {names}")
    dataset_root = MetadataCatalog.get(names[0]).get("dataset_root")
    if dataset_root is None:
        raise ValueError(
            f"metadata of split {names[0]!r} has no 'dataset_root' (the folder with the rare class sampling "
            "statistics); register it with one or set DATASETS.RCS.ENABLED False"
        )
    class_stats, samples_with_class = load_rcs_statistics(dataset_root)
    rcs = cfg.DATASETS.RCS
    dataset = RareClassSamplingDataset(
        dicts,
        mapper,
        class_stats,
        samples_with_class,
        temperature=rcs.CLASS_TEMP,
        min_pixels=rcs.MIN_PIXELS,
        min_crop_ratio=rcs.MIN_CROP_RATIO,
    )
    return dataset, True


def build_target_train_dataset(cfg, labelled: bool = False) -> Dataset:
    """``MapDataset(DatasetFromList(target dicts), TargetTrainMapper(cfg))``; ``labelled``: every sample must have
    its label (the target-only oracle)."""
    dicts = load_training_dicts(tuple(cfg.DATASETS.TARGET))
    return MapDataset(DatasetFromList(dicts, copy=False), TargetTrainMapper(cfg, require_label=labelled))


def _build_stream_loader(cfg, dataset: Dataset, stream_id: int, draws_items: bool, start_iter: int) -> DataLoader:
    """Infinite Detectron2 loader of one stream, starting after ``start_iter`` iterations."""
    if start_iter < 0:
        raise ValueError(f"start_iter must be >= 0, got {start_iter}")
    total_batch = int(cfg.SOLVER.IMS_PER_BATCH)
    seed = _stream_seed(cfg)
    seeded = PositionSeededDataset(dataset, seed, stream_id, shuffle=not draws_items)
    if cfg.INPUT.SYNC_CROP_SIZE:  # the same window for the source and the target sample of a position
        seeded = SynchronizedCropStream(seeded, seed, cfg.INPUT.SYNC_CROP_SIZE)
    sampler = InfinitePositionSampler(start_position=start_iter * total_batch)
    # ``seed`` gives the DataLoader its own torch.Generator (for the workers' base seed), so creating
    # the loader's iterator does not consume the trainer's global torch RNG
    return build_batch_data_loader(
        seeded, sampler, total_batch, num_workers=cfg.DATALOADER.NUM_WORKERS, seed=seed + stream_id
    )


def build_source_train_loader(cfg, start_iter: int = 0) -> DataLoader:
    """Infinite loader of source batches (stream 0)."""
    dataset, draws_items = build_source_train_dataset(cfg)
    return _build_stream_loader(cfg, dataset, SOURCE_STREAM_ID, draws_items, start_iter)


def build_target_train_loader(cfg, start_iter: int = 0, labelled: bool = False) -> DataLoader:
    """Infinite loader of target batches (stream 1); ``labelled`` as :func:`build_target_train_dataset`."""
    return _build_stream_loader(cfg, build_target_train_dataset(cfg, labelled), TARGET_STREAM_ID, False, start_iter)


class TrainPairLoader:
    """Infinite iterator of ``(source_batch, target_batch)``; each batch a list of mapped dicts, ``target_batch``
    None when there is no ``target_loader`` (source-only training).

    The Detectron2 loaders' worker processes start at the first ``next()``.
    """

    def __init__(self, source_loader: DataLoader, target_loader: Optional[DataLoader] = None):
        self.source_loader = source_loader
        self.target_loader = target_loader
        self._iterators: Optional[Tuple[Iterator[Batch], Optional[Iterator[Batch]]]] = None

    def __iter__(self) -> "TrainPairLoader":
        return self

    def __next__(self) -> Tuple[Batch, Optional[Batch]]:
        if self._iterators is None:
            target_iter = iter(self.target_loader) if self.target_loader is not None else None
            self._iterators = (iter(self.source_loader), target_iter)
        source_iter, target_iter = self._iterators
        return next(source_iter), (next(target_iter) if target_iter is not None else None)


def build_train_loader(cfg, start_iter: int = 0) -> TrainPairLoader:
    """The batches of ``UDA.METHOD`` from iteration ``start_iter`` on (see module doc): (source, target) pairs for
    the adaptation methods, (source, None) for ``source_only``, (labelled target, None) for ``target_only``."""
    method = uda_method(cfg)
    if method == "target_only":
        return TrainPairLoader(build_target_train_loader(cfg, start_iter, labelled=True))
    source_loader = build_source_train_loader(cfg, start_iter)
    target_loader = build_target_train_loader(cfg, start_iter) if method != "source_only" else None
    return TrainPairLoader(source_loader, target_loader)


def build_test_loader(cfg, dataset_name: str) -> DataLoader:
    """Detectron2 inference loader (batch 1, sharded over ranks) of ``dataset_name`` with the
    :class:`TestMapper` and ``DATALOADER.NUM_WORKERS`` workers."""
    return build_detection_test_loader(cfg, dataset_name, mapper=TestMapper(cfg))
