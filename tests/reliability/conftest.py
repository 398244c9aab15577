"""The reliability suite reuses the Slurm tests' fixtures (`slurm_run` on the local cluster)."""

from tests.slurm.conftest import slurm_run  # noqa: F401  (a fixture)
