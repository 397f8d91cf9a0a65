"""Helpers of the training / tool tests: log capture and small generated, prepared datasets (importable as
``tests.helpers.run_helpers``)."""
import contextlib
import logging
from pathlib import Path
from typing import Iterator, List

from hrda_d2.data.preparation import prepare_cityscapes, prepare_gta
from hrda_d2.data.synthetic import SyntheticDatasets, generate_synthetic_datasets

__all__ = ["captured_log", "prepared_replicas"]


@contextlib.contextmanager
def captured_log(logger_name: str) -> Iterator[List[str]]:
    """The messages logged to ``logger_name`` or below while the block runs (also when Detectron2's
    ``setup_logger`` turned the logger's propagation off, which defeats pytest's caplog)."""
    messages: List[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def prepared_replicas(root: Path, num_train: int, num_val: int) -> SyntheticDatasets:
    """Generated GTA-like / Cityscapes-like 64x128 data under ``root`` with the preparation scripts' outputs
    (train-id labels, rare-class statistics)."""
    generated = generate_synthetic_datasets(str(root), num_train=num_train, num_val=num_val, height=64, width=128,
                                            seed=0)
    prepare_gta(generated.gta, nproc=1)
    prepare_cityscapes(generated.cityscapes, nproc=1)
    return generated
