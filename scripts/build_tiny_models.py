#!/usr/bin/env python
"""Build the tiny local models the smoke recipe and the tests use (no hub access needed):

    python scripts/build_tiny_models.py .cache/tiny

- translator/: a tiny chat model (random init, fixed seed) trained for seconds to memorise
  tests/fixtures/translator/translations.json in both directions, including its deliberate
  errors, so the smoke run sees real translations pass the gate and the corrupted ones fail;
- embedder/: a tiny random sentence-transformers model standing in for LaBSE (uninformative
  cosines: the smoke recipe lowers verify.min_labse accordingly);
- judge/: a tiny Qwen2-VL safety judge (vision and text roles) that memorised
  tests/fixtures/safety/verdicts.json for every smoke image and text turn (about 45-60 s).

Idempotent: a model whose build stamp matches its inputs is kept.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "tests/fixtures/translator/translations.json"


def stamp_of(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()[:16]


def build(out: Path, force: bool = False) -> dict:
    from ain.curate.config import TRANSLATE_TO_AR_PROMPT, TRANSLATE_TO_EN_PROMPT
    from ain_testkit.tiny_embedder import build_tiny_embedder
    from ain_testkit.tiny_server import build_tiny_chat_model
    from ain_testkit.tiny_translator import memorise, translation_examples

    report = {}
    table = json.loads(TABLE.read_text(encoding="utf-8"))
    texts = [TRANSLATE_TO_AR_PROMPT, TRANSLATE_TO_EN_PROMPT, *table["pairs"], *table["pairs"].values()]
    stamp = stamp_of(TABLE.read_bytes(), TRANSLATE_TO_AR_PROMPT.encode(), TRANSLATE_TO_EN_PROMPT.encode(),
                     Path(__file__).read_bytes(), (ROOT / "lib/ain_testkit/tiny_server.py").read_bytes(),
                     (ROOT / "lib/ain_testkit/tiny_translator.py").read_bytes())
    translator = out / "translator"
    stamp_file = translator / "ain_build_stamp.txt"
    if force or not stamp_file.exists() or stamp_file.read_text() != stamp:
        build_tiny_chat_model(translator, texts, seed=0)
        report["translator"] = memorise(translator, translation_examples(TABLE))
        if report["translator"]["exact"] != report["translator"]["examples"]:
            raise SystemExit(f"tiny translator memorised only {report['translator']}")
        stamp_file.write_text(stamp)
    embedder = out / "embedder"
    if force or not (embedder / "modules.json").exists():
        build_tiny_embedder(embedder, texts, seed=0)
        report["embedder"] = str(embedder)
    from ain_testkit.tiny_judge import ensure_tiny_judge

    judge = ensure_tiny_judge(out / "judge", force=force)  # None: the stamped one was kept
    if judge is not None:
        report["judge"] = judge
    from ain_testkit.tiny_guard import ensure_tiny_guard

    guard = ensure_tiny_guard(out / "guard", force=force)
    if guard is not None:
        report["guard"] = guard
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, nargs="?", default=ROOT / ".cache/tiny")
    p.add_argument("--force", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    print(json.dumps(build(args.out, args.force), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
