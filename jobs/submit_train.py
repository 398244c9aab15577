#!/usr/bin/env python
"""Submit the AIN pipeline (or the tiny `smoke` recipe) and exit.

    python jobs/submit_train.py recipe=smoke                  # this machine, tiny
    python jobs/submit_train.py recipe=ain cluster=slurm      # a cluster login node
    python jobs/submit_train.py recipe=ain cluster=slurm --dry-run

Running the same command again continues the run: finished tasks are skipped, queued and
running ones are left alone, failed and lost ones are resubmitted.
"""

import sys

from ain.cli import submit_main

if __name__ == "__main__":
    sys.exit(submit_main(__doc__))
