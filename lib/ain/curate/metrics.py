"""Translation-gate metrics (REFERENCE.md §1): LaBSE cosine and back-translation overlap.

Overlap metrics compare the English original (reference) with the back-translation
(hypothesis) — the report's comparison — and are returned on a 0-100 scale, like the thresholds
in `VerifyConfig`:

- BLEU-4 and BLEU-2: sacrebleu sentence BLEU (exp smoothing, 13a tokeniser,
  effective_order=True so a short segment is not zeroed by missing higher-order n-grams).
- METEOR: nltk.translate.meteor_score on regex tokens (no punkt), with WordNet synonyms.
  WordNet is loaded once per process (about 2.5 s) on first use; `scripts/install_wordnet.sh`
  installs it offline.
- ROUGE-1 F1 and ROUGE-L F1: rouge-score with a tokeniser that keeps Arabic letters (the
  default one keeps only [a-z0-9] and scores an identical Arabic pair 0).

Normalisation decision: `overlap_scores` (what the gate uses) runs every metric on
`normalize_for_overlap` text — lowercase, punctuation removed, spaces collapsed — on both
sides. Case and punctuation differences in a back-translation are not translation errors, and
on short turns they dominate (sacrebleu gives "a red car" vs "a red car ." BLEU-4 59.46
unnormalised, 100 normalised). The single-metric functions `bleu`, `meteor`, `rouge` score the
text they are given, unnormalised, so they reproduce the libraries' reference values.

Very short turns: even an exact match scores low on METEOR (one word: 50; three words: 98.15,
its fragmentation penalty), so with `VerifyConfig.exact_match_passes` a back-translation equal to
the original after normalisation meets the overlap thresholds (LaBSE still applies); see `gate`.
"""

from __future__ import annotations

import math
import re
import string
import sys
import threading
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Iterable, Sequence

if TYPE_CHECKING:
    from ain.curate.config import VerifyConfig

OVERLAP_KEYS = ("bleu2", "bleu4", "meteor", "rouge1", "rouge_l")
"""Keys of `overlap_scores`, all on a 0-100 scale."""

# --------------------------------------------------------------------------------------------
# Normalisation and tokenisation

_SPACES = re.compile(r"\s+")
# Word tokens: numbers with inner "." or "," ("3.5", "1,000"); words of any script with Arabic
# combining marks (harakat, not matched by \w) and inner apostrophes ("don't"); else a single
# punctuation or symbol character.
_W = r"[\w\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed]"
_TOKEN = re.compile(rf"\d+(?:[.,]\d+)+|{_W}+(?:['\u2019]{_W}+)*|[^\w\s]")
_APOSTROPHE = re.compile(r"(?<=\w)['’ʼ](?=\w)")     # don't -> dont
_DIGIT_SEP = re.compile(r"(?<=\d)([.,])(?=\d)")                # 3.5 and 1,000 stay whole
_KEEP = {".": "\ue000", ",": "\ue001"}
_punct_table: dict[int, str] | None = None


def _punctuation_table() -> dict[int, str]:
    """Every Unicode punctuation code point (category P: ، ؛ ؟ « » too) and all ASCII
    punctuation/symbols -> space. Built once per process (about 0.3 s)."""
    global _punct_table
    if _punct_table is None:
        table = {cp: " " for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp))[0] == "P"}
        table.update({ord(c): " " for c in string.punctuation})
        table.update({ord(v): k for k, v in _KEEP.items()})
        _punct_table = table
    return _punct_table


def normalize_for_overlap(text: str) -> str:
    """NFKC, lowercase, punctuation removed, spaces collapsed: the text the gate compares.

    Removed: Unicode punctuation of any script and all ASCII punctuation/symbols (replaced by a
    space); apostrophes inside a word are dropped ("don't" -> "dont"); "." and "," between digits
    stay ("3.5", "1,000"). Non-ASCII symbols (€, emoji) and Arabic diacritics are kept.
    Used by `overlap_scores` and by the exact-match rule."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = _APOSTROPHE.sub("", text)
    text = _DIGIT_SEP.sub(lambda m: _KEEP[m.group(1)], text)
    text = text.translate(_punctuation_table())
    return _SPACES.sub(" ", text).strip()


def word_tokenize(text: str) -> list[str]:
    """Regex word tokeniser (no punkt): words of any script, punctuation as separate tokens."""
    return _TOKEN.findall(text)


_WORD = re.compile(rf"\d+(?:[.,]\d+)+|{_W}+(?:['\u2019]{_W}+)*")


class RegexTokenizer:
    """rouge-score tokeniser: lowercase words of any script (Arabic kept); punctuation and
    symbols dropped (`word_tokenize` without its single-character tokens)."""

    def tokenize(self, text: str) -> list[str]:
        return _WORD.findall(text.lower())


# --------------------------------------------------------------------------------------------
# Scorer objects, built once per process and reused (the benchmark's "reused scorers")

_lock = threading.Lock()
_bleu_scorers: dict[int, Any] = {}
_rouge_scorer: Any = None
_wordnet: Any = None
_single_meteor: Any = None  # nltk.translate.meteor_score.single_meteor_score, imported with WordNet

WORDNET_HELP = (
    "WordNet (needed by NLTK's METEOR) is not installed where nltk looks for it. Run "
    "`bash scripts/install_wordnet.sh` (root: installs Debian's wordnet-base and "
    "wordnet-sense-index and copies them to /usr/local/share/nltk_data; without root see the "
    "comment at the top of that script and set NLTK_DATA)."
)


def _bleu_scorer(order: int):
    scorer = _bleu_scorers.get(order)
    if scorer is None:
        from sacrebleu.metrics import BLEU  # noqa: PLC0415

        with _lock:
            scorer = _bleu_scorers.setdefault(order, BLEU(max_ngram_order=order, effective_order=True))
    return scorer


def _rouge():
    global _rouge_scorer
    if _rouge_scorer is None:
        from rouge_score.rouge_scorer import RougeScorer  # noqa: PLC0415

        with _lock:
            if _rouge_scorer is None:
                _rouge_scorer = RougeScorer(["rouge1", "rougeL"], tokenizer=RegexTokenizer())
    return _rouge_scorer


class _CachedWordNet:
    """The loaded WordNet reader behind a per-word cache of `synsets` (all METEOR asks of it).

    Same answers as the reader; a back-translation corpus repeats its vocabulary, and morphy
    lookups are most of METEOR's cost."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self._synsets = lru_cache(maxsize=200_000)(self._lookup)

    def _lookup(self, word: str) -> tuple:
        return tuple(self.reader.synsets(word))

    def synsets(self, word: str, *args: Any, **kwargs: Any):
        if args or kwargs:
            return self.reader.synsets(word, *args, **kwargs)
        return self._synsets(word)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.reader, name)


def load_wordnet() -> Any:
    """nltk's WordNet reader, loaded once per process; a clear error when it is not installed."""
    global _wordnet, _single_meteor
    if _wordnet is None:
        with _lock:
            if _wordnet is None:
                import warnings  # noqa: PLC0415

                with warnings.catch_warnings():
                    # "multilingual functions are not available": omw is not needed for English
                    warnings.simplefilter("ignore")
                    try:
                        from nltk.corpus import wordnet  # noqa: PLC0415

                        wordnet.ensure_loaded()
                        wordnet.synsets("dog")
                    except LookupError as exc:
                        raise RuntimeError(WORDNET_HELP) from exc
                    except (OSError, ValueError, AssertionError) as exc:
                        raise RuntimeError(f"WordNet is installed but unreadable ({exc}). {WORDNET_HELP}") from exc
                from nltk.translate.meteor_score import single_meteor_score  # noqa: PLC0415

                _single_meteor = single_meteor_score
                _wordnet = _CachedWordNet(wordnet)
    return _wordnet


# --------------------------------------------------------------------------------------------
# Single metrics (0-100, on the text as given)

def bleu(hyp: str, ref: str, order: int = 4) -> float:
    """sacrebleu sentence BLEU-`order` (0-100), effective order, exp smoothing, 13a tokens."""
    return min(100.0, float(_bleu_scorer(order).sentence_score(hyp, [ref]).score))  # 100.00000000000004


def bleu_2_and_4(hyp: str, ref: str) -> tuple[float, float]:
    """(BLEU-2, BLEU-4) from one pass of n-gram counting: BLEU-2 is computed from the 1- and
    2-gram statistics of the BLEU-4 scorer (sacrebleu's `compute_bleu`), which is exactly what
    `bleu(hyp, ref, 2)` computes, for half the tokenising and counting."""
    scorer = _bleu_scorer(4)
    try:
        stats = scorer._extract_corpus_statistics([hyp], [[ref]])[0]  # [sys, ref, c1..c4, t1..t4]
    except AttributeError:  # pragma: no cover - a sacrebleu without the private helper
        return bleu(hyp, ref, 2), bleu(hyp, ref, 4)
    sys_len, ref_len, correct, total = int(stats[0]), int(stats[1]), stats[2:6], stats[6:10]
    b4 = scorer.compute_bleu(list(correct), list(total), sys_len, ref_len, smooth_method=scorer.smooth_method,
                             smooth_value=scorer.smooth_value, effective_order=True, max_ngram_order=4).score
    b2 = scorer.compute_bleu(list(correct[:2]), list(total[:2]), sys_len, ref_len, smooth_method=scorer.smooth_method,
                             smooth_value=scorer.smooth_value, effective_order=True, max_ngram_order=2).score
    return min(100.0, float(b2)), min(100.0, float(b4))


def meteor(hyp: str, ref: str) -> float:
    """NLTK METEOR (0-100) on regex tokens; nltk lowercases, stems (Porter) and uses WordNet."""
    wn = load_wordnet()
    return 100.0 * float(_single_meteor(word_tokenize(ref), word_tokenize(hyp), wordnet=wn))


def rouge(hyp: str, ref: str) -> tuple[float, float]:
    """(ROUGE-1 F1, ROUGE-L F1), 0-100, rouge-score with an Arabic-preserving tokeniser."""
    s = _rouge().score(ref, hyp)  # score(target, prediction)
    return 100.0 * s["rouge1"].fmeasure, 100.0 * s["rougeL"].fmeasure


def overlap_scores(hyp: str, ref: str) -> dict[str, float]:
    """bleu2, bleu4, meteor, rouge1, rouge_l (0-100) of a back-translation `hyp` against the
    original `ref`, both normalised first (`normalize_for_overlap`).

    Both empty after normalisation (e.g. only punctuation): 100 everywhere; one empty: 0."""
    h, r = normalize_for_overlap(hyp), normalize_for_overlap(ref)
    if not h or not r:
        value = 100.0 if h == r else 0.0
        return {k: value for k in OVERLAP_KEYS}
    b2, b4 = bleu_2_and_4(h, r)
    r1, rl = rouge(h, r)
    return {"bleu2": b2, "bleu4": b4, "meteor": meteor(h, r), "rouge1": r1, "rouge_l": rl}


# --------------------------------------------------------------------------------------------
# LaBSE (or any sentence-transformers model)

class Embedder:
    """A sentence-transformers model (LaBSE in the recipe) for cosine(EN, AR) pairs.

    `model_name_or_path`: a hub id (needs the network or a populated HF cache) or a local
    directory saved by sentence-transformers. Runs on CUDA when available, else CPU."""

    def __init__(self, model_name_or_path: str, device: str | None = None) -> None:
        import torch  # noqa: PLC0415
        from sentence_transformers import SentenceTransformer  # noqa: PLC0415

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model_name_or_path = str(model_name_or_path)
        from transformers.utils import logging as hf_logging  # noqa: PLC0415

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Loading weights" bar in task logs
        try:
            self.model = SentenceTransformer(self.model_name_or_path, device=self.device)
        except Exception as exc:
            raise RuntimeError(
                f"cannot load sentence-transformers model {self.model_name_or_path!r} on {self.device}: {exc} "
                "(verify.labse_model: a hub id needs network access or a populated HF cache; "
                "offline, point it at a local sentence-transformers directory)") from exc
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        self.model.eval()

    def encode(self, texts: Sequence[str], batch_size: int = 64):
        """L2-normalised embeddings, float32 numpy array (len(texts), dim)."""
        import numpy as np  # noqa: PLC0415

        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        emb = self.model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                                normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(emb, dtype=np.float32)

    def cosine_pairs(self, a: Sequence[str], b: Sequence[str], batch_size: int = 64) -> list[float]:
        """cos(a[i], b[i]) for every i. Each distinct text is encoded once, in batches."""
        if len(a) != len(b):
            raise ValueError(f"cosine_pairs: {len(a)} texts against {len(b)}")
        if not a:
            return []
        unique = list(dict.fromkeys([*a, *b]))
        row = {t: i for i, t in enumerate(unique)}
        emb = self.encode(unique, batch_size=batch_size)
        ia = [row[t] for t in a]
        ib = [row[t] for t in b]
        cos = (emb[ia] * emb[ib]).sum(axis=1)
        return [float(c) for c in cos]


# --------------------------------------------------------------------------------------------
# The gate

# score key -> VerifyConfig threshold attribute, in the order reasons are listed
GATE_THRESHOLDS = (("labse", "min_labse"), ("bleu4", "min_bleu4"), ("meteor", "min_meteor"),
                   ("rouge_l", "min_rouge_l"))


@dataclass
class GateDecision:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    """One per failed check, e.g. "labse 0.71 < 0.80", "meteor 79.34 < 80.00"."""
    scores: dict = field(default_factory=dict)


def _fmt_pair(value: float, threshold: float) -> tuple[str, str]:
    """Two decimals, more when rounding would print "0.80 < 0.80"."""
    for digits in (2, 4, 6):
        v, t = f"{value:.{digits}f}", f"{threshold:.{digits}f}"
        if v != t:
            return v, t
    return repr(value), repr(threshold)


def gate(scores: dict, cfg: VerifyConfig, exact_match: bool) -> GateDecision:
    """The report's gate for one segment: labse >= min_labse, bleu4 >= min_bleu4,
    meteor >= min_meteor, rouge_l >= min_rouge_l (a score equal to its threshold passes; NaN
    fails). With cfg.exact_match_passes and `exact_match` (back-translation equal to the
    original after `normalize_for_overlap`) the overlap thresholds count as met; LaBSE still
    applies. A missing score is a KeyError (a bug, not a failing translation)."""
    reasons = []
    overlap_waived = bool(cfg.exact_match_passes and exact_match)
    for key, attr in GATE_THRESHOLDS:
        if key != "labse" and overlap_waived:
            continue
        if key not in scores:
            raise KeyError(f"gate: score {key!r} missing (have {sorted(scores)})")
        value, threshold = float(scores[key]), float(getattr(cfg, attr))
        if math.isnan(value) or value < threshold:
            v, t = _fmt_pair(value, threshold)
            reasons.append(f"{key} {v} < {t}")
    return GateDecision(passed=not reasons, reasons=reasons, scores=dict(scores))


def score_sample(original_en_segments: Sequence[str], arabic_segments: Sequence[str],
                 back_en_segments: Sequence[str], labse_cos: Iterable[float],
                 cfg: VerifyConfig | None = None) -> dict[str, Any]:
    """Scores of one sample (several text segments: its turns) for the gate and the report.

    Aggregation: the gate applies to every segment, and a sample passes only when all its
    segments pass (one bad turn is one bad training target). The sample's score for each metric
    is the minimum over its segments (`min`), the per-segment scores are kept (`segments`) and
    so is the mean (`mean`) for the report. `min` is raw: an exact-match one-word turn passes
    the gate with METEOR 50, and `min.meteor` shows 50.

    `labse_cos[i]` is cos(original_en_segments[i], arabic_segments[i]) computed by the caller
    (one LaBSE batch over many samples). With `cfg`, each segment carries `passed`/`reasons`
    and the sample `passed` and `reasons` ("segment 1: labse 0.71 < 0.80"). A sample with no
    segments has empty `min` and passes.
    """
    cos = list(labse_cos)
    n = len(original_en_segments)
    if not (len(arabic_segments) == len(back_en_segments) == len(cos) == n):
        raise ValueError(f"score_sample: segment counts differ: {n} English, {len(arabic_segments)} Arabic, "
                         f"{len(back_en_segments)} back-translations, {len(cos)} LaBSE cosines")
    segments, reasons = [], []
    for i, (en, ar, back, c) in enumerate(zip(original_en_segments, arabic_segments, back_en_segments, cos)):
        exact = normalize_for_overlap(back) == normalize_for_overlap(en)
        seg: dict[str, Any] = {"segment": i, "labse": float(c), **overlap_scores(back, en), "exact_match": exact}
        if not ar.strip():
            seg["empty_arabic"] = True
        if cfg is not None:
            d = gate(seg, cfg, exact_match=exact)
            if not ar.strip():
                d.reasons.insert(0, "arabic empty")
                d.passed = False
            seg["passed"], seg["reasons"] = d.passed, d.reasons
            reasons += [f"segment {i}: {r}" for r in d.reasons]
        segments.append(seg)
    keys = ("labse", *OVERLAP_KEYS)
    out: dict[str, Any] = {
        "n_segments": n,
        "segments": segments,
        "min": {k: min(s[k] for s in segments) for k in keys} if segments else {},
        "mean": {k: sum(s[k] for s in segments) / n for k in keys} if segments else {},
    }
    if cfg is not None:
        out["passed"] = not reasons
        out["reasons"] = reasons
    return out
