#!/usr/bin/env python
"""Submit the evaluation arrays of one checkpoint (CAMEL-Bench per domain, ArabicMMLU, English
benchmarks) and the results table, then exit.

    python jobs/submit_eval.py checkpoint=runs/ain/stages/export/out/model cluster=slurm recipe=ain
    python jobs/submit_eval.py checkpoint=Qwen/Qwen2-VL-7B-Instruct benchmarks=[camel_bench] cluster=slurm
    python jobs/submit_eval.py                      # recipe eval_smoke: the tiny model on fixture data

`checkpoint=` and `benchmarks=` are short for eval.checkpoint / eval.benchmarks; any other
key=value override works as in submit_train.py. The run is named after the checkpoint
(`eval-<last path part>`, e.g. runs/eval-model) unless `name=` is given, so evaluating a training
run's export never collides with that training run's directory. Only the eval and eval_report stages run
(a later `stages=[...]` overrides that). Re-running the command resumes the same run.
"""

import re
import sys

from ain.cli import submit_main

SHORT = {"checkpoint": "eval.checkpoint", "benchmarks": "eval.benchmarks", "datasets": "eval.datasets"}


def expand(argv: list[str]) -> list[str]:
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        out.append(f"{SHORT[key]}={value}" if sep and key in SHORT else arg)
    checkpoint = next((a.split("=", 1)[1] for a in out if a.startswith("eval.checkpoint=")), "")
    if checkpoint and not any(a.startswith("name=") for a in out):
        tail = re.sub(r"[^A-Za-z0-9._-]+", "_", checkpoint.rstrip("/").rsplit("/", 1)[-1]).lstrip(".")
        out.insert(0, f"name=eval-{tail or 'checkpoint'}")
    return out


if __name__ == "__main__":
    # Defaults first: the user's overrides come later and win.
    sys.exit(submit_main(__doc__, expand(sys.argv[1:]), extra=["recipe=eval_smoke", "stages=[eval,eval_report]"]))
