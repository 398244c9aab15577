"""A tiny safety judge for the smoke recipe and tests: one random-init Qwen2-VL (about 0.2M
parameters, fixed seed) that serves both the vision judge and the text judge through
`transformers serve`, trained for seconds on CPU to memorise a verdict for every fixture item:

  - every unique image of tests/fixtures/smoke, asked with the default LlavaGuard vision prompt
    (`ain.curate.safety.default_vision_prompt`) and the image as a `data:` URL;
  - every text turn the text judge can see in the smoke run: English and authentic Arabic turns
    of the fixture samples, and the Arabic the tiny translator produces for the English ones
    (tests/fixtures/translator/translations.json, corrupt entries included), asked with
    `default_text_prompt`.

Verdicts come from tests/fixtures/safety/verdicts.json: listed images and texts get theirs,
everything else the "default" (Safe). Texts the model never saw get whatever it generalises to,
in practice the majority Safe answer; nothing relies on that.

How requests are rendered: exactly as `transformers serve` renders a chat request to a VLM
(OpenAI `image_url` parts become `{"type": "image", "url": ...}`; the processor's chat template
and image processor do the rest), with no system message added by the template.

One trick keeps training to seconds: each static piece of the default policy prompts (the whole
vision prompt; the text prompt before and after `{text}`) is an added token of the tokenizer, so
the 4,000-character policy occupies one position instead of ~900. The server still receives
and renders the full prompt text; only this tokenizer maps it to one id. Any other prompt wording
(safety.vision_prompt / text_prompt) is tokenised normally and gets no memorised answer.

Training stops once teacher-forced argmax reproduces every answer with a margin; then greedy
`generate`, run exactly as the server runs it, must return every answer verbatim, or it trains on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from ain.curate.config import LLAVAGUARD_CATEGORIES
from ain.curate.safety import (
    default_text_prompt,
    default_vision_prompt,
    image_data_url,
    judge_text,
    text_messages,
    vision_messages,
)

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
SMOKE_DIR = ROOT / "tests/fixtures/smoke"
VERDICTS = ROOT / "tests/fixtures/safety/verdicts.json"
TRANSLATIONS = ROOT / "tests/fixtures/translator/translations.json"
DEFAULT_CATEGORIES = ["O1", "O2", "O3", "O4", "O6", "O7", "O8", "O9"]  # SafetyConfig's default

IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD]

# ChatML for text and image parts, no default system message.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'video' %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


# the fixture items -----------------------------------------------------------------------------
def verdict_text(verdict: dict[str, Any]) -> str:
    """The exact answer the judge memorises for a verdict (LlavaGuard's key order)."""
    return json.dumps({"rating": verdict["rating"], "category": verdict["category"],
                       "rationale": verdict["rationale"]}, ensure_ascii=False)


def fixture_items(smoke_dir: Path = SMOKE_DIR, translations: Path = TRANSLATIONS,
                  work_dir: Optional[Path] = None) -> tuple[dict[str, bytes], dict[str, str], list[str]]:
    """(store name -> image bytes, fixture file name -> store name, judge texts in first-seen order)
    of the smoke fixture set, ingested exactly as the ingest stage does it."""
    from ain.curate.config import TranslateConfig
    from ain.curate.protect import MarkerError, unmask
    from ain.curate.translator import Translator, UntranslatableSample
    from ain.data.config import IngestSource
    from ain.data.images import ImageStore
    from ain.data.ingest import prepare_sources, process_row
    from ain.data.readers import iter_rows
    from ain.data.schema import IMAGE_EXTENSIONS

    expected = json.loads((smoke_dir / "expected.json").read_text(encoding="utf-8"))
    sources = prepare_sources([IngestSource(path=str(smoke_dir / s["path"])) for s in expected["sources"]])
    table = json.loads(Path(translations).read_text(encoding="utf-8"))
    pairs, corrupt = table["pairs"], table.get("corrupt", {})
    translator = Translator(client=None, cfg=TranslateConfig())  # only for its masking
    texts: dict[str, None] = {}
    images: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        store = ImageStore(Path(tmp) / "images")
        for src in sources:
            for raw in iter_rows(src.cfg):
                stream, sample, _ = process_row(src, raw, store)
                if stream != "samples":
                    continue
                for name in sample["images"]:
                    images.setdefault(name, store.path_of(name).read_bytes())
                for turn in sample["turns"]:
                    if (text := judge_text(turn["content"])) is not None:
                        texts.setdefault(text, None)
                if sample["language"] != "en":
                    continue
                try:  # what the tiny translator answers for this sample's turns
                    turns = translator.prepare(sample)
                except UntranslatableSample:
                    continue
                for t in turns:
                    if t["copied"] or t["en"] not in pairs:
                        continue
                    try:
                        arabic = unmask(corrupt.get(t["en"], pairs[t["en"]]), tuple(t["spans"]))
                    except MarkerError:
                        continue
                    if (text := judge_text(arabic)) is not None:
                        texts.setdefault(text, None)
    by_file = {}
    for path in sorted((smoke_dir / "images").iterdir()):
        ext = path.suffix.lstrip(".").lower()
        name = f"{hashlib.sha256(path.read_bytes()).hexdigest()}.{'jpg' if ext == 'jpeg' else ext}"
        if ext in IMAGE_EXTENSIONS and name in images:
            by_file[path.name] = name
    return images, by_file, list(texts)


def load_verdicts_fixture(path: Path = VERDICTS) -> dict[str, Any]:
    table = json.loads(Path(path).read_text(encoding="utf-8"))
    for verdict in [table["default"], *table["images"].values(), *table["texts"].values()]:
        code = verdict["category"].split(":", 1)[0]
        assert code == "NA" or code in LLAVAGUARD_CATEGORIES, verdict
    return table


def judge_examples(categories: list[str] = DEFAULT_CATEGORIES, smoke_dir: Path = SMOKE_DIR,
                   verdicts: Path = VERDICTS, translations: Path = TRANSLATIONS
                   ) -> tuple[list[tuple[list[dict], str]], dict[str, Any]]:
    """(OpenAI-format messages, answer) for every fixture image and judge text, and a summary."""
    table = load_verdicts_fixture(verdicts)
    images, by_file, texts = fixture_items(smoke_dir, translations)
    missing = [f for f in table["images"] if f not in by_file]
    if missing:
        raise ValueError(f"{verdicts}: images {missing} are not among the ingested fixture images")
    unsafe_names = {by_file[f]: v for f, v in table["images"].items()}
    vprompt, tprompt = default_vision_prompt(categories), default_text_prompt(categories)
    examples = []
    for name, data in images.items():
        verdict = unsafe_names.get(name, table["default"])
        examples.append((vision_messages(vprompt, image_data_url(name, data)), verdict_text(verdict)))
    for text in texts:
        examples.append((text_messages(tprompt, text), verdict_text(table["texts"].get(text, table["default"]))))
    unknown = [t for t in table["texts"] if t not in texts]
    if unknown:
        raise ValueError(f"{verdicts}: texts {unknown} are not turns the smoke run judges")
    summary = {"images": len(images), "texts": len(texts), "unsafe_images": {f: by_file[f] for f in table["images"]},
               "unsafe_texts": sorted(table["texts"]), "judge_texts": texts}
    return examples, summary


# the model ---------------------------------------------------------------------------------------
def prompt_pieces(categories: list[str]) -> list[str]:
    """The static text of the default prompts, each to become one added token."""
    before, after = default_text_prompt(categories).split("{text}")
    return [default_vision_prompt(categories), before, after]


def build_tokenizer(texts: list[str], pieces: list[str], vocab_size: int = 1024):
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(list(texts) + ["system\nuser\nassistant\n"] * 4, trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    # Contiguous ids for the learned tokens; the special tokens are appended after them.
    learned = sorted((v, k) for k, v in model["vocab"].items() if k not in SPECIAL_TOKENS)
    vocab = {k: i for i, (_, k) in enumerate(learned)}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token=IM_END,
                         pad_token=ENDOFTEXT, additional_special_tokens=SPECIAL_TOKENS[1:],
                         model_max_length=4096)
    tok.add_tokens([AddedToken(p, special=False, normalized=False, lstrip=False, rstrip=False,
                               single_word=False) for p in pieces])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_model_dir(out: Path, texts: list[str], pieces: list[str], seed: int = 0) -> None:
    """Random-init Qwen2-VL, its processor and tokenizer, written to `out`."""
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tok = build_tokenizer(texts, pieces)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = Qwen2VLConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                     "bos_token_id": None, "eos_token_id": ids[IM_END], "pad_token_id": ids[ENDOFTEXT],
                     "tie_word_embeddings": False},
        vision_config={"depth": 1, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2,
                       "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3},
        image_token_id=ids[IMAGE_PAD], video_token_id=ids[VIDEO_PAD], vision_start_token_id=ids[VISION_START],
        vision_end_token_id=ids[VISION_END], tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=ids[IM_END], pad_token_id=ids[ENDOFTEXT])
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).to(torch.float32)
    model.generation_config = GenerationConfig(eos_token_id=ids[IM_END], pad_token_id=ids[ENDOFTEXT],
                                               bos_token_id=None)
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112),
        tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(min_pixels=56 * 56, max_pixels=112 * 112),
        chat_template=CHAT_TEMPLATE)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)


def server_messages(messages: list[dict]) -> list[dict]:
    """OpenAI messages as `transformers serve` hands them to a VLM processor: its own
    `get_processor_inputs_from_messages` when importable, else the same rules for text and
    image_url parts (`_server_messages_fallback`)."""
    try:
        from transformers.cli.serving.utils import BaseHandler, Modality
    except ImportError:  # transformers without the [serving] extra
        return _server_messages_fallback(messages)
    return BaseHandler.get_processor_inputs_from_messages(messages, Modality.VLM)


def _server_messages_fallback(messages: list[dict]) -> list[dict]:
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        parts = []
        for part in content:
            if part["type"] == "text":
                parts.append({"type": "text", "text": part["text"]})
            elif part["type"] == "image_url":
                url = part["image_url"]
                parts.append({"type": "image", "url": url["url"] if isinstance(url, dict) else url})
        out.append({"role": message["role"], "content": parts})
    return out


def _encode(processor, messages: list[dict]) -> dict:
    return processor.apply_chat_template(server_messages(messages), add_generation_prompt=True, tokenize=True,
                                         return_dict=True, return_tensors="pt")


def _batch(encoded: list[dict], answers: list[list[int]], pad: int, indices: list[int]) -> dict:
    """Right-padded batch of prompt+answer rows; labels on the answer only."""
    import torch

    rows, labels, mm = [], [], []
    pixel, grids = [], []
    for i in indices:
        enc = encoded[i]
        prompt = enc["input_ids"][0].tolist()
        rows.append(prompt + answers[i])
        labels.append([-100] * len(prompt) + answers[i])
        mm_prompt = enc["mm_token_type_ids"][0].tolist() if "mm_token_type_ids" in enc else [0] * len(prompt)
        mm.append(mm_prompt + [0] * len(answers[i]))
        if "pixel_values" in enc:
            pixel.append(enc["pixel_values"])
            grids.append(enc["image_grid_thw"])
    width = max(map(len, rows))
    batch = {"input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows]),
             "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
             "labels": torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels]),
             "mm_token_type_ids": torch.tensor([m + [0] * (width - len(m)) for m in mm])}
    if pixel:
        batch["pixel_values"] = torch.cat(pixel)
        batch["image_grid_thw"] = torch.cat(grids)
    return batch


def _teacher_forced_ok(model, batch: dict, margin: float) -> tuple[int, int]:
    """(rows whose every answer token is the argmax with `margin`, rows)."""
    import torch

    model.eval()
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    top2 = logits.topk(2, dim=-1)
    target = logits.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    best_other = torch.where(top2.indices[..., 0] == labels.clamp(min=0), top2.values[..., 1], top2.values[..., 0])
    good = (target - best_other > margin) | ~mask
    return int(good.all(dim=1).sum()), labels.shape[0]


def _generate_exact(model, processor, encoded: list[dict], answers: list[str], end: int) -> list[int]:
    """Indices whose greedy answer (generated as the server does) is not exactly the answer."""
    import torch

    model.eval()
    wrong = []
    with torch.no_grad():
        for i, (enc, answer) in enumerate(zip(encoded, answers)):
            n = len(processor.tokenizer(answer, add_special_tokens=False)["input_ids"]) + 2
            out = model.generate(**enc, max_new_tokens=n, do_sample=False, eos_token_id=end, pad_token_id=end)
            text = processor.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            if text != answer:
                wrong.append(i)
    return wrong


def memorise(model_dir: Path, examples: list[tuple[list[dict], str]], max_steps: int = 1500, lr: float = 5e-3,
             check_every: int = 25, margin: float = 0.5, seed: int = 0, time_limit_s: float = 600.0) -> dict:
    """Train the model in `model_dir` until the server-style greedy answer of every example is
    exact; save in place. Full batch, AdamW, loss on the answers and their end token."""
    import torch
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    processor = AutoProcessor.from_pretrained(model_dir)
    tok = processor.tokenizer
    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    end, pad = tok.convert_tokens_to_ids(IM_END), tok.convert_tokens_to_ids(ENDOFTEXT)
    encoded = [_encode(processor, m) for m, _ in examples]
    answers = [tok(a, add_special_tokens=False)["input_ids"] + [end] for _, a in examples]
    vision = [i for i, e in enumerate(encoded) if "pixel_values" in e]
    text = [i for i, e in enumerate(encoded) if "pixel_values" not in e]
    batches = [_batch(encoded, answers, pad, part) for part in (vision, text) if part]
    optim = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    start = time.time()
    step, ok, wrong, loss = 0, 0, list(range(len(examples))), torch.tensor(float("nan"))
    for step in range(1, max_steps + 1):
        model.train()
        total = 0.0
        for batch in batches:
            loss = model(**batch).loss * (batch["input_ids"].shape[0] / len(examples))
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        optim.zero_grad()
        if step % check_every == 0 or step == max_steps:
            ok = sum(_teacher_forced_ok(model, b, margin)[0] for b in batches)
            log.info("tiny judge step %d loss %.4f teacher-forced %d/%d (%.0fs)", step, total, ok, len(examples),
                     time.time() - start)
            if ok == len(examples):
                wrong = _generate_exact(model, processor, encoded, [a for _, a in examples], end)
                log.info("tiny judge step %d: greedy generation exact for %d/%d", step, len(examples) - len(wrong),
                         len(examples))
                if not wrong:
                    break
            if time.time() - start > time_limit_s:
                break
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    return {"steps": step, "loss": float(total), "teacher_forced_exact": ok, "exact": len(examples) - len(wrong),
            "examples": len(examples), "vision_examples": len(vision), "text_examples": len(text),
            "wrong": [examples[i][1] for i in wrong][:5], "seconds": round(time.time() - start, 1)}


STAMP_FILE = "ain_build_stamp.txt"


def build_stamp(categories: list[str] = DEFAULT_CATEGORIES, seed: int = 0, *, smoke_dir: Path = SMOKE_DIR,
                verdicts: Path = VERDICTS, translations: Path = TRANSLATIONS) -> str:
    """Hash of everything the judge's weights depend on: this file and safety.py (prompts, how
    turns become judge texts), the verdicts, the translation table and the fixture sources."""
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    h.update((ROOT / "lib/ain/curate/safety.py").read_bytes())
    h.update(default_vision_prompt(categories).encode())
    h.update(default_text_prompt(categories).encode())
    h.update(f"{categories}|{seed}".encode())
    for path in [Path(verdicts), Path(translations), smoke_dir / "expected.json",
                 *sorted(p for p in smoke_dir.iterdir() if p.is_file()),
                 *sorted((smoke_dir / "images").iterdir())]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def stamp_matches(out_dir: Path | str, categories: list[str] = DEFAULT_CATEGORIES, seed: int = 0) -> bool:
    stamp = Path(out_dir) / STAMP_FILE
    return stamp.is_file() and stamp.read_text().strip() == build_stamp(categories, seed)


def ensure_tiny_judge(out_dir: Path | str, force: bool = False, categories: list[str] = DEFAULT_CATEGORIES,
                      seed: int = 0) -> Optional[dict]:
    """Build the judge unless `out_dir` holds one with a matching stamp; the stats, or None
    when the existing one was kept."""
    if not force and stamp_matches(out_dir, categories, seed):
        return None
    stats = build_tiny_judge(out_dir, categories, seed)
    (Path(out_dir) / STAMP_FILE).write_text(build_stamp(categories, seed))
    return stats


def build_tiny_judge(out_dir: Path | str, categories: list[str] = DEFAULT_CATEGORIES, seed: int = 0, *,
                     smoke_dir: Path = SMOKE_DIR, verdicts: Path = VERDICTS, translations: Path = TRANSLATIONS,
                     max_steps: int = 1500) -> dict:
    """Build, train and verify the tiny judge in `out_dir`; return its stats. Raises RuntimeError
    when some answer is not memorised exactly. Takes about 45 s on one CPU core."""
    start = time.time()
    out = Path(out_dir)
    (out / STAMP_FILE).unlink(missing_ok=True)  # a half-rebuilt directory must not look current
    examples, summary = judge_examples(categories, smoke_dir, verdicts, translations)
    pieces = prompt_pieces(categories)
    answers = sorted({a for _, a in examples})
    build_model_dir(out, summary["judge_texts"] + answers * 20, pieces, seed=seed)
    stats = memorise(out, examples, max_steps=max_steps, seed=seed)
    stats.update(summary)
    stats["build_seconds"] = round(time.time() - start, 1)
    if stats["exact"] != stats["examples"]:
        raise RuntimeError(f"tiny judge memorised only {stats['exact']}/{stats['examples']}: {stats}")
    stats.pop("judge_texts")
    return stats
