"""Models and datasets from the Hugging Face hub, offline and pinned.

Compute nodes often have no internet, and a model that changes on the hub between two tasks makes
their outputs incomparable. So: `python jobs/prefetch.py recipe=<r>` (on a node with internet)
downloads every hub model and dataset the recipe names into the shared cache (`cluster.hf_home`,
else $HF_HOME), checking gated repositories and the token first; every launch then checks that
each one is in that cache (refusing, naming the model and the prefetch command, when one is
missing), records the cached revision of each in the run directory (`hub_revisions.json`), and the
jobs run with HF_HUB_OFFLINE=1 so nothing is fetched behind the recipe's back.

What a recipe names comes from its stages' sections: each may define `hub_assets(cfg)` returning
HubAssets (a local directory is not one).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

if TYPE_CHECKING:
    from ain.config import RunConfig

PREFETCH_HINT = "python jobs/prefetch.py recipe={recipe} cluster={cluster}"


@dataclass(frozen=True)
class HubAsset:
    kind: str
    """model or dataset"""
    repo_id: str
    key: str
    """The config key that names it (for messages)."""


def is_hub_id(name: str) -> bool:
    """"org/name" that is not a local path: what from_pretrained / load_dataset would download."""
    if not name or name.startswith((".", "/", "~")) or os.path.isdir(os.path.expanduser(name)):
        return False
    return name.count("/") == 1 and all(name.split("/"))


def hub_model(name: str, key: str, kind: str = "model") -> list[HubAsset]:
    return [HubAsset(kind, name, key)] if is_hub_id(name) else []


def recipe_assets(cfg: "RunConfig") -> list[HubAsset]:
    """Every hub model and dataset the listed stages name, once each (first key wins)."""
    out: dict[tuple[str, str], HubAsset] = {}
    for stage in cfg.stages:
        assets = getattr(getattr(cfg, stage), "hub_assets", None)
        for asset in (assets(cfg) if callable(assets) else []):
            out.setdefault((asset.kind, asset.repo_id), asset)
    return list(out.values())


def cache_dir(hf_home: Optional[str]) -> Optional[str]:
    """The hub cache under `hf_home` (None: huggingface_hub's own default, $HF_HOME/hub)."""
    return str(Path(hf_home).expanduser() / "hub") if hf_home else None


def cached_revision(asset: HubAsset, hf_home: Optional[str] = None) -> Optional[str]:
    """The commit of the asset's cached snapshot, None when it is not in the cache."""
    from huggingface_hub import snapshot_download  # noqa: PLC0415
    from huggingface_hub.errors import LocalEntryNotFoundError  # noqa: PLC0415

    try:
        path = snapshot_download(asset.repo_id, repo_type=asset.kind, cache_dir=cache_dir(hf_home),
                                 local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        return None
    return Path(path).name


def check_cached(assets: Iterable[HubAsset], hf_home: Optional[str]) -> tuple[dict[str, str], list[HubAsset]]:
    """({"model:org/name": revision} for the cached ones, the missing ones)."""
    pins: dict[str, str] = {}
    missing: list[HubAsset] = []
    for asset in assets:
        revision = cached_revision(asset, hf_home)
        if revision is None:
            missing.append(asset)
        else:
            pins[f"{asset.kind}:{asset.repo_id}"] = revision
    return pins, missing


def missing_message(missing: list[HubAsset], hf_home: Optional[str], recipe: str, cluster: str) -> str:
    where = hf_home or os.environ.get("HF_HOME") or "~/.cache/huggingface"
    names = "; ".join(f"{a.kind} {a.repo_id} ({a.key})" for a in missing)
    return (f"not in the local hub cache {where}: {names}. Jobs run offline (HF_HUB_OFFLINE=1): download them "
            f"first on a node with internet: {PREFETCH_HINT.format(recipe=recipe, cluster=cluster)}")


def prefetch(assets: Iterable[HubAsset], hf_home: Optional[str], token: Optional[str] = None,
             api: Any = None, download: Any = None) -> dict[str, str]:
    """Download each asset (all its files) into the cache and return its resolved revision. A gated
    repository without a token is refused before any download, naming it. `api` / `download` are
    injectable for tests (an HfApi-like object and a snapshot_download-like function)."""
    from huggingface_hub import HfApi, snapshot_download  # noqa: PLC0415

    api = api or HfApi(token=token)
    download = download or snapshot_download
    assets = list(assets)
    gated = []
    for asset in assets:
        info = api.model_info(asset.repo_id) if asset.kind == "model" else api.dataset_info(asset.repo_id)
        if getattr(info, "gated", False) and not token:
            gated.append(asset)
    if gated:
        raise PermissionError(
            "gated on the hub (accept the terms on each model page, then set HF_TOKEN to a token of that "
            f"account): {', '.join(f'{a.repo_id} ({a.key})' for a in gated)}")
    pins: dict[str, str] = {}
    for asset in assets:
        path = download(asset.repo_id, repo_type=asset.kind, cache_dir=cache_dir(hf_home), token=token)
        pins[f"{asset.kind}:{asset.repo_id}"] = Path(path).name
    return pins
