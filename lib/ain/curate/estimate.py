"""The dry run's work estimates of the judged curation stages, from ingest's survey of the sources
(ain.data.survey, passed in as `upstream["ingest"]`) and the throughput figures of the config.

    translate  every translatable English turn goes out twice: EN->AR (prompt: to_ar_prompt with
               the turn) and back AR->EN (prompt: to_en_prompt with the Arabic). Tokens are
               counted with the translator's own tokenizer and chat template when it is on this
               machine (a local path, or the hub cache), else at ASSUMED_TOKENS_PER_CHAR. The
               Arabic is not written yet: its tokens are the English ones x
               translate.arabic_tokens_per_english_token. Generation bounds the time:
               GPU-seconds = output tokens / translate.output_tokens_per_gpu_s.
    verify     one LaBSE pair and the overlap metrics per translated turn, re-translation of the
               failures: samples / verify.samples_per_gpu_s.
    safety     every image (references: the unique images are at most this many) on the vision
               judge and every turn, original and translated, on the text judge, each judge on
               its own GPU when the task has two: images / safety.images_per_gpu_s and turns /
               safety.turns_per_gpu_s, the task taking the longer of the two.

Throughput figures are per GPU (per task on a CPU-only test cluster). Their defaults are assumed
orders of magnitude, not measurements (no GPU was lent to this project): the dry run says so, and
a finished task of the same fingerprint replaces the estimate with its measured time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ain.curate.protect import mask
from ain.slurm.cost import WorkEstimate, device_hours

if TYPE_CHECKING:
    from ain.config import RunConfig
    from ain.config_base import Resources

ASSUMED_TOKENS_PER_CHAR = 0.3  # English, Qwen2.5's tokenizer (translate.output_tokens_per_char's note)


def task_devices(resources: "Resources") -> int:
    """GPUs of one task; 1 on a CPU-only cluster (the task itself is the device)."""
    return max(1, resources.nodes * resources.gpus_per_node)


def token_counter(model: str) -> tuple[Callable[[str], int], Callable[[str, str], int], str]:
    """(tokens of a text, tokens of the whole request (template, text) with `text` in `template`, how
    counted). The translator's tokenizer, loaded once, when it loads without the network, else
    characters x the assumed rate."""
    try:
        from transformers import AutoTokenizer  # noqa: PLC0415 - heavy, dry run only

        tok = AutoTokenizer.from_pretrained(model, local_files_only=True)
    except Exception:  # noqa: BLE001 - not on this machine: the assumed rate, said in the output
        def by_chars(text: str) -> int:
            return round(len(text) * ASSUMED_TOKENS_PER_CHAR)

        return by_chars, lambda template, text: by_chars(template.replace("{text}", text)), (
            f"{ASSUMED_TOKENS_PER_CHAR} tokens per character assumed: the tokenizer of {model} is not on this machine")

    def text_tokens(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    def request_tokens(template: str, text: str) -> int:
        content = template.replace("{text}", text)
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                          tokenize=True)
            return len(ids["input_ids"] if isinstance(ids, Mapping) else ids)
        return text_tokens(content)

    return text_tokens, request_tokens, f"counted with the tokenizer of {model}"


def _ingest(upstream: Mapping[str, Any]) -> WorkEstimate:
    ingest = upstream.get("ingest")
    if not isinstance(ingest, WorkEstimate) or "english_texts" not in ingest.carry:
        raise ValueError("needs ingest's survey of the sources (ingest has an estimate hook)")
    return ingest


def _partial(ingest: WorkEstimate, hours: float) -> tuple[str, float | None]:
    """A note and no time when ingest could not count some source: a time without them would be
    an underestimate passed off as a forecast (the cost table shows the time limit instead)."""
    unknown = ingest.carry.get("unknown_sources") or []
    if unknown:
        return f"; PARTIAL: sources not counted: {', '.join(unknown)}", None
    return "", hours


def translation_tokens(cfg: "RunConfig", texts: list[tuple[str, float]]) -> dict[str, Any]:
    """Requests and tokens of translating `texts` ((English turn, weight)) there and back."""
    t = cfg.translate
    ratio = t.arabic_tokens_per_english_token
    count, request, how = token_counter(t.translator.model)
    en_prompt_overhead = request(t.to_en_prompt, "")  # the AR->EN request without its text
    out = {"turns": 0.0, "input": 0.0, "output": 0.0, "how": how}
    for text, weight in texts:
        masked = mask(text)
        if not masked.translatable or len(text) > t.max_chars:
            continue  # copied as it is, or skipped/cut by translate.over_long
        en = count(masked.text)
        ar = en * ratio
        out["turns"] += weight
        out["input"] += weight * (request(t.to_ar_prompt, masked.text) + en_prompt_overhead + ar)
        out["output"] += weight * (ar + en)
    return out


def estimate_translate(cfg: "RunConfig", run_root: Path, upstream: Mapping[str, Any]) -> WorkEstimate:
    ingest = _ingest(upstream)
    t = cfg.translate
    tokens = translation_tokens(cfg, list(ingest.carry["english_texts"]))
    devices = task_devices(t.resources)
    units = (("English samples", ingest.unit("English samples")), ("turns to translate", tokens["turns"]),
             ("requests", 2 * tokens["turns"]), ("input tokens", tokens["input"]), ("output tokens", tokens["output"]))
    note, hours = _partial(ingest, device_hours(tokens["output"], t.output_tokens_per_gpu_s, devices, t.num_tasks))
    return WorkEstimate(
        "translate", units,
        f"ingest's survey; EN->AR and AR->EN, tokens {tokens['how']}; Arabic = English tokens x "
        f"{t.arabic_tokens_per_english_token:g} (translate.arabic_tokens_per_english_token){note}",
        hours, devices,
        f"{t.output_tokens_per_gpu_s:,g} output tokens/s per GPU (translate.output_tokens_per_gpu_s)",
        carry={"turns": tokens["turns"]})


def estimate_verify(cfg: "RunConfig", run_root: Path, upstream: Mapping[str, Any]) -> WorkEstimate:
    ingest = _ingest(upstream)
    v = cfg.verify
    samples = ingest.unit("English samples")
    devices = task_devices(v.resources)
    turns = upstream["translate"].carry["turns"] if "translate" in upstream else ingest.carry["english_turns"]
    note, hours = _partial(ingest, device_hours(samples, v.samples_per_gpu_s, devices, v.num_tasks))
    return WorkEstimate(
        "verify", (("samples", samples), ("turn pairs scored", turns)),
        f"the samples translate writes (all of ingest's English samples, at most){note}", hours, devices,
        f"{v.samples_per_gpu_s:,g} samples/s per GPU (verify.samples_per_gpu_s)")


def estimate_safety(cfg: "RunConfig", run_root: Path, upstream: Mapping[str, Any]) -> WorkEstimate:
    ingest = _ingest(upstream)
    s = cfg.safety
    images = ingest.unit("image references")
    translated = ingest.carry["english_turns"] if "translate" in cfg.stages else 0.0  # all of them, at most
    turns = ingest.unit("turns") + translated
    devices = task_devices(s.resources)
    image_h = device_hours(images, s.images_per_gpu_s, 1, s.num_tasks)
    text_h = device_hours(turns, s.turns_per_gpu_s, 1, s.num_tasks)
    both = max(image_h, text_h) if devices >= 2 else image_h + text_h  # one judge per GPU, or sharing one
    note, hours = _partial(ingest, both)
    return WorkEstimate(
        "safety", (("image references", images), ("text turns", turns)),
        f"ingest's survey (unique images: at most the references), its turns + the translated turns (all, at "
        f"most){note}", hours, devices,
        f"{s.images_per_gpu_s:,g} images/s (safety.images_per_gpu_s) and {s.turns_per_gpu_s:,g} turns/s "
        "(safety.turns_per_gpu_s) per GPU")
