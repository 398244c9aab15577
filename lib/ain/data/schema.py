"""The one sample schema every later stage reads (translate, verify, safety, mix, pack).

A sample is one conversation about zero or more images:

    {"id": "en_llava-12",                       # <source>-<row>, a safe WebDataset key
     "images": ["<sha256>.png", ...],          # names in the run's content-addressed store
     "turns": [{"role": "user", "content": "<image>\nWhat colour is the square?"},
               {"role": "assistant", "content": "The square is red."}],
     "language": "en", "source": "en_llava", "domain": "general", "authentic": true,
     "origin": {"file": "tests/fixtures/smoke/en_llava.json", "row": 12}}

Each image sits in the text as one literal "<image>" placeholder, in image order, so the
number of placeholders always equals the number of images. The id contains only
[A-Za-z0-9_-]: it becomes a WebDataset key, where "." splits key from extension and "/" is a
directory.

`BadRow` lives here (not in normalize) because readers, the image store and normalize all
raise it, and it must not make them import each other.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

IMAGE_TOKEN = "<image>"
ROLES = ("system", "user", "assistant")
LANGUAGES = ("en", "ar")
IMAGE_EXTENSIONS = ("png", "jpg", "webp", "gif", "bmp", "tiff")

_KEY_OK = re.compile(r"^[A-Za-z0-9_-]+$")
_KEY_BAD_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
_IMAGE_NAME = re.compile(r"^[0-9a-f]{64}\.(%s)$" % "|".join(IMAGE_EXTENSIONS))


class BadRow(ValueError):
    """A row that cannot become a sample. `kind` is a short class name used in counters
    (quarantined_<kind>); `reason` is the precise message stored in the quarantine record."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


def safe_key(text: str) -> str:
    """Map any text to [A-Za-z0-9_-]+ (runs of other characters become one '_')."""
    key = _KEY_BAD_CHARS.sub("_", str(text)).strip("_")
    return key or "_"


@dataclass
class Sample:
    id: str
    images: list[str]
    turns: list[dict[str, str]]
    language: str
    source: str
    domain: str
    authentic: bool
    origin: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "Sample":
        """Programmer-level invariants: normalize must never produce a sample that breaks them,
        so a failure here is a bug (raised as ValueError naming the field)."""
        problems = []
        if not _KEY_OK.match(self.id):
            problems.append(f"id {self.id!r} has characters outside [A-Za-z0-9_-]")
        for name in self.images:
            if not isinstance(name, str) or not _IMAGE_NAME.match(name):
                problems.append(f"image name {name!r} is not <sha256>.<{'|'.join(IMAGE_EXTENSIONS)}>")
        if not self.turns:
            problems.append("no turns")
        for i, turn in enumerate(self.turns, 1):
            if set(turn) != {"role", "content"} or turn.get("role") not in ROLES \
                    or not isinstance(turn.get("content"), str):
                problems.append(f"turn {i} {turn!r} is not {{role: {'|'.join(ROLES)}, content: str}}")
        if not any(t.get("role") == "assistant" for t in self.turns):
            problems.append("no assistant turn")
        placeholders = sum(str(t.get("content", "")).count(IMAGE_TOKEN) for t in self.turns)
        if placeholders != len(self.images):
            problems.append(f"{placeholders} {IMAGE_TOKEN} placeholders for {len(self.images)} images")
        if self.language not in LANGUAGES:
            problems.append(f"language {self.language!r} not in {LANGUAGES}")
        if not isinstance(self.authentic, bool):
            problems.append(f"authentic {self.authentic!r} is not a bool")
        if not self.source or not self.domain:
            problems.append("empty source or domain")
        if not isinstance(self.origin.get("file"), str) or not isinstance(self.origin.get("row"), int):
            problems.append(f"origin {self.origin!r} lacks file (str) and row (int)")
        if problems:
            raise ValueError(f"invalid sample {self.id!r}: " + "; ".join(problems))
        return self

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "Sample":
        return cls(**obj).validate()
