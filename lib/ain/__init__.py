"""AIN job suite: curation, training, evaluation and the VDR embedding track as Slurm stages.

A regular package (not a namespace one) so that a job's code snapshot on PYTHONPATH shadows the
checkout completely instead of being merged with it (see ain.slurm.snapshot).
"""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
"""The checkout (or, inside a Slurm job, the run's code snapshot) that holds lib/ain and configs/:
computed here once; every other module imports it."""
