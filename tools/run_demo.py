#!/usr/bin/env python
"""End-to-end demo (generate data -> train source-only and HRDA -> evaluate -> compare -> pictures).

Not built yet: the trainer and the demo are later issues. This script says so instead of pretending.
"""
import sys

sys.stderr.write(
    "make demo: the end-to-end demo is not implemented yet (needs the DACS trainer).\n"
    "Run `make test` to check the installation.\n"
)
sys.exit(2)
