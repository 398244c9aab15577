"""Content-addressed image store: every distinct image is stored once, named by its sha256.

    <store>/<sha[:2]>/<sha256>.<ext>        ext from the decoded format, never from the name

Naming by content makes ingest idempotent and lets array tasks share one store without
coordination: two tasks storing the same image write the same bytes to the same name, each via
a temp file and an atomic rename, so either write wins harmlessly. The two-character fan-out
keeps directories small at LLaVA scale (150k+ images).

Images are checked before they are stored (PIL opens, verifies, then fully decodes them, which
catches truncated files that `verify` alone lets through), so later stages never meet a broken
image. A row's images are all prepared before any is written (`add_all`), so a row quarantined
for its third image leaves no orphan first image in the store.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from PIL import Image

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


@dataclass(frozen=True)
class PreparedImage:
    """Verified image bytes, ready to store."""

    data: bytes
    ext: str
    sha256: str

    @property
    def name(self) -> str:
        return f"{self.sha256}.{self.ext}"


class ImageStore:
    def __init__(self, root: Path, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes

    def path_of(self, name: str) -> Path:
        return self.root / name[:2] / name

    # ------------------------------------------------------------------------------------------
    def prepare(self, spec: Any, base_dir: Path | None = None) -> PreparedImage:
        """Load and verify one image given as a path, `file://`/`data:` URL, bytes, an HF
        datasets dict {"bytes", "path"} or a PIL image. Relative paths resolve against
        `base_dir` and must stay inside it. Raises BadRow (missing_image, bad_image,
        remote_image, image_escape, image_too_large, wrong_type)."""
        data = self._load(spec, base_dir)
        ext = verify_image(data)
        return PreparedImage(data, ext, hashlib.sha256(data).hexdigest())

    def put(self, image: PreparedImage) -> str:
        path = self.path_of(image.name)
        if not path.exists():  # written once; a concurrent identical write is harmless
            atomic_write_bytes(path, image.data)
        return image.name

    def add(self, spec: Any, base_dir: Path | None = None) -> str:
        return self.put(self.prepare(spec, base_dir))

    def add_all(self, specs: list[Any], base_dir: Path | None = None) -> list[str]:
        """All of a row's images, or none: every image is verified before any is written."""
        prepared = []
        for i, spec in enumerate(specs, 1):
            try:
                prepared.append(self.prepare(spec, base_dir))
            except BadRow as exc:
                raise BadRow(f"image {i}: {exc.reason}", exc.kind) from None
        return [self.put(p) for p in prepared]

    # ------------------------------------------------------------------------------------------
    def _load(self, spec: Any, base_dir: Path | None) -> bytes:
        if isinstance(spec, Image.Image):
            return self._check_size(encode_png(spec))
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
                return self._read_file(Path(url2pathname(unquote(parsed.path))), text)
            if name in ("http", "https"):
                raise BadRow("remote image URL not fetched (no network); mirror it locally: " + text,
                             "remote_image")
            raise BadRow(f"{name}:// image URL not fetched; mirror it locally: {text}", "remote_image")
        path = Path(text)
        if not path.is_absolute():
            # Lexical check, so a symlinked data directory inside the root still works.
            norm = os.path.normpath(text)
            if norm == ".." or norm.startswith(".." + os.sep):
                raise BadRow(f"image path escapes image_root: {text}", "image_escape")
            path = (Path(base_dir) if base_dir is not None else Path.cwd()) / norm
        return self._read_file(path, text)

    def _read_file(self, path: Path, given: str) -> bytes:
        try:
            size = path.stat().st_size
            if not path.is_file():
                raise BadRow(f"image path is not a file: {given} ({path})", "missing_image")
            if size > self.max_bytes:
                raise BadRow(f"image is {size} bytes, over ingest.max_image_bytes={self.max_bytes}: {given}",
                             "image_too_large")
            return path.read_bytes()
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


def verify_image(data: bytes) -> str:
    """The stored extension for `data`, or BadRow("bad_image") if it does not fully decode."""
    try:
        with Image.open(io.BytesIO(data), formats=_PIL_FORMATS) as im:
            fmt = im.format
            im.verify()  # structure and checksums; the object is unusable afterwards
        with Image.open(io.BytesIO(data), formats=_PIL_FORMATS) as im:
            im.load()  # real decode: catches truncated pixel data that verify() accepts
    except Image.UnidentifiedImageError:
        raise BadRow(f"not a decodable image of a supported format "
                     f"({', '.join(sorted(set(FORMAT_EXT.values())))}); {len(data)} bytes", "bad_image") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        raise BadRow(f"image does not decode: {type(exc).__name__}: {exc}", "bad_image") from None
    return FORMAT_EXT[fmt]


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
