"""Content-addressed image store: every distinct image is stored once, named by its sha256.

    <store>/<sha[:2]>/<sha256>.<ext>        ext from the decoded format, never from the name

Naming by content makes ingest idempotent and lets array tasks share one store without
coordination: two tasks storing the same image write the same bytes to the same name, each via
a temp file and an atomic rename, so either write wins harmlessly. The two-character fan-out
keeps directories small at LLaVA scale (150k+ images).

Images are checked before they are stored, so later stages never meet an image they cannot use:

- paths (relative, absolute, `file://`, an HF dict's "path") are resolved to their real path,
  symlinks followed, and must lie under the source's image root or `ingest.image_roots`;
  anything else is refused (image_escape) without the file being opened;
- the header's size is checked against `ingest.max_image_pixels` (all frames together) before
  anything is decoded (image_too_large);
- PIL verifies, then fully decodes *every frame* (a truncated animated GIF whose first frame is
  intact is refused: the stored file is the whole file);
- the size must survive Qwen2-VL's processor (`trainable_size`, the rules of its smart_resize):
  aspect ratio at most 200, and a resize that fits [min_pixels, max_pixels] (image_untrainable);
- an EXIF orientation other than "normal" is applied (the stored image is the upright first
  frame as PNG, lossless from the decoded pixels): training decodes pixels without EXIF, so a
  portrait photo would otherwise train as landscape.

A row's images are all prepared before any is written (`add_all`), so a row quarantined for its
third image leaves no orphan first image in the store.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
import os
import re
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from PIL import Image, ImageOps

from ain.atomic import atomic_write_bytes
from ain.data.schema import BadRow

# PIL format name -> stored extension. MPO is how PIL reports many camera JPEGs.
FORMAT_EXT = {"PNG": "png", "JPEG": "jpg", "MPO": "jpg", "WEBP": "webp", "GIF": "gif",
              "BMP": "bmp", "TIFF": "tiff"}
# Only these decoders are tried: exotic formats are a needless attack surface for web data.
# (No "MPO": the JPEG decoder hands multi-picture files to it by itself.)
_PIL_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
# Modes PNG can hold as they are; other modes (CMYK, YCbCr, F, ...) are converted first.
_PNG_MODES = ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA")
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_EXIF_ORIENTATION = 0x0112

# Qwen2-VL's image processor (transformers' smart_resize): sides become multiples of 28 (14-pixel
# patches, merged 2 x 2 into one token), and it raises for an aspect ratio over 200.
QWEN_FACTOR = 28
QWEN_MAX_RATIO = 200


@dataclass(frozen=True)
class ImageRules:
    """What an image must satisfy to be stored: the caps and training's requirements."""

    max_bytes: int = 64 * 1024 * 1024
    max_pixels_decoded: int = 50_000_000   # ingest.max_image_pixels, all frames together
    min_pixels: int = 56 * 56              # the processor's pixel budget after its resize
    max_pixels: int = 262144


@dataclass(frozen=True)
class PreparedImage:
    """Verified image bytes, ready to store; `tokens`: the visual tokens Qwen2-VL makes of it."""

    data: bytes
    ext: str
    sha256: str
    width: int = 0
    height: int = 0
    tokens: int = 0

    @property
    def name(self) -> str:
        return f"{self.sha256}.{self.ext}"


class ImageStore:
    def __init__(self, root: Path, max_bytes: Optional[int] = None, rules: Optional[ImageRules] = None,
                 image_roots: Iterable[str | Path] = ()) -> None:
        self.root = Path(root)
        rules = rules or ImageRules()
        if max_bytes is not None:
            rules = ImageRules(max_bytes, rules.max_pixels_decoded, rules.min_pixels, rules.max_pixels)
        self.rules = rules
        self.max_bytes = rules.max_bytes
        self.image_roots = tuple(os.path.realpath(r) for r in image_roots)
        self._real: dict[Path, str] = {}

    def path_of(self, name: str) -> Path:
        return self.root / name[:2] / name

    # ------------------------------------------------------------------------------------------
    def prepare(self, spec: Any, base_dir: Path | None = None) -> PreparedImage:
        """Load and verify one image given as a path, `file://`/`data:` URL, bytes, an HF
        datasets dict {"bytes", "path"} or a PIL image. Relative paths resolve against
        `base_dir`; every path must resolve (symlinks followed) under `base_dir` or one of
        `image_roots`. Raises BadRow (missing_image, bad_image, remote_image, image_escape,
        image_too_large, image_untrainable, wrong_type)."""
        data = self._load(spec, base_dir)
        checked = check_image(data, self.rules)
        return PreparedImage(checked.data, checked.ext, hashlib.sha256(checked.data).hexdigest(),
                             checked.width, checked.height, checked.tokens)

    def put(self, image: PreparedImage) -> str:
        path = self.path_of(image.name)
        if not path.exists():  # written once; a concurrent identical write is harmless
            atomic_write_bytes(path, image.data)
        return image.name

    def add(self, spec: Any, base_dir: Path | None = None) -> str:
        return self.put(self.prepare(spec, base_dir))

    def prepare_all(self, specs: list[Any], base_dir: Path | None = None) -> list[PreparedImage]:
        """All of a row's images verified, none written."""
        prepared = []
        for i, spec in enumerate(specs, 1):
            try:
                prepared.append(self.prepare(spec, base_dir))
            except BadRow as exc:
                raise BadRow(f"image {i}: {exc.reason}", exc.kind) from None
        return prepared

    def add_all(self, specs: list[Any], base_dir: Path | None = None) -> list[str]:
        """All of a row's images, or none: every image is verified before any is written."""
        return [self.put(p) for p in self.prepare_all(specs, base_dir)]

    # ------------------------------------------------------------------------------------------
    def _load(self, spec: Any, base_dir: Path | None) -> bytes:
        if isinstance(spec, Image.Image):  # decoded by a datasets library: apply its EXIF orientation too
            try:
                upright = ImageOps.exif_transpose(spec)
            except Exception as exc:
                raise BadRow(f"image does not decode: {type(exc).__name__}: {exc}", "bad_image") from None
            return self._check_size(encode_png(upright if upright is not None else spec))
        if isinstance(spec, (bytes, bytearray, memoryview)):
            return self._check_size(bytes(spec))
        if isinstance(spec, dict):
            # HF datasets Image storage: bytes win; path-only entries point at a file.
            if spec.get("bytes") is not None:
                return self._load(spec["bytes"], base_dir)
            for key in ("path", "url"):
                if isinstance(spec.get(key), str) and spec[key]:
                    return self._load(spec[key], base_dir)
            raise BadRow(f"image dict has neither bytes nor path (keys: {sorted(spec)})", "wrong_type")
        if isinstance(spec, str):
            return self._load_string(spec.strip(), base_dir)
        raise BadRow(f"image is {type(spec).__name__}, expected a path, URL, bytes or image", "wrong_type")

    def _load_string(self, text: str, base_dir: Path | None) -> bytes:
        if not text:
            raise BadRow("empty image path", "missing_image")
        if text[:5].lower() == "data:":
            header, _, payload = text.partition(",")
            if not header.lower().endswith(";base64"):
                raise BadRow("data: URL image is not base64", "bad_image")
            try:
                return self._check_size(base64.b64decode(payload, validate=True))
            except (binascii.Error, ValueError) as exc:
                raise BadRow(f"data: URL image is not valid base64 ({exc})", "bad_image") from None
        scheme = _URL_SCHEME.match(text)
        if scheme:
            name = scheme.group(1).lower()
            if name == "file":
                parsed = urlparse(text)
                if parsed.netloc not in ("", "localhost"):
                    raise BadRow(f"file URL on another host not readable: {text}", "remote_image")
                return self._read_path(url2pathname(unquote(parsed.path)), text, base_dir)
            if name in ("http", "https"):
                raise BadRow("remote image URL not fetched (no network); mirror it locally: " + text,
                             "remote_image")
            raise BadRow(f"{name}:// image URL not fetched; mirror it locally: {text}", "remote_image")
        return self._read_path(text, text, base_dir)

    def _roots(self, base_dir: Path | None) -> tuple[str, ...]:
        if base_dir is None:
            return self.image_roots
        base = Path(base_dir)
        if base not in self._real:
            self._real[base] = os.path.realpath(base)
        return (self._real[base], *self.image_roots)

    def _read_path(self, text: str, given: str, base_dir: Path | None) -> bytes:
        """One rule for every way a path is given: its real path (symlinks followed, `..`
        resolved) must lie under an allowed root, else it is refused before it is opened."""
        roots = self._roots(base_dir)
        path = Path(text)
        if not path.is_absolute():
            if base_dir is None:
                raise BadRow(f"image path escapes image_root: {given} is a relative path and the source has "
                             "no image_root to resolve it against (set image_root on the source)", "image_escape")
            path = Path(base_dir) / path
        real = os.path.realpath(path)
        if not any(_under(real, root) for root in roots):
            where = ", ".join(roots) if roots else "no image root (set image_root on the source or ingest.image_roots)"
            raise BadRow(f"image path escapes image_root: {given} resolves to {real}, outside {where}; "
                         "list the directory in ingest.image_roots if it is meant to be read", "image_escape")
        return self._read_file(Path(real), given)

    def _read_file(self, path: Path, given: str) -> bytes:
        # O_NOFOLLOW: `path` is already real, so a symlink here was swapped in after the check;
        # O_NONBLOCK: a FIFO swapped in cannot hang the task (fstat then refuses it).
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            if not path.is_file():
                if not path.exists():
                    raise FileNotFoundError(path)
                raise BadRow(f"image path is not a file: {given} ({path})", "missing_image")
            fd = os.open(path, flags)
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise BadRow(f"image path is not a file: {given} ({path})", "missing_image")
                if st.st_size > self.max_bytes:
                    raise BadRow(f"image is {st.st_size} bytes, over ingest.max_image_bytes={self.max_bytes}: "
                                 f"{given}", "image_too_large")
                return self._check_size(f.read(self.max_bytes + 1))
        except FileNotFoundError:
            raise BadRow(f"image file not found: {given} ({path})", "missing_image") from None
        except OSError as exc:
            raise BadRow(f"cannot read image file {given} ({path}): {type(exc).__name__}: {exc}",
                         "missing_image") from None

    def _check_size(self, data: bytes) -> bytes:
        if len(data) > self.max_bytes:
            raise BadRow(f"image is {len(data)} bytes, over ingest.max_image_bytes={self.max_bytes}",
                         "image_too_large")
        return data


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


@dataclass(frozen=True)
class CheckedImage:
    data: bytes   # what to store: the input, or the upright first frame as PNG
    ext: str
    width: int    # upright
    height: int
    tokens: int   # Qwen2-VL visual tokens at the configured pixel budget


def trainable_size(width: int, height: int, rules: ImageRules) -> tuple[int, int]:
    """(height, width) Qwen2-VL's processor resizes the image to (transformers' smart_resize,
    line for line), or BadRow("image_untrainable") where it would raise or miss the pixel budget."""
    if width < 1 or height < 1:
        raise BadRow(f"image is {width}x{height}: no pixels", "image_untrainable")
    ratio = max(width, height) / min(width, height)
    if ratio > QWEN_MAX_RATIO:
        raise BadRow(f"image is {width}x{height}: aspect ratio {ratio:.1f} is over {QWEN_MAX_RATIO}, which "
                     "Qwen2-VL's processor refuses", "image_untrainable")
    f = QWEN_FACTOR
    h_bar, w_bar = round(height / f) * f, round(width / f) * f
    if h_bar * w_bar > rules.max_pixels:
        beta = math.sqrt((height * width) / rules.max_pixels)
        h_bar = max(f, math.floor(height / beta / f) * f)
        w_bar = max(f, math.floor(width / beta / f) * f)
    elif h_bar * w_bar < rules.min_pixels:
        beta = math.sqrt(rules.min_pixels / (height * width))
        h_bar = math.ceil(height * beta / f) * f
        w_bar = math.ceil(width * beta / f) * f
    if min(h_bar, w_bar) < f:
        raise BadRow(f"image is {width}x{height}: Qwen2-VL's resize gives {w_bar}x{h_bar}, a side under "
                     f"{f} pixels (one merged patch)", "image_untrainable")
    if not rules.min_pixels <= h_bar * w_bar <= rules.max_pixels:
        raise BadRow(f"image is {width}x{height}: Qwen2-VL's resize gives {w_bar}x{h_bar} = {h_bar * w_bar} "
                     f"pixels, outside the pixel budget [{rules.min_pixels}, {rules.max_pixels}] "
                     "(min_pixels/max_pixels): too elongated for it", "image_untrainable")
    return h_bar, w_bar


def _open(data: bytes) -> Image.Image:
    """PIL's lazy open (header only). Its warning over 89 Mpixel is silenced: ingest.max_image_pixels
    decides (its hard error over about 179 Mpixel stays, raised here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data), formats=_PIL_FORMATS)


def check_image(data: bytes, rules: Optional[ImageRules] = None) -> CheckedImage:
    """Verify `data` completely (every frame), against the caps and training's requirements;
    apply an EXIF orientation. BadRow: bad_image, image_too_large, image_untrainable."""
    rules = rules or ImageRules()
    try:
        with _open(data) as im:
            fmt = im.format
            width, height = im.size
            frames = getattr(im, "n_frames", 1) or 1
            if width * height * frames > rules.max_pixels_decoded:
                what = f"{frames} frames of " if frames > 1 else ""
                raise BadRow(f"image is {what}{width}x{height} = {width * height * frames} pixels, over "
                             f"ingest.max_image_pixels={rules.max_pixels_decoded}; not decoded", "image_too_large")
            im.verify()  # structure and checksums; the object is unusable afterwards
        with _open(data) as im:
            for frame in range(frames):  # real decode of every frame: catches truncated pixel data
                im.seek(frame)
                im.load()
            im.seek(0)
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
            if orientation in (2, 3, 4, 5, 6, 7, 8):
                upright = ImageOps.exif_transpose(im)
                data, fmt = encode_png(upright), "PNG"
                width, height = upright.size
    except BadRow:
        raise
    except Image.UnidentifiedImageError:
        raise BadRow(f"not a decodable image of a supported format "
                     f"({', '.join(sorted(set(FORMAT_EXT.values())))}); {len(data)} bytes", "bad_image") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error, EOFError, ...
        raise BadRow(f"image does not decode: {type(exc).__name__}: {exc}", "bad_image") from None
    h_bar, w_bar = trainable_size(width, height, rules)
    return CheckedImage(data, FORMAT_EXT[fmt], width, height, (h_bar // QWEN_FACTOR) * (w_bar // QWEN_FACTOR))


def verify_image(data: bytes, rules: Optional[ImageRules] = None) -> str:
    """The stored extension for `data`, or BadRow if it cannot be stored (see check_image)."""
    return check_image(data, rules).ext


def encode_png(im: Image.Image) -> bytes:
    """A PIL image (as HF datasets decode them) as PNG bytes: lossless, so nothing is lost."""
    try:
        if im.mode not in _PNG_MODES:
            im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    except Exception as exc:
        raise BadRow(f"image does not decode: {type(exc).__name__}: {exc}", "bad_image") from None
    return buf.getvalue()
