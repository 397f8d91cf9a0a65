"""The paper experiments (docs/experiments.md): the original generators' runs (:mod:`.catalog`), written as
configs (:mod:`.generate`), launched one after another or as a SLURM job array (:mod:`.local_launcher`,
:mod:`.slurm_launcher`), collected into tables and figures (:mod:`.collect`). ``tools/experiments.py`` is its
command line (:mod:`.cli`). The top layer of the package: it reads configs and run folders and starts
``tools/train_net.py`` processes; nothing below imports it."""
from .catalog import EXPERIMENT_IDS, experiment, find_config
from .generate import GeneratedRun, GenerationError, generate_experiment
from .spec import Expected, PaperItem, Reference, Run, RunConfig

__all__ = ["EXPERIMENT_IDS", "Expected", "GeneratedRun", "GenerationError", "PaperItem", "Reference", "Run",
           "RunConfig", "experiment", "find_config", "generate_experiment"]
