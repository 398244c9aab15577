"""Slurm side of the suite: submission (launcher, sbatch text, code snapshot), the task that runs inside each array element, queue queries and status."""
