"""One (variant, phase) measurement in its own process (``python -m benchmarking.worker SPEC OUT`` in ``tools/``).

``SPEC`` is a JSON file ``{"settings": BenchmarkSettings, "variant": name, "phase": name}``; the result is written
to ``OUT`` as JSON (:func:`benchmarking.phases.run_phase`). Started by :mod:`.runner`.
"""
import json
import logging
import sys
from pathlib import Path

from hrda_d2.config import ConfigError

from .phases import run_phase
from .settings import BenchmarkSettings


def main(argv=None) -> int:
    spec_path, out_path = argv if argv is not None else sys.argv[1:]
    logging.basicConfig(level=logging.WARNING)
    spec = json.loads(Path(spec_path).read_text())
    settings = BenchmarkSettings(**spec["settings"])
    try:
        result = run_phase(settings, spec["variant"], spec["phase"])
    except ConfigError as e:  # one line, not a worker traceback
        print(f"benchmark: {e}", file=sys.stderr)
        return 2
    Path(out_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
