"""Turn one raw row (native, LLaVA or ShareGPT layout) into a `Sample`, or raise `BadRow` with
the precise reason.

Layouts (style=auto picks by key):

    native    {"turns": [{"role", "content"}], "images": [...], "language"?, "domain"?, "authentic"?}
    llava     {"id", "image": str | "images": [...], "conversations": [{"from": human|gpt|system, "value"}]}
    sharegpt  {"messages": [{"role", "content": str | [{"type": "text", "text"}, {"type": "image"}]}],
               "images": [...]}

Image placeholders, the same rule for every layout: the only placeholder is the exact text
"<image>" (an OpenAI-style {"type": "image"} part becomes one), and it may appear only in user
turns: an image in an assistant turn would put training's loss on vision tokens, one in a system
turn is not how any of these layouts places images (misplaced_image). Text that looks like a
placeholder but is not one ("<Image>", "<IMAGE>", "< image >", "<image/>", "</image>") is refused
(bad_placeholder) instead of being kept as text next to a placeholder added for the same image, and
so are Qwen's chat control tokens ("<|im_end|>", "<|image_pad|>", ...: special_token), which the
tokenizer would read as structure, not text. What differs per layout is only a missing placeholder:

    llava     rows with images and no placeholder get one per image at the start of the first
              user turn (LLaVA's own preprocessing moves the image there); otherwise the count
              must equal the images.
    sharegpt  the count must equal the images (LLaMA-Factory refuses a mismatch, so does this).
    native    the count must equal the images (this project's own layout: nothing is guessed).

A turn is empty when nothing visible is left after removing whitespace and invisible characters
(zero-width spaces and joiners, direction marks, BOMs, soft hyphens, variation selectors, Hangul
fillers, ...): empty_turn. A turn over ingest.max_turn_chars is turn_too_long.

Checks are ordered cheap first and images last, so a row with a broken conversation never
costs an image decode or a write to the store. Turn numbers in reasons are 1-based, as a person
counts them in the quarantine file.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Callable

from ain.data.config import IngestSource
from ain.data.schema import IMAGE_TOKEN, LANGUAGES, BadRow, Sample

# A row's image specs -> stored names (ImageStore.add_all bound to a base directory).
AddImages = Callable[[list[Any]], list[str]]

LLAVA_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user",
               "assistant": "assistant"}
ARABIC_SHARE = 0.3  # above this share of Arabic-script letters a text is Arabic
DEFAULT_MAX_TURN_CHARS = 100_000
PLACEHOLDER_ROLES = ("user",)
# Anything a person or a tool may have meant as an image placeholder; only IMAGE_TOKEN is one.
_PLACEHOLDER_LIKE = re.compile(r"<\s*/?\s*image\s*/?\s*>", re.IGNORECASE)
# Qwen2-VL's chat-structure and vision tokens: in text they would be read as structure.
_SPECIAL_TOKEN = re.compile(r"<\|(?:im_start|im_end|endoftext|vision_start|vision_end|vision_pad|image_pad|"
                            r"video_pad)\|>")
_INVISIBLE_CATEGORIES = {"Cc", "Cf", "Zs", "Zl", "Zp"}
# Invisible although their category says otherwise (letters, marks, symbols that render as blank).
_INVISIBLE_EXTRA = {0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180E, 0x2800, 0x3164, 0xFFA0,
                    *range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)}


def detect_style(row: dict[str, Any]) -> str:
    for key, style in (("turns", "native"), ("conversations", "llava"), ("messages", "sharegpt")):
        if key in row:
            return style
    raise BadRow(f"cannot tell the conversation layout: no turns, conversations or messages field "
                 f"(keys: {sorted(row)[:10]})", "unknown_style")


def normalize_row(row: Any, *, src: IngestSource, source: str, file: str, row_index: int,
                  add_images: AddImages, max_turn_chars: int = DEFAULT_MAX_TURN_CHARS) -> Sample:
    if not isinstance(row, dict):
        raise BadRow(f"row is {_type(row)}, expected an object", "wrong_type")
    style = src.style if src.style != "auto" else detect_style(row)
    if style == "native":
        turns = _turns(row, "turns", "role", "content", None, max_turn_chars)
        specs = _image_list(row, "images")
    elif style == "llava":
        turns = _turns(row, "conversations", "from", "value", LLAVA_ROLES, max_turn_chars)
        specs = _image_list(row, "images" if "images" in row else "image")
    elif style == "sharegpt":
        turns = _turns(row, "messages", "role", "content", None, max_turn_chars)
        specs = _image_list(row, "images")
    else:
        raise BadRow(f"unknown style {style!r}", "unknown_style")

    roles = [t["role"] for t in turns]
    if "assistant" not in roles:
        raise BadRow("no assistant turn", "no_assistant")
    if "user" not in roles:
        raise BadRow("no user turn", "no_user")
    _check_placeholders(turns)
    _place_images(turns, len(specs), style)

    sample = Sample(
        id=f"{source}-{row_index}", images=[], turns=turns,
        language=_language(row, src, turns), source=source,
        domain=_domain(row, src), authentic=_authentic(row, src),
        origin={"file": file, "row": row_index})
    if isinstance(row.get("id"), (str, int)) and not isinstance(row.get("id"), bool):
        sample.origin["id"] = str(row["id"])  # the source's own key, for tracing back
    sample.images = add_images(specs) if specs else []
    return sample.validate()


# ----------------------------------------------------------------------------------------------
def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def is_invisible(c: str) -> bool:
    return unicodedata.category(c) in _INVISIBLE_CATEGORIES or ord(c) in _INVISIBLE_EXTRA


def _empty_reason(content: str) -> str | None:
    """Why `content` is empty to a reader, or None when something visible is in it."""
    if not content.strip():
        return "empty content"
    if all(map(is_invisible, content)):
        shown = sorted({f"U+{ord(c):04X} {unicodedata.name(c, '?')}" for c in content if not c.isspace()})
        return f"empty content after removing invisible characters ({', '.join(shown[:4])})"
    return None


def _turns(row: dict[str, Any], key: str, role_key: str, content_key: str,
           role_map: dict[str, str] | None, max_turn_chars: int = DEFAULT_MAX_TURN_CHARS) -> list[dict[str, str]]:
    if key not in row:
        raise BadRow(f"missing field {key!r}", "missing_field")
    raw = row[key]
    if raw is None or (isinstance(raw, (list, tuple)) and not raw):
        raise BadRow("empty conversation", "empty_conversation")
    if not isinstance(raw, (list, tuple)):
        raise BadRow(f"{key} is {_type(raw)}, expected a list of turns", "wrong_type")
    allowed = role_map or {r: r for r in ("system", "user", "assistant")}
    turns = []
    for i, turn in enumerate(raw, 1):
        if not isinstance(turn, dict):
            raise BadRow(f"turn {i} is {_type(turn)}, expected an object", "wrong_type")
        if role_key not in turn or content_key not in turn:
            missing = role_key if role_key not in turn else content_key
            raise BadRow(f"turn {i}: missing field {missing!r}", "missing_field")
        role = turn[role_key]
        if not isinstance(role, str) or role.strip().lower() not in allowed:
            raise BadRow(f"turn {i}: {role_key} {role!r} is not one of {', '.join(allowed)}", "bad_role")
        content = turn[content_key]
        if isinstance(content, list):  # OpenAI-style parts: text and image placeholders
            content = _join_parts(content, i)
        if not isinstance(content, str):
            raise BadRow(f"turn {i}: content is {_type(content)}, expected string", "wrong_type")
        if len(content) > max_turn_chars:
            raise BadRow(f"turn {i}: {len(content)} characters, over ingest.max_turn_chars={max_turn_chars}",
                         "turn_too_long")
        empty = _empty_reason(content)
        if empty:
            raise BadRow(f"turn {i}: {empty}", "empty_turn")
        turns.append({"role": allowed[role.strip().lower()], "content": content})
    return turns


def _join_parts(parts: list[Any], i: int) -> str:
    out = []
    for j, part in enumerate(parts, 1):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            out.append(part["text"])
        elif kind in ("image", "image_url"):
            out.append(IMAGE_TOKEN)  # the image itself comes from the row's images list
        else:
            raise BadRow(f"turn {i}: content part {j} is {part!r:.80}, expected "
                         "{type: text, text: str} or {type: image}", "wrong_type")
    return "\n".join(out)


def _image_list(row: dict[str, Any], key: str) -> list[Any]:
    value = row.get(key)
    if value is None:
        return []
    if isinstance(value, (str, bytes, dict)):
        return [] if value == "" else [value]
    if isinstance(value, (list, tuple)):
        if any(v is None for v in value):
            raise BadRow(f"{key} contains null", "wrong_type")
        return list(value)
    if type(value).__module__.startswith("PIL."):
        return [value]
    raise BadRow(f"{key} is {_type(value)}, expected a path, a list of paths or image data", "wrong_type")


def _check_placeholders(turns: list[dict[str, str]]) -> None:
    """The placeholder rules every layout shares (module docstring)."""
    for i, turn in enumerate(turns, 1):
        content = turn["content"]
        if "<" not in content:
            continue
        for m in _PLACEHOLDER_LIKE.finditer(content):
            if m.group() != IMAGE_TOKEN:
                raise BadRow(f"turn {i}: {m.group()!r} looks like an image placeholder, but only {IMAGE_TOKEN!r} "
                             "is one; write it exactly, or it would stay text beside the image", "bad_placeholder")
        special = _SPECIAL_TOKEN.search(content)
        if special:
            raise BadRow(f"turn {i}: {special.group()!r} is one of Qwen2-VL's control tokens; in text the "
                         "tokenizer would read it as chat structure", "special_token")
        if IMAGE_TOKEN in content and turn["role"] not in PLACEHOLDER_ROLES:
            raise BadRow(f"turn {i} ({turn['role']}): {IMAGE_TOKEN} outside a user turn; images belong to user "
                         "turns (in an answer, training would put its loss on the vision tokens)", "misplaced_image")


def _place_images(turns: list[dict[str, str]], n_images: int, style: str = "llava") -> None:
    """One <image> per image. LLaVA rows with images but no placeholder (common in
    LLaVA-derived data) get them at the start of the first user turn, where LLaVA puts them;
    the other layouts must give one placeholder per image."""
    placeholders = sum(t["content"].count(IMAGE_TOKEN) for t in turns)
    if n_images and not placeholders and style == "llava":
        first_user = next(t for t in turns if t["role"] == "user")
        first_user["content"] = (IMAGE_TOKEN + "\n") * n_images + first_user["content"]
    elif placeholders != n_images:
        hint = "" if style == "llava" or placeholders else \
            f" ({style} rows need one {IMAGE_TOKEN} per image; only llava rows get missing ones added)"
        raise BadRow(f"{placeholders} {IMAGE_TOKEN} placeholder(s) in the text for {n_images} image(s){hint}",
                     "image_mismatch")


def is_arabic_char(c: str) -> bool:
    o = ord(c)
    return (0x0600 <= o <= 0x06FF or 0x0750 <= o <= 0x077F or 0x08A0 <= o <= 0x08FF
            or 0xFB50 <= o <= 0xFDFF or 0xFE70 <= o <= 0xFEFF)


def detect_language(text: str) -> str:
    """"ar" when Arabic-script letters are more than 30% of the letters, else "en"."""
    letters = [c for c in text.replace(IMAGE_TOKEN, " ") if c.isalpha()]
    if not letters:
        return "en"
    return "ar" if sum(map(is_arabic_char, letters)) / len(letters) > ARABIC_SHARE else "en"


def _language(row: dict[str, Any], src: IngestSource, turns: list[dict[str, str]]) -> str:
    if src.language:
        return src.language
    value = row.get("language")
    if value is None:
        return detect_language(" ".join(t["content"] for t in turns))
    if not isinstance(value, str) or value.strip().lower() not in LANGUAGES:
        raise BadRow(f"language {value!r} is not one of {', '.join(LANGUAGES)}", "bad_value")
    return value.strip().lower()


def _domain(row: dict[str, Any], src: IngestSource) -> str:
    if src.domain:
        return src.domain
    value = row.get("domain")
    if value is None:
        return "general"
    if not isinstance(value, str) or not value.strip():
        raise BadRow(f"domain is {value!r}, expected a non-empty string", "bad_value")
    return value.strip()


def _authentic(row: dict[str, Any], src: IngestSource) -> bool:
    if src.authentic is not None:
        return bool(src.authentic)
    value = row.get("authentic")
    if value is None:
        return True
    if not isinstance(value, bool):
        raise BadRow(f"authentic is {_type(value)}, expected true or false", "wrong_type")
    return value
