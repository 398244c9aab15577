"""The safety stage: LlavaGuard-policy screening of every unique image and every text turn
(REFERENCE.md §2), as in the AIN report.

Inputs, in a fixed order: the ingest stage's `samples-*.jsonl` (English and authentic Arabic),
then, when "verify" is in the recipe, the verify stage's `passed-*.jsonl` (translated Arabic).
Both upstream stages must be complete.

Work units, each judged once across the whole array:
  - an image, by content hash: its store name is `<sha256>.<ext>`, and image `name` belongs to
    task `int(name[:8], 16) % num_tasks`; the first sample that names it (in input order) puts
    it in that task's unit stream, later samples that name it again do not;
  - a text turn, by sample: the g-th sample of the input order (g counted over both inputs)
    belongs to task `g % num_tasks`, and each of its turns with at least one letter (after the
    `<image>` placeholders are removed) is one unit: English and Arabic alike, any role.
Within a task the units come in input order (a sample's new images, then its turns), so a
restarted task skips exactly `position` units. Every `commit_every` units the window's answers
are committed atomically to:

    images-<i>.jsonl   {"image", "rating", "category", "code", "rationale", "judge": "vision",
                        "status": "judged"|"unjudged", "raw"?, "error"?}
    texts-<i>.jsonl    {"sample_id", "turn", "role", "language", "rating", "category", "code",
                        "rationale", "status", "raw"?, "error"?}

Judging: the vision judge gets the LlavaGuard policy prompt (`safety.vision_prompt`, or
`default_vision_prompt(categories)`) with the image as an OpenAI `image_url` part holding a
`data:` URL; the text judge gets `safety.text_prompt` (or `default_text_prompt(categories)`)
with the turn in place of `{text}`. Both ask for LlavaGuard's JSON
{"rating": "Safe"|"Unsafe", "category": "<code>: <name>"|"NA: None applying", "rationale"}, send
it as `json_schema` (vLLM enforces it) and validate it client-side (ChatClient, then
`interpret`):
  - the category must name a LlavaGuard category (O1..O9) or NA, by code; anything else is
    an invalid answer, retried by the client;
  - "Unsafe" counts only when its category is one of `safety.categories`: an Unsafe answer
    naming an unscreened category (the report does not screen O5 Criminal Planning) is recorded
    as "Safe" with `reported_rating`/`reported_category` kept and counted as
    `unscreened_unsafe`;
  - "Unsafe" with "NA" is contradictory: the item is recorded "unjudged" with the raw answer;
  - an answer still invalid after the client's retries (`InvalidAnswer`), or a request the
    server rejects (4xx), leaves the item "unjudged" with the raw texts / error recorded. An
    unjudged item is never counted as safe: the mix stage applies `safety.unjudged_policy`
    (`sample_safety`). An endpoint that stays unavailable fails the task (it resumes later).

Endpoints: when the two judges have the same model and server config, one endpoint (named
"vision_judge") serves both; otherwise each gets its own ("vision_judge", "text_judge": the
names the launcher's shared-server mode uses).

Counters of the done marker: images_judged, images_unsafe, images_unjudged, texts_judged,
texts_unsafe, texts_unjudged, unsafe_<code> (images and texts together), unscreened_unsafe,
images_rejected / texts_rejected (the unjudged ones the server refused).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import re
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from ain.atomic import iter_jsonl
from ain.curate.config import LLAVAGUARD_CATEGORIES, SafetyConfig
from ain.curate.llavaguard_policy import POLICY_V1
from ain.serve.client import ChatClient, InvalidAnswer, RequestRejected, ResponseCache
from ain.stages import TaskContext, windows

SAFE, UNSAFE = "Safe", "Unsafe"
NA_CODE = "NA"
NA_CATEGORY = "NA: None applying"
JUDGED, UNJUDGED = "judged", "unjudged"

IMAGE_PLACEHOLDER = "<image>"
_CODE_RE = re.compile(r"^\s*(O[1-9]|NA)\s*(?::|$)")
_MIME = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp",
         "gif": "image/gif", "bmp": "image/bmp", "tiff": "image/tiff"}

# What each category forbids and allows, in the structure of LlavaGuard's policy (v1.2): a
# "Should not" list and a "Can" list per category. Paraphrased; put LlavaGuard's exact text in
# `safety.vision_prompt` when the judge is LlavaGuard itself (it was trained on that wording).
CATEGORY_GUIDELINES: dict[str, tuple[list[str], list[str]]] = {
    "O1": (["Contain content that expresses hatred, contempt or demeaning views about people because of "
            "sensitive personal characteristics such as race, colour, religion, national origin, sexual "
            "orientation, gender, gender identity or disability.",
            "Contain content that encourages discrimination, bullying or harassment of people because of "
            "those characteristics."],
           ["Contain educational content that informs about discrimination, humiliation and harassment.",
            "Discuss historical events that involved hate or harassment."]),
    "O2": (["Contain content of people planning or carrying out violence.",
            "Contain content that encourages violence or cruelty, including harming others."],
           ["Contain educational content that informs about violence, harm and cruelty.",
            "Discuss historical events that involved violence or cruelty."]),
    "O3": (["Contain sexually explicit (erotic) content."],
           ["Contain content related to sexuality and sexual education.",
            "Give general information about sexual activities or guidance on sexual health.",
            "Show people in a loving and affectionate way when it is not sexually explicit."]),
    "O4": (["Contain visible genitalia or other explicit nudity."],
           ["Contain artistic nudity without visible genitalia.",
            "Contain educational content and general information about the human body.",
            "Give guidance on topics related to sexual health."]),
    "O5": (["Contain content of people planning or committing crimes such as theft, kidnapping or "
            "financial crimes.",
            "Contain content that encourages criminal activity or condones criminal behaviour."],
           ["Help people understand how crimes are committed, without detail that could serve as a "
            "roadmap for committing them.",
            "Educate about crime prevention and criminal behaviour without guiding criminal activity."]),
    "O6": (["Contain content of illegal weapons meant to promote violence or harm.",
            "Contain content of the trafficking, consumption or use of illegal drugs.",
            "Promote the use of tobacco, alcohol or cannabis.",
            "Contain content about creating or producing illegal substances."],
           ["Show weapons in a legal and safe context with no sign of violence or intent to harm.",
            "Discuss firearm ownership, or educate about regulated substances, without promoting "
            "illegal activity.",
            "Give factual information about legal drugs, their effects and composition, without "
            "promoting their use."]),
    "O7": (["Contain content that could encourage people to harm themselves.",
            "Contain content that romanticises or condones self-harm or suicide."],
           ["Contain educational content about the prevalence, causes and effects of self-harm and "
            "suicide, such as statistics and discussions of mental health.",
            "Contain resources that guide people towards professional help and support services."]),
    "O8": (["Contain content that could encourage people to harm animals.",
            "Contain content that romanticises or condones harming animals.",
            "Contain explicit animal cruelty."],
           ["Contain content that gives general information about animal cruelty."]),
    "O9": (["Contain content about people who died or were harmed in disasters or emergencies.",
            "Contain content about the suffering, cruelty or exploitation of people during such events."],
           ["Contain respectful news coverage and reports on emergencies that put information before "
            "sensationalism.",
            "Contain educational content with factual information about past and current disasters or "
            "emergencies."]),
}


class VerdictError(ValueError):
    """A schema-valid answer that still cannot be a verdict (e.g. Unsafe without a category)."""


# prompts -----------------------------------------------------------------------------------------
def category_label(code: str) -> str:
    """"O2" -> "O2: Violence, Harm, or Cruelty"; "NA" -> "NA: None applying"."""
    return NA_CATEGORY if code == NA_CODE else f"{code}: {LLAVAGUARD_CATEGORIES[code]}"


def _policy_block(categories: list[str]) -> str:
    blocks = []
    for code in categories:
        should_not, can = CATEGORY_GUIDELINES[code]
        lines = [f"{category_label(code)}:", "Should not:", *(f"- {x}" for x in should_not), "Can:",
                 *(f"- {x}" for x in can)]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _answer_template(categories: list[str], what: str) -> str:
    options = "|".join(f'"{category_label(c)}"' for c in [*categories, NA_CODE])
    return ("Assessment Steps:\n"
            f'1. Select a safety "rating". This should be "Unsafe" if the {what} violates the safety policy; '
            'otherwise, it should be "Safe".\n'
            f'2. Assign a policy "category". If none of the policy categories are applicable, select "{NA_CATEGORY}".\n'
            f'3. Provide a "rationale". Describe the {what} and explain why it is safe or unsafe, referring to '
            "the policy category and its guidelines.\n"
            "To provide your assessment use the following json template:\n"
            "{\n"
            '    "rating": str<"Unsafe"|"Safe">,\n'
            f'    "category": str<{options}>,\n'
            '    "rationale": str,\n'
            "}")


def _check_categories(categories: list[str]) -> list[str]:
    unknown = [c for c in categories if c not in LLAVAGUARD_CATEGORIES]
    if unknown or not categories:
        raise ValueError(f"categories {list(categories)}: each must be one of {sorted(LLAVAGUARD_CATEGORIES)}")
    return list(categories)


def default_vision_prompt(categories: list[str]) -> str:
    """LlavaGuard's own policy text, word for word (ain.curate.llavaguard_policy): the model was
    trained on it. All nine categories are asked; `categories` decides which verdicts count."""
    _check_categories(categories)
    return POLICY_V1


def default_text_prompt(categories: list[str]) -> str:
    """The same policy for one text turn (English or Arabic); `{text}` is replaced by the turn."""
    categories = _check_categories(categories)
    return ("Provide a safety assessment for the text provided by the user, which may be written in English "
            "or Arabic. Determine compliance or violation against our safety policy by reviewing the "
            "following policy categories:\n"
            f"{_policy_block(categories)}\n\n"
            "<BEGIN TEXT>\n{text}\n<END TEXT>\n\n"
            f"{_answer_template(categories, 'text')}\n")


# Qwen3Guard-Gen (QwenLM/Qwen3Guard README @ 6a52eca): its chat template carries its own policy;
# it answers "Safety: Safe|Unsafe|Controversial" then "Categories: ..."; these are the README's
# parsing patterns (prompt moderation, PII included since 920950b).
QWEN3GUARD_SAFETY = re.compile(r"Safety: (Safe|Unsafe|Controversial)")
QWEN3GUARD_CATEGORY = re.compile(r"(Violent|Non-violent Illegal Acts|Sexual Content or Sexual Acts|PII|Suicide & Self-Harm|"
                                 r"Unethical Acts|Politically Sensitive Topics|Copyright Violation|Jailbreak|None)")


def interpret_qwen3guard(text: str, mapping: dict[str, str], controversial: str, categories: list[str]) -> dict[str, Any]:
    """A Qwen3Guard-Gen answer -> the same verdict row as a LlavaGuard one. Its categories map onto
    policy codes through `safety.qwen3guard_categories`; Controversial counts as `safety.controversial`
    (unsafe: Qwen's own eval_gen.py, strict). An unsafe verdict whose categories map to no screened
    code is kept as reported (rating Safe, reported_rating/category), like an unscreened LlavaGuard
    category. Raises VerdictError when there is no "Safety:" line."""
    m = QWEN3GUARD_SAFETY.search(text)
    if m is None:
        raise VerdictError(f"no 'Safety: Safe|Unsafe|Controversial' line in {text[:200]!r}")
    label = m.group(1)
    found = [c for c in QWEN3GUARD_CATEGORY.findall(text[m.end():]) if c != "None"]
    verdict = {"rating": SAFE, "category": NA_CATEGORY, "code": NA_CODE, "rationale": text.strip(),
               "judge_label": label, "judge_categories": found}
    if label == SAFE or (label == "Controversial" and controversial == "safe"):
        if label != SAFE:
            verdict.update(reported_rating=label, reported_category=", ".join(found) or "None")
        return verdict
    codes = [mapping[c] for c in found if c in mapping]
    screened = [c for c in codes if c in categories]
    if screened:
        return {**verdict, "rating": UNSAFE, "code": screened[0], "category": category_label(screened[0])}
    verdict.update(reported_rating=UNSAFE, reported_category=", ".join(found) or "None")
    return verdict


def vision_prompt(cfg: SafetyConfig) -> str:
    return cfg.vision_prompt or default_vision_prompt(cfg.categories)


def text_prompt(cfg: SafetyConfig) -> str:
    return cfg.text_prompt or default_text_prompt(cfg.categories)


def verdict_schema() -> dict[str, Any]:
    """JSON schema of a LlavaGuard answer (vLLM enforces it; the client validates it). The
    category must start with a LlavaGuard code (O1..O9) or NA."""
    return {"title": "llavaguard_assessment", "type": "object",
            "properties": {"rating": {"type": "string", "enum": [SAFE, UNSAFE]},
                           "category": {"type": "string", "pattern": r"^\s*(O[1-9]|NA)\s*(:.*)?$"},
                           "rationale": {"type": "string"}},
            "required": ["rating", "category"]}


def image_data_url(name: str, data: bytes) -> str:
    ext = name.rsplit(".", 1)[-1].lower()
    return f"data:{_MIME.get(ext, 'image/' + ext)};base64,{base64.b64encode(data).decode('ascii')}"


def vision_messages(prompt: str, data_url: str) -> list[dict[str, Any]]:
    """One user message: the image first, then the policy (LlavaGuard's order)."""
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url}},
                                         {"type": "text", "text": prompt}]}]


def text_messages(prompt: str, text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt.replace("{text}", text)}]


def qwen3guard_messages(text: str) -> list[dict[str, Any]]:
    """Prompt moderation as Qwen3Guard-Gen is called: the text alone as the user turn (its chat
    template wraps it in its policy); no system message, no policy of ours."""
    return [{"role": "user", "content": text}]


def judge_text(content: str) -> Optional[str]:
    """What the text judge sees of a turn: the text without `<image>` placeholders, stripped;
    None when no letter is left (nothing to judge: "<image>", "42", "?")."""
    text = content.replace(IMAGE_PLACEHOLDER, "").strip()
    return text if any(ch.isalpha() for ch in text) else None


# answers -----------------------------------------------------------------------------------------
def category_code(category: Any) -> Optional[str]:
    """"O2: Violence, ..." / "O2" / "NA: None applying" -> "O2" / "NA"; None when no code."""
    if not isinstance(category, str):
        return None
    m = _CODE_RE.match(category)
    return m.group(1) if m and (m.group(1) == NA_CODE or m.group(1) in LLAVAGUARD_CATEGORIES) else None


def interpret(parsed: Any, categories: list[str]) -> dict[str, Any]:
    """A validated answer -> {"rating", "category", "code", "rationale"} under the screened
    `categories`. Raises VerdictError when no verdict can be drawn from it."""
    if not isinstance(parsed, dict) or parsed.get("rating") not in (SAFE, UNSAFE):
        raise VerdictError(f"rating must be {SAFE!r} or {UNSAFE!r}: {parsed!r:.200}")
    code = category_code(parsed.get("category"))
    if code is None:
        raise VerdictError(f"category {parsed.get('category')!r:.100} is neither a LlavaGuard category nor NA")
    rationale = parsed.get("rationale")
    verdict = {"rating": parsed["rating"], "category": category_label(code), "code": code,
               "rationale": rationale if isinstance(rationale, str) else ""}
    if parsed["rating"] == UNSAFE:
        if code == NA_CODE:
            raise VerdictError("rated Unsafe with category NA (no category applying)")
        if code not in categories:  # not screened by this recipe: counts as safe, but stays visible
            verdict.update(rating=SAFE, reported_rating=UNSAFE, reported_category=verdict["category"])
    return verdict


# work units --------------------------------------------------------------------------------------
def image_task(name: str, num_tasks: int) -> int:
    """The task that judges image `name` (`<sha256>.<ext>`): by content hash."""
    return int(name[:8], 16) % num_tasks


def input_files(run, cfg) -> list[Path]:
    """The stage's inputs in their fixed order: ingest's samples, then (when the recipe has
    verify) the translated samples that passed. Each upstream stage must be complete."""
    files: list[Path] = []
    for stage, pattern in (("ingest", "samples-*.jsonl"), ("verify", "passed-*.jsonl")):
        if stage != "ingest" and stage not in cfg.stages:
            continue
        paths = run.stage(stage)
        expected = getattr(cfg, stage).num_tasks
        if len(paths.done_indices()) < expected:
            raise RuntimeError(f"stage safety needs {stage} to be complete: "
                               f"{len(paths.done_indices())}/{expected} tasks done in {paths.done}")
        files += sorted(paths.out.glob(pattern))
    return files


def iter_units(samples: Iterator[dict[str, Any]], index: int, num_tasks: int) -> Iterator[dict[str, Any]]:
    """This task's units in their fixed order: {"kind": "image", "image"} or {"kind": "text",
    "sample_id", "turn", "role", "language", "text"}."""
    seen: set[str] = set()  # only this task's images: memory is 1/num_tasks of all names
    for g, sample in enumerate(samples):
        for name in sample.get("images", []):
            if image_task(name, num_tasks) == index and name not in seen:
                seen.add(name)
                yield {"kind": "image", "image": name}
        if g % num_tasks != index:
            continue
        for t, turn in enumerate(sample.get("turns", [])):
            text = judge_text(turn.get("content") or "")
            if text is not None:
                yield {"kind": "text", "sample_id": sample["id"], "turn": t, "role": turn.get("role"),
                       "language": sample.get("language"), "text": text}


# the stage ---------------------------------------------------------------------------------------
def same_endpoint(cfg: SafetyConfig) -> bool:
    """One server for both judges: same model and same server config (as the launcher decides)."""
    return cfg.judges_share_endpoint()


@contextlib.contextmanager
def open_endpoints(ctx: TaskContext) -> Iterator[tuple[Any, Any]]:
    """(vision endpoint, text endpoint): one started (or found) endpoint when the judges share it."""
    from ain.serve.placement import plan_gpus, visible_gpus  # noqa: PLC0415
    from ain.serve.server import endpoint  # noqa: PLC0415

    cfg = ctx.cfg.safety
    # two different judges: two servers, each on its own GPUs (ain.serve.placement)
    plan = plan_gpus({"vision_judge": cfg.vision_judge, "text_judge": cfg.text_judge}, visible_gpus())
    with contextlib.ExitStack() as stack:
        vision = stack.enter_context(endpoint(cfg.vision_judge, ctx.run.root, "vision_judge", ctx.paths.logs,
                                              devices=plan.get("vision_judge")))
        if same_endpoint(cfg):
            text = vision
        else:
            text = stack.enter_context(endpoint(cfg.text_judge, ctx.run.root, "text_judge", ctx.paths.logs,
                                                devices=plan.get("text_judge")))
        yield vision, text


class Judges:
    """The two clients and the prompts; turns units into verdict rows."""

    def __init__(self, ctx: TaskContext, vision_ep, text_ep, cache: ResponseCache) -> None:
        cfg = ctx.cfg.safety
        self.cfg = cfg
        self.images_dir = ctx.run.stage("ingest").out / "images"
        self.vision = ChatClient.from_judge(cfg.vision_judge, vision_ep, cache=cache)
        self.text = ChatClient.from_judge(cfg.text_judge, text_ep, cache=cache)
        self.vision_prompt = vision_prompt(cfg)
        self.text_prompt = text_prompt(cfg)
        self.schema = verdict_schema()

    async def aclose(self) -> None:
        await self.vision.aclose()
        await self.text.aclose()

    async def judge_image(self, name: str) -> dict[str, Any]:
        path = self.images_dir / name[:2] / name
        data = await asyncio.to_thread(path.read_bytes)  # missing: the run is damaged, fail loudly
        messages = vision_messages(self.vision_prompt, image_data_url(name, data))
        return {"image": name, "judge": "vision", **await self._ask(self.vision, messages)}

    async def judge_text(self, text: str) -> dict[str, Any]:
        if self.cfg.text_judge_format == "qwen3guard":
            return await self._ask_qwen3guard(text)
        return await self._ask(self.text, text_messages(self.text_prompt, text))

    async def _ask_qwen3guard(self, text: str) -> dict[str, Any]:
        try:
            result = await self.text.chat(qwen3guard_messages(text))
        except RequestRejected as exc:
            return unjudged(raw=[], error=str(exc)[:1000], rejected=True)
        try:
            verdict = interpret_qwen3guard(result.text, self.cfg.qwen3guard_categories, self.cfg.controversial,
                                           self.cfg.categories)
        except VerdictError as exc:
            return unjudged(raw=[result.text], error=str(exc))
        return {**verdict, "status": JUDGED}

    async def _ask(self, client: ChatClient, messages: list[dict]) -> dict[str, Any]:
        try:
            result = await client.chat(messages, json_schema=self.schema)
        except InvalidAnswer as exc:
            return unjudged(raw=exc.texts, error="; ".join(exc.errors)[-1000:])
        except RequestRejected as exc:
            return unjudged(raw=[], error=str(exc)[:1000], rejected=True)
        try:
            return {**interpret(result.parsed, self.cfg.categories), "status": JUDGED}
        except VerdictError as exc:
            return unjudged(raw=[result.text], error=str(exc))


def unjudged(raw: list[str], error: str, rejected: bool = False) -> dict[str, Any]:
    row = {"rating": None, "category": None, "code": None, "rationale": None, "status": UNJUDGED,
           "raw": raw, "error": error}
    if rejected:
        row["rejected"] = True
    return row


def count(out, kind: str, row: dict[str, Any]) -> None:
    """kind: "images" or "texts"."""
    if row["status"] == UNJUDGED:
        out.count(f"{kind}_unjudged")
        if row.get("rejected"):
            out.count(f"{kind}_rejected")
        return
    out.count(f"{kind}_judged")
    if row["rating"] == UNSAFE:
        out.count(f"{kind}_unsafe")
        out.count(f"unsafe_{row['code']}")
    elif row.get("reported_rating") == UNSAFE:
        out.count("unscreened_unsafe")


def run_safety_task(ctx: TaskContext) -> dict[str, Any]:
    out = ctx.resumable_outputs(images=f"images-{ctx.index:05d}.jsonl", texts=f"texts-{ctx.index:05d}.jsonl")
    rows = itertools.chain.from_iterable(iter_jsonl(path) for path in input_files(ctx.run, ctx.cfg))
    units = iter_units(rows, ctx.index, ctx.num_tasks)
    for _ in range(out.position):  # consumed before a restart
        next(units)
    start = time.time()
    try:
        first = next(units, None)
        if first is not None:  # no endpoint at all when nothing is left to judge
            remaining = _chain(first, units)
            with open_endpoints(ctx) as (vision_ep, text_ep):
                asyncio.run(_judge_all(ctx, vision_ep, text_ep, remaining, out))
        for key in ("images_judged", "images_unsafe", "images_unjudged", "texts_judged", "texts_unsafe",
                    "texts_unjudged"):
            out.counters.setdefault(key, 0)
        out.commit(out.position)
        files = out.finish()
    finally:
        out.close()
    done = out.position - out.resumed_from
    seconds = time.time() - start
    ctx.log.info("safety task %d: %d units in %.1fs (%.2f units/s): %s", ctx.index, done, seconds,
                 done / max(seconds, 1e-9), dict(sorted(out.counters.items())))
    return {"items": out.position, "resumed_from": out.resumed_from, "files": files, **out.counters}


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


async def _judge_all(ctx: TaskContext, vision_ep, text_ep, units: Iterator[dict[str, Any]], out) -> None:
    cache = ResponseCache(ctx.paths.state / f"responses-{ctx.index:05d}.jsonl")
    judges = Judges(ctx, vision_ep, text_ep, cache)
    try:
        position = out.position
        for window in windows(units, ctx.cfg.safety.commit_every):
            t0 = time.time()
            # Identical texts in one window (a question repeated across samples): one request.
            texts = list(dict.fromkeys(u["text"] for u in window if u["kind"] == "text"))
            images = [u["image"] for u in window if u["kind"] == "image"]
            answers = await asyncio.gather(*(judges.judge_image(n) for n in images),
                                           *(judges.judge_text(t) for t in texts))
            by_image = dict(zip(images, answers[:len(images)]))
            by_text = dict(zip(texts, answers[len(images):]))
            for unit in window:
                if unit["kind"] == "image":
                    row = by_image[unit["image"]]
                    out.write("images", row)
                    count(out, "images", row)
                else:
                    row = {"sample_id": unit["sample_id"], "turn": unit["turn"], "role": unit["role"],
                           "language": unit["language"], **by_text[unit["text"]]}
                    out.write("texts", row)
                    count(out, "texts", row)
            position += len(window)
            out.commit(position)
            ctx.log.info("safety task %d: %d units committed (%.2f units/s in this window)", ctx.index, position,
                         len(window) / max(time.time() - t0, 1e-9))
    finally:
        await judges.aclose()
        cache.close()


# for the mix stage -------------------------------------------------------------------------------
def load_verdicts(run) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, int], dict[str, Any]]]:
    """(image name -> verdict row, (sample_id, turn) -> verdict row) from a complete safety stage."""
    cfg = run.load_config()
    paths = run.stage("safety")
    if len(paths.done_indices()) < cfg.safety.num_tasks:
        raise RuntimeError(f"the safety stage is not complete: {len(paths.done_indices())}/"
                           f"{cfg.safety.num_tasks} tasks done in {paths.done}")
    images: dict[str, dict[str, Any]] = {}
    texts: dict[tuple[str, int], dict[str, Any]] = {}
    for path in sorted(paths.out.glob("images-*.jsonl")):
        for row in iter_jsonl(path):
            images[row["image"]] = row
    for path in sorted(paths.out.glob("texts-*.jsonl")):
        for row in iter_jsonl(path):
            texts[(row["sample_id"], row["turn"])] = row
    return images, texts


def sample_safety(sample: dict[str, Any], image_verdicts: dict[str, dict[str, Any]],
                  text_verdicts: dict[tuple[str, int], dict[str, Any]], policy: str = "drop"
                  ) -> tuple[bool, Optional[str], Optional[str]]:
    """(keep, reason, category code) for one sample: dropped when an image or a turn is Unsafe
    (reason "unsafe_image" / "unsafe_text", category its LlavaGuard code; images are checked
    first, then turns in order); else, when something is unjudged (or missing: an image or a
    turn with letters that has no verdict) and `policy` is "drop", dropped with reason
    "unjudged". With policy "keep" an unjudged sample is kept and its reason still reported:
    (True, "unjudged", None)."""
    if policy not in ("drop", "keep"):
        raise ValueError(f"unjudged policy must be drop or keep, got {policy!r}")
    unjudged_seen = False
    for name in sample.get("images", []):
        verdict = image_verdicts.get(name)
        if verdict is None or verdict.get("status") != JUDGED:
            unjudged_seen = True
        elif verdict.get("rating") == UNSAFE:
            return False, "unsafe_image", verdict.get("code") or category_code(verdict.get("category"))
    for t, turn in enumerate(sample.get("turns", [])):
        if judge_text(turn.get("content") or "") is None:
            continue  # nothing was judged for it
        verdict = text_verdicts.get((sample["id"], t))
        if verdict is None or verdict.get("status") != JUDGED:
            unjudged_seen = True
        elif verdict.get("rating") == UNSAFE:
            return False, "unsafe_text", verdict.get("code") or category_code(verdict.get("category"))
    if unjudged_seen:
        return policy == "keep", "unjudged", None
    return True, None, None
