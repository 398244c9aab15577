"""Spans a translator must not touch: image placeholders, markup, code, URLs, numbers and
multiple-choice option letters.

Each such span is replaced by a marker ⟦n⟧ before the text goes to the translator, and put back
afterwards. `unmask` checks that every marker came back exactly once, so a translator that drops
an `<image>` or rewrites "42" is caught (checked, not hoped) and the sample is retried or
rejected with reason `markers`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MARKER = "⟦{}⟧"
MARKER_RE = re.compile(r"⟦(\d+)⟧")

# Order matters: the first alternative that matches at a position wins.
PROTECTED_RE = re.compile(
    r"```.*?```"                                  # fenced code
    r"|`[^`\n]+`"                                 # inline code
    r"|https?://[^\s<>\"')\]]+"                   # URLs
    r"|<[^<>\n]{1,64}>"                           # markup and placeholders: <image>, <br>, </b>
    r"|\$[^$\n]+\$"                               # inline LaTeX
    r"|(?m:^[ \t]*\(?[A-Ha-h][).:](?=\s))"       # option letters at line start: "A.", "(b)", "C)"
    r"|\d+(?:[.,:/]\d+)*%?",                      # numbers, decimals, times, fractions, percents
    re.DOTALL,
)


class MarkerError(ValueError):
    """The translation lost, duplicated or invented a protected-span marker."""


@dataclass(frozen=True)
class Masked:
    text: str                 # the text with each protected span replaced by ⟦n⟧
    spans: tuple[str, ...]    # span n, verbatim

    @property
    def translatable(self) -> bool:
        """False when nothing but markers and whitespace is left (e.g. a bare "<image>")."""
        return bool(strip_markers(self.text).strip())


def mask(text: str) -> Masked:
    spans: list[str] = []

    def repl(m: re.Match) -> str:
        spans.append(m.group(0))
        return MARKER.format(len(spans) - 1)

    return Masked(PROTECTED_RE.sub(repl, text), tuple(spans))


def check_markers(translated: str, n_spans: int) -> None:
    found = [int(x) for x in MARKER_RE.findall(translated)]
    if sorted(found) != list(range(n_spans)):
        missing = sorted(set(range(n_spans)) - set(found))
        extra = sorted({x for x in found if x >= n_spans or found.count(x) > 1})
        raise MarkerError(f"markers: expected ⟦0⟧..⟦{n_spans - 1}⟧ once each; "
                          f"missing {missing}, duplicated or unknown {extra}")


def unmask(translated: str, spans: tuple[str, ...]) -> str:
    check_markers(translated, len(spans))
    return MARKER_RE.sub(lambda m: spans[int(m.group(1))], translated)


def strip_markers(text: str) -> str:
    """The translatable words only: what the verification metrics compare."""
    return re.sub(r"\s+", " ", MARKER_RE.sub(" ", text)).strip()
