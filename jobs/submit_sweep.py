#!/usr/bin/env python
"""Submit an ablation sweep: variants of one recipe, each (stage, fingerprint) computed once.

    python jobs/submit_sweep.py recipe=ain cluster=slurm sweep=authentic_share --dry-run
    python jobs/submit_sweep.py recipe=ain cluster=slurm sweep=labse_threshold
    python jobs/submit_sweep.py recipe=smoke sweep.mix.authentic_arabic_share=0.2,0.35,0.5 name=share

`sweep=` names configs/sweep/<name>.yaml (or a path to one); `sweep.<key>=a,b,c` adds a grid
axis; every other key=value applies to all variants. Variants live in runs/<sweep>/<variant>/;
`python jobs/status.py runs/<sweep>` shows variants x stages, `python jobs/report.py runs/<sweep>`
writes the comparison table. Running the same command again continues the sweep.
"""

import sys

from ain.cli import sweep_main

if __name__ == "__main__":
    sys.exit(sweep_main(__doc__))
