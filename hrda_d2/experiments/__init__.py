"""The paper experiments (docs/experiments.md): what a run is (:mod:`.runs`), the original generators' runs of every
id (:mod:`.catalog`), written as configs that load and build (:mod:`.configs`), launched one after another or as a
SLURM job array (:mod:`.launch`, :mod:`.slurm`), collected into tables and figures (:mod:`.results`).
``tools/experiments.py`` is its command line (:mod:`.cli`). The top layer of the package: it reads configs and run
folders and starts ``tools/train_net.py`` processes; nothing below imports it."""
from .catalog import EXPERIMENT_IDS, experiment, find_config
from .configs import GeneratedRun, GenerationError, generate_experiment
from .runs import Expected, OriginalRow, PaperItem, Reference, Run, RunConfig

__all__ = ["EXPERIMENT_IDS", "Expected", "GeneratedRun", "GenerationError", "OriginalRow", "PaperItem", "Reference",
           "Run", "RunConfig", "experiment", "find_config", "generate_experiment"]
