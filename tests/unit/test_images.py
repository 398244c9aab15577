"""ImageStore: verification, content addressing, path rules and every accepted input form."""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path

import pytest
from PIL import Image

from ain.data.images import ImageStore, verify_image
from ain.data.schema import BadRow


def png(colour="red", size=(16, 16), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(colour="blue") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, format="JPEG")
    return buf.getvalue()


def stored_files(store: ImageStore) -> list[Path]:
    return sorted(p for p in store.root.rglob("*") if p.is_file()) if store.root.exists() else []


def refused(store: ImageStore, spec, kind: str, fragment: str, base_dir=None) -> None:
    before = stored_files(store)
    with pytest.raises(BadRow) as info:
        store.add(spec, base_dir)
    assert info.value.kind == kind, info.value.reason
    assert fragment in info.value.reason
    assert stored_files(store) == before  # nothing written for a refused image


@pytest.fixture
def store(tmp_path):
    return ImageStore(tmp_path / "store", max_bytes=1 << 20)


def test_bytes_stored_under_their_sha256(store):
    data = png()
    name = store.add(data)
    sha = hashlib.sha256(data).hexdigest()
    assert name == f"{sha}.png"
    assert store.path_of(name) == store.root / sha[:2] / name
    assert store.path_of(name).read_bytes() == data


def test_same_bytes_stored_once(store, tmp_path):
    data = png("green")
    (tmp_path / "a.png").write_bytes(data)
    names = {store.add(data), store.add(data), store.add("a.png", tmp_path), store.add({"bytes": data, "path": "x"})}
    assert len(names) == 1
    assert len(stored_files(store)) == 1
    assert store.add(png("blue")) not in names
    assert len(stored_files(store)) == 2


def test_extension_comes_from_content_not_name(store, tmp_path):
    (tmp_path / "photo.png").write_bytes(jpeg())  # a JPEG with a .png name
    assert store.add("photo.png", tmp_path).endswith(".jpg")


def test_mpo_jpeg_is_stored_as_jpg():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="MPO", save_all=True,
                                         append_images=[Image.new("RGB", (8, 8), "blue")])
    assert verify_image(buf.getvalue()) == "jpg"


def test_corrupt_bytes_rejected(store):
    refused(store, b"\x89PNG\r\n\x1a\n" + bytes(range(200)), "bad_image", "")
    refused(store, b"definitely not an image", "bad_image", "not a decodable image")


def test_truncated_png_rejected(store):
    # Noise so the pixel data is long enough to cut in the middle of the compressed stream.
    im = Image.frombytes("RGB", (64, 64), bytes((i * 37) % 256 for i in range(64 * 64 * 3)))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    data = buf.getvalue()
    refused(store, data[: len(data) * 2 // 3], "bad_image", "image does not decode")


def test_truncated_jpeg_rejected(store):
    im = Image.frombytes("RGB", (64, 64), bytes((i * 37) % 256 for i in range(64 * 64 * 3)))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=95)
    cut = buf.getvalue()[: len(buf.getvalue()) // 2]
    with Image.open(io.BytesIO(cut)) as check:
        check.verify()  # verify() alone accepts a cut JPEG: only the full decode finds it
    refused(store, cut, "bad_image", "image does not decode")


def test_relative_path_resolves_against_base_dir(store, tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(png())
    assert store.add("imgs/a.png", tmp_path) == store.add("imgs/../imgs/./a.png", tmp_path)


def test_dotdot_escape_refused(store, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(png())  # exists, but outside the root
    refused(store, "../secret.png", "image_escape", "image path escapes image_root", root)
    refused(store, "sub/../../secret.png", "image_escape", "image path escapes image_root", root)


def test_absolute_path_and_file_url_allowed_inside_the_roots(store, tmp_path):
    # Was: an absolute path or file:// URL anywhere was read (issue: containment only covered
    # relative paths). Now they are read when their real path is under the source's root or
    # ingest.image_roots, and refused otherwise (tests/unit/test_hostile_inputs.py).
    path = tmp_path / "elsewhere" / "b c.png"
    path.parent.mkdir()
    path.write_bytes(png("yellow"))
    name = store.add(str(path), tmp_path / "elsewhere")
    assert store.add(path.as_uri(), tmp_path / "elsewhere") == name  # file:///.../b%20c.png
    refused(store, str(path), "image_escape", "image path escapes image_root", tmp_path / "unrelated")
    refused(store, path.as_uri(), "image_escape", "image path escapes image_root", tmp_path / "unrelated")
    extra = ImageStore(tmp_path / "store", max_bytes=1 << 20, image_roots=[tmp_path / "elsewhere"])
    assert extra.add(str(path), tmp_path / "unrelated") == name


def test_remote_urls_quarantined(store):
    refused(store, "https://example.com/cat.png", "remote_image",
            "remote image URL not fetched (no network); mirror it locally")
    refused(store, "s3://bucket/cat.png", "remote_image", "s3:// image URL not fetched")


def test_data_url(store):
    data = png()
    assert store.add("data:image/png;base64," + base64.b64encode(data).decode()) == \
        f"{hashlib.sha256(data).hexdigest()}.png"
    refused(store, "data:image/png;base64,@@@", "bad_image", "not valid base64")


def test_missing_and_non_file_paths(store, tmp_path):
    refused(store, "nope.png", "missing_image", "image file not found: nope.png", tmp_path)
    (tmp_path / "dir.png").mkdir()
    refused(store, "dir.png", "missing_image", "not a file", tmp_path)
    refused(store, "", "missing_image", "empty image path", tmp_path)


def test_hf_dict_forms(store, tmp_path):
    data = png("purple")
    (tmp_path / "p.png").write_bytes(data)
    assert store.add({"bytes": data, "path": "ignored.png"}) == store.add({"bytes": None, "path": "p.png"}, tmp_path)
    refused(store, {"bytes": None, "path": None}, "wrong_type", "neither bytes nor path")
    refused(store, 42, "wrong_type", "image is int")


def test_pil_image_stored_as_png(store):
    im = Image.new("RGB", (10, 12), (1, 2, 3))
    name = store.add(im)
    assert name.endswith(".png")
    with Image.open(store.path_of(name)) as back:
        assert back.format == "PNG" and back.size == (10, 12) and back.getpixel((3, 4)) == (1, 2, 3)
    # Modes PNG cannot hold are converted, not refused.
    assert store.add(Image.new("CMYK", (4, 4), (0, 0, 0, 0))).endswith(".png")


def test_size_limit(tmp_path):
    small = ImageStore(tmp_path / "store", max_bytes=50)
    data = png()
    assert len(data) > 50
    (tmp_path / "big.png").write_bytes(data)
    refused(small, data, "image_too_large", "over ingest.max_image_bytes=50")
    refused(small, "big.png", "image_too_large", "over ingest.max_image_bytes=50", tmp_path)


def test_add_all_is_all_or_nothing(store):
    with pytest.raises(BadRow) as info:
        store.add_all([png("red"), b"garbage"])
    assert info.value.kind == "bad_image" and info.value.reason.startswith("image 2: ")
    assert stored_files(store) == []  # the good first image was not written
    assert len(store.add_all([png("red"), png("red"), jpeg()])) == 3
    assert len(stored_files(store)) == 2
