#!/usr/bin/env python
"""Vet a cluster profile before a big submission: runs the cheap `canary` stage as an array job
through exactly the path real stages take (sbatch, array throttle, markers, logs, status).

    python jobs/check_cluster.py cluster=slurm cluster.partition=debug --wait
"""

import sys

from ain.cli import submit_main

if __name__ == "__main__":
    sys.exit(submit_main(__doc__, extra=["recipe=canary"]))
