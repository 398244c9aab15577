"""normalize_row: each layout on hand-written rows, and every reason a row is refused."""

from __future__ import annotations

import pytest

from ain.data.config import IngestSource
from ain.data.normalize import detect_language, detect_style, normalize_row
from ain.data.schema import BadRow, Sample, safe_key


class FakeImages:
    """Stands in for ImageStore.add_all: names image k as <k in 64 hex digits>.png."""

    def __init__(self) -> None:
        self.calls: list[list] = []

    def __call__(self, specs: list) -> list[str]:
        self.calls.append(list(specs))
        return [f"{k:064x}.png" for k in range(len(specs))]


def norm(row, images=None, **src):
    return normalize_row(row, src=IngestSource(path="x.jsonl", **src), source="src", file="x.jsonl",
                         row_index=7, add_images=images or FakeImages())


def bad(row, kind, fragment, **src):
    images = FakeImages()
    with pytest.raises(BadRow) as info:
        norm(row, images, **src)
    assert info.value.kind == kind, info.value.reason
    assert fragment in info.value.reason
    assert images.calls == []  # a refused row never reaches the image store
    return info.value


# ------------------------------------------------------------------------------- good layouts
def test_native_row():
    images = FakeImages()
    s = norm({"turns": [{"role": "user", "content": "<image>\nما لون المربع؟"},
                        {"role": "assistant", "content": "المربع أحمر."}],
              "images": ["a.png"], "language": "ar", "domain": "charts", "authentic": False, "id": 12},
             images)
    assert isinstance(s, Sample)
    assert s.id == "src-7" and s.source == "src"
    assert s.language == "ar" and s.domain == "charts" and s.authentic is False
    assert s.images == [f"{0:064x}.png"] and images.calls == [["a.png"]]
    assert s.origin == {"file": "x.jsonl", "row": 7, "id": "12"}
    assert s.turns[1] == {"role": "assistant", "content": "المربع أحمر."}


def test_llava_row_maps_roles_and_adds_missing_placeholder():
    s = norm({"id": "000000033471", "image": "coco/33471.jpg",
              "conversations": [{"from": "system", "value": "Be brief."},
                                {"from": "human", "value": "What colour is the square?"},
                                {"from": "gpt", "value": "The square is red."}]})
    assert [t["role"] for t in s.turns] == ["system", "user", "assistant"]
    # LLaVA rows often carry the image with no placeholder: it goes before the first user text.
    assert s.turns[1]["content"] == "<image>\nWhat colour is the square?"
    assert s.turns[0]["content"] == "Be brief."
    assert len(s.images) == 1 and s.language == "en" and s.domain == "general" and s.authentic is True
    assert s.origin["id"] == "000000033471"


def test_llava_row_with_image_list_and_placeholders():
    images = FakeImages()
    s = norm({"images": ["a.png", "b.png"],
              "conversations": [{"from": "human", "value": "<image> and <image>: same?"},
                                {"from": "gpt", "value": "No."}]}, images)
    assert images.calls == [["a.png", "b.png"]] and len(s.images) == 2
    assert s.turns[0]["content"] == "<image> and <image>: same?"


def test_llava_text_only_row_has_no_images():
    images = FakeImages()
    s = norm({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}, images)
    assert s.images == [] and images.calls == []


def test_sharegpt_row_with_content_parts():
    s = norm({"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},
                           {"role": "assistant", "content": [{"type": "text", "text": "Blue."}]}],
              "images": ["c.png"]})
    assert s.turns == [{"role": "user", "content": "<image>\nColour?"}, {"role": "assistant", "content": "Blue."}]
    assert len(s.images) == 1


def test_source_settings_override_row_fields():
    s = norm({"turns": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi"}],
              "language": "en", "domain": "ocr", "authentic": True},
             language="ar", domain="medical", authentic=False)
    assert (s.language, s.domain, s.authentic) == ("ar", "medical", False)


def test_explicit_style_is_used_instead_of_detection():
    row = {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}
    assert norm(row, style="llava").turns[0]["role"] == "user"
    bad(row, "missing_field", "missing field 'turns'", style="native")


def test_language_detection():
    assert detect_language("ما لون المربع؟ المربع أحمر.") == "ar"
    assert detect_language("What colour is the square?") == "en"
    # The <image> placeholder is Latin text and must not outvote a short Arabic question.
    assert detect_language("<image>\n<image>\n<image>\nلون؟") == "ar"
    assert detect_language("Please translate this word: مربع") == "en"  # 4 of 26 letters Arabic
    assert detect_language("Translate: مربع") == "ar"  # 4 of 13 letters: just over 30%
    assert detect_language("12345 !?") == "en"
    s = norm({"turns": [{"role": "user", "content": "<image>\nما لون المثلث؟"},
                        {"role": "assistant", "content": "المثلث أصفر."}], "images": ["t.png"]})
    assert s.language == "ar"


def test_detect_style():
    assert detect_style({"turns": []}) == "native"
    assert detect_style({"conversations": []}) == "llava"
    assert detect_style({"messages": []}) == "sharegpt"


def test_safe_key_and_sample_validation():
    assert safe_key("my.data/set v2") == "my_data_set_v2"
    assert safe_key("...") == "_"
    sample = norm({"turns": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
    sample.id = "has.dot"
    with pytest.raises(ValueError, match="has characters outside"):
        sample.validate()
    assert Sample.from_json(norm({"turns": [{"role": "user", "content": "a"},
                                            {"role": "assistant", "content": "b"}]}).to_json()).id == "src-7"


# --------------------------------------------------------------------------------- bad rows
USER = {"from": "human", "value": "<image>\nWhat is it?"}
GPT = {"from": "gpt", "value": "A square."}


@pytest.mark.parametrize("row, kind, fragment", [
    ([1, 2], "wrong_type", "row is list"),
    ({"text": "hello"}, "unknown_style", "cannot tell the conversation layout"),
    ({"conversations": []}, "empty_conversation", "empty conversation"),
    ({"turns": None}, "empty_conversation", "empty conversation"),
    ({"conversations": "hi"}, "wrong_type", "conversations is str, expected a list"),
    ({"conversations": ["hi", GPT]}, "wrong_type", "turn 1 is str, expected an object"),
    ({"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": 4}]},
     "wrong_type", "turn 2: content is int, expected string"),
    ({"conversations": [{"from": "human", "value": None}, GPT]}, "wrong_type", "turn 1: content is null"),
    ({"conversations": [{"from": "human"}, GPT]}, "missing_field", "turn 1: missing field 'value'"),
    ({"conversations": [{"value": "x"}, GPT]}, "missing_field", "turn 1: missing field 'from'"),
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "bot", "value": "Hello"}]},
     "bad_role", "turn 2: from 'bot' is not one of"),
    ({"turns": [{"role": "human", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
     "bad_role", "turn 1: role 'human'"),
    ({"conversations": [{"from": "human", "value": "   "}, GPT]}, "empty_turn", "turn 1: empty content"),
    ({"conversations": [USER], "image": "a.png"}, "no_assistant", "no assistant turn"),
    ({"conversations": [{"from": "system", "value": "s"}, GPT]}, "no_user", "no user turn"),
    ({"conversations": [{"from": "human", "value": "<image><image>"}, GPT], "image": "a.png"},
     "image_mismatch", "2 <image> placeholder(s) in the text for 1 image(s)"),
    ({"conversations": [USER, GPT]}, "image_mismatch", "1 <image> placeholder(s) in the text for 0 image(s)"),
    ({"conversations": [USER, GPT], "images": ["a.png", None]}, "wrong_type", "images contains null"),
    ({"conversations": [USER, GPT], "image": 5}, "wrong_type", "image is int"),
    ({"messages": [{"role": "user", "content": [{"type": "audio"}]}, {"role": "assistant", "content": "x"}]},
     "wrong_type", "turn 1: content part 1"),
    ({"conversations": [USER, GPT], "image": "a.png", "language": "fr"}, "bad_value", "language 'fr'"),
    ({"conversations": [USER, GPT], "image": "a.png", "domain": ""}, "bad_value", "domain is ''"),
    ({"conversations": [USER, GPT], "image": "a.png", "authentic": "yes"}, "wrong_type",
     "authentic is str, expected true or false"),
])
def test_bad_rows(row, kind, fragment):
    bad(row, kind, fragment)


def test_image_errors_pass_through_with_their_kind():
    def failing(specs):
        raise BadRow("image 1: image file not found: a.png", "missing_image")

    with pytest.raises(BadRow) as info:
        norm({"conversations": [USER, GPT], "image": "a.png"}, failing)
    assert info.value.kind == "missing_image"
