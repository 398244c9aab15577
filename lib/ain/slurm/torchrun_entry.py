"""`python -m torch.distributed.run ... -m ain.slurm.torchrun_entry <run_dir> <stage>`: a multi-node
stage (training) under torchrun (the plain-sbatch path of sbatch/), one process per GPU. torchrun
has set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; the stage function, its
markers and its checkpoints are the same as under submitit."""

from __future__ import annotations

import sys

from ain.slurm.task import StageTask


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m ain.slurm.torchrun_entry <run_dir> <stage>", file=sys.stderr)
        return 2
    StageTask(argv[0], argv[1])(0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
