#!/usr/bin/env python
"""Submit the Arabic visual-document-retrieval embedding track and exit.

    python jobs/submit_embed.py cluster=slurm                          # recipe=vdr_ar (the blog's)
    python jobs/submit_embed.py recipe=vdr_smoke cluster=localslurm    # tiny, this machine
    python jobs/submit_embed.py cluster=slurm --dry-run

Stages: vdr_prepare -> vdr_train (one node of GPUs) -> vdr_eval (one task per model) -> vdr_report.
Running the same command again continues the run.
"""

import sys

from ain.cli import submit_main

if __name__ == "__main__":
    # The default recipe comes first, so a recipe=... given by the user wins.
    sys.exit(submit_main(__doc__, extra=["recipe=vdr_ar"]))
