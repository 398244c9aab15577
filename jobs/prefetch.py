#!/usr/bin/env python
"""Download every hub model and dataset a recipe names into the shared cache, on a node with
internet, before launching (jobs run offline and a launch refuses when one is missing):

    HF_TOKEN=... python jobs/prefetch.py recipe=ain cluster=slurm          # cache: cluster.hf_home or $HF_HOME
    python jobs/prefetch.py recipe=ain cluster=slurm --list                # what it would fetch, and what is cached

Gated repositories (LlavaGuard) need HF_TOKEN of an account that accepted their terms; they are
checked before anything is downloaded. The resolved revisions are printed and written to
<cache>/ain-prefetch-<recipe>.json; each launch pins the cached ones in its run directory.
"""

import argparse
import json
import os
import sys
from pathlib import Path

from ain import hub
from ain.cli import config_main
from ain.config import RunConfig

OPTIONS = {"--list": dict(action="store_true", help="only list the recipe's hub assets and whether each is cached")}


def prefetch(cfg: RunConfig, args: argparse.Namespace) -> int:
    assets = hub.recipe_assets(cfg)
    hf_home = cfg.cluster.hf_home
    if args.list:
        for asset in assets:
            revision = hub.cached_revision(asset, hf_home)
            print(f"{asset.kind:<8} {asset.repo_id:<45} {revision or 'NOT CACHED'}  ({asset.key})")
        return 0
    try:
        pins = hub.prefetch(assets, hf_home, token=os.environ.get("HF_TOKEN"))
    except PermissionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    root = Path(os.path.expanduser(hf_home or os.environ.get("HF_HOME", "~/.cache/huggingface")))
    record = root / f"ain-prefetch-{cfg.recipe}.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"recipe": cfg.recipe, "revisions": pins}, indent=1) + "\n")
    for key, revision in pins.items():
        print(f"{key}  {revision}")
    print(f"{len(pins)} downloaded; revisions in {record}")
    return 0


if __name__ == "__main__":
    # Paths are not checked: the models this fetches are what a launch's path checks would miss.
    sys.exit(config_main(__doc__, prefetch, options=OPTIONS, check_paths=False))
