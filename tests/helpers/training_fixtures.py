"""Fixtures of the training tests (engine, MIC): generated, prepared and registered data; the recorded runs
several tests read (session-scoped, so each runs once). Registered for the whole suite by tests/conftest.py."""

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from hrda_d2.data.datasets import BUILTIN_SPLITS, register_builtin_split, register_cityscapes_root
from tests.helpers.run_helpers import prepared_replicas
from tests.helpers.training import (
    RecordStep,
    NAME_PREFIX,
    REF_OPTS,
    build_trainer,
    cli_opts,
    clone_state,
    final_state,
    loss_history,
    make_cfg,
    release,
    run_cli,
    train,
)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """Generated GTA-like / Cityscapes-like data (4 train, 2 val images, Cityscapes-like 64x128), prepared,
    and registered under test names (the builtin names are bound to $DETECTRON2_DATASETS at import)."""
    root = tmp_path_factory.mktemp("dacs_data")
    generated = prepared_replicas(root, num_train=4, num_val=2)
    names = [f"{NAME_PREFIX}_gta_train", f"{NAME_PREFIX}_cityscapes_train", f"{NAME_PREFIX}_cityscapes_val"]
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    gta = next(split for split in BUILTIN_SPLITS if split.name == "gta_train")
    register_builtin_split(gta, str(root), name=names[0])
    register_cityscapes_root(generated.cityscapes, f"{NAME_PREFIX}_cityscapes")
    return root


@pytest.fixture(scope="session")
def uda_run(data_root, tmp_path_factory):
    """Three DACS iterations with the ImageNet feature distance on, recorded by :class:`RecordStep`."""
    out = tmp_path_factory.mktemp("uda_run")
    cfg = make_cfg(out, "SOLVER.MAX_ITER", "3", "UDA.FD.LAMBDA", "0.005", "UDA.DEBUG_IMG_INTERVAL", "0",
                   "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", "SOLVER.CHECKPOINT_PERIOD", "100")
    trainer = build_trainer(cfg)
    trainer.resume_or_load(resume=False)
    imnet_before = clone_state(trainer.imnet_model)
    recorder = RecordStep()
    trainer.register_hooks([recorder])
    trainer.train()
    yield trainer, recorder, imnet_before, out
    release(trainer)


@pytest.fixture(scope="session")
def cli_run(data_root, tmp_path_factory):
    """``tools/train_net.py`` with the demo config and REF_OPTS, uninterrupted: ``(output dir, log text)``.

    Also the reference of the SIGKILL test: the builtin Cityscapes split of a subprocess lists its files in
    directory order, the test-registered one of :func:`reference_run` sorted, so their streams may differ."""
    out = tmp_path_factory.mktemp("cli_run")
    result = run_cli(cli_opts(out, *REF_OPTS), data_root)
    return out, result.stdout + result.stderr


@pytest.fixture(scope="session")
def reference_run(data_root, tmp_path_factory):
    """The uninterrupted run the resume tests compare against (REF_ITERS iterations, 0 workers)."""
    out = tmp_path_factory.mktemp("reference_run")
    trainer = train(make_cfg(out, *REF_OPTS))
    state = final_state(trainer)
    state["losses"] = loss_history(trainer)
    release(trainer)
    return state
