"""A tiny text safety judge that answers in Qwen3Guard-Gen's own format, for CPU tests.

It memorises, for every text turn of the smoke fixture set (English and the tiny translator's
Arabic, as the text judge sees them), the verdict tests/fixtures/safety/verdicts.json gives,
written as Qwen3Guard writes it: "Safety: Safe\\nCategories: None" or "Safety: Unsafe\\nCategories:
<its category>", the category being the Qwen3Guard name that `safety.qwen3guard_categories` maps to
the fixture's policy code. The prompt is the turn alone as the user message (prompt moderation).

A Qwen2 text model (head_dim 64: vLLM's CPU attention supports no smaller head), so the real vLLM
can serve it (tests/e2e/test_real_vllm.py) as well as `transformers serve` (the smoke recipe's second
judge: two servers in one safety task).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

from ain_testkit.tiny_judge import ROOT, SMOKE_DIR, TRANSLATIONS, VERDICTS, fixture_items, load_verdicts_fixture

STAMP_FILE = "ain_build_stamp.txt"


def guard_answer(verdict: dict, mapping: dict[str, str]) -> str:
    """The Qwen3Guard-format answer for a fixture verdict (policy code -> a Qwen3Guard category that maps to it)."""
    if verdict["rating"] == "Safe":
        return "Safety: Safe\nCategories: None"
    code = verdict["category"].split(":", 1)[0]
    names = [name for name, mapped in mapping.items() if mapped == code]
    if not names:
        raise ValueError(f"no Qwen3Guard category maps to {code} in {mapping}")
    return f"Safety: Unsafe\nCategories: {names[0]}"


def guard_examples(work_dir: Optional[Path] = None) -> list[tuple[list[dict], str]]:
    from ain.curate.config import QWEN3GUARD_TO_POLICY
    from ain.curate.safety import qwen3guard_messages

    _, _, texts = fixture_items(SMOKE_DIR, TRANSLATIONS, work_dir=work_dir)
    table = load_verdicts_fixture(VERDICTS)
    return [(qwen3guard_messages(text), guard_answer(table["texts"].get(text, table["default"]), QWEN3GUARD_TO_POLICY))
            for text in texts]


def build_stamp() -> str:
    h = hashlib.sha256()
    for path in (Path(__file__), ROOT / "lib/ain_testkit/tiny_server.py", ROOT / "lib/ain_testkit/tiny_translator.py",
                 ROOT / "lib/ain/curate/config.py", ROOT / "lib/ain/curate/safety.py", VERDICTS, TRANSLATIONS,
                 *sorted(p for p in SMOKE_DIR.rglob("*") if p.is_file())):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:16]


def ensure_tiny_guard(out_dir: Path | str, force: bool = False) -> Optional[dict]:
    """Build (and stamp) the tiny guard unless an up-to-date one is there; the build report or None."""
    from ain_testkit.tiny_server import build_tiny_chat_model
    from ain_testkit.tiny_translator import memorise

    out = Path(out_dir)
    stamp = build_stamp()
    if not force and (out / STAMP_FILE).is_file() and (out / STAMP_FILE).read_text().strip() == stamp:
        return None
    examples = guard_examples()
    texts = [m[0]["content"] for m, _ in examples] + [a for _, a in examples]
    build_tiny_chat_model(out, texts, seed=0)
    report = memorise(out, examples, max_steps=800)
    if report["exact"] != report["examples"]:
        raise SystemExit(f"tiny guard memorised only {json.dumps(report)}")
    (out / STAMP_FILE).write_text(stamp)
    return report
