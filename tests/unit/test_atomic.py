"""Resumable outputs: a crash between commits loses nothing and duplicates nothing."""

from __future__ import annotations

import json

import pytest

from ain.atomic import ResumableJsonl, atomic_write_text, publish_dir


def run_items(tmp_path, n_items, crash_after=None, commit_every=3):
    out = ResumableJsonl({"a": tmp_path / "a.jsonl", "b": tmp_path / "b.jsonl"}, tmp_path / "state.json")
    for item in range(out.position, n_items):
        out.write("a", {"item": item})
        if item % 2 == 0:
            out.write("b", {"even": item})
        out.count("items")
        if (item + 1) % commit_every == 0 or item + 1 == n_items:
            out.commit(item + 1)
        if crash_after is not None and item + 1 == crash_after:
            out.close()  # the process dies: rows after the last commit are in the partial file
            return None
    return out.finish()


def test_crash_between_commits_then_resume_is_exact(tmp_path):
    straight = tmp_path / "straight"
    straight.mkdir()
    expected = run_items(straight, 10)
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    assert run_items(crashed, 10, crash_after=7) is None       # committed 6, wrote 7
    assert not (crashed / "a.jsonl").exists()                  # nothing published yet
    assert json.loads((crashed / "state.json").read_text())["position"] == 6
    files = run_items(crashed, 10)
    assert (crashed / "a.jsonl").read_bytes() == (straight / "a.jsonl").read_bytes()
    assert (crashed / "b.jsonl").read_bytes() == (straight / "b.jsonl").read_bytes()
    assert files == expected and files["a"]["rows"] == 10 and files["b"]["rows"] == 5


def test_counters_survive_a_restart(tmp_path):
    run_items(tmp_path, 10, crash_after=7)
    out = ResumableJsonl({"a": tmp_path / "a.jsonl", "b": tmp_path / "b.jsonl"}, tmp_path / "state.json")
    assert out.position == 6 and out.counters == {"items": 6}
    out.close()


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_text(tmp_path / "x.txt", "hello")
    assert (tmp_path / "x.txt").read_text() == "hello"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_killed_after_finish_before_marker_republishes_the_same_bytes(tmp_path):
    first = run_items(tmp_path, 10)
    published = (tmp_path / "a.jsonl").read_bytes()
    again = run_items(tmp_path, 10)       # the task re-runs: state says everything was committed
    assert again == first and (tmp_path / "a.jsonl").read_bytes() == published


def test_truncated_partial_is_an_error_not_nul_padding(tmp_path):
    run_items(tmp_path, 10, crash_after=7)
    (tmp_path / "a.jsonl.partial").write_bytes(b"")
    import pytest
    with pytest.raises(RuntimeError, match="shorter than"):
        ResumableJsonl({"a": tmp_path / "a.jsonl"}, tmp_path / "state.json")


def test_publish_dir_replaces_whole_directories_and_keeps_the_old_one_on_failure(tmp_path):
    final = tmp_path / "model"
    with publish_dir(final) as staging:
        staging.mkdir()
        (staging / "a.bin").write_text("v1")
    assert (final / "a.bin").read_text() == "v1"
    with pytest.raises(RuntimeError), publish_dir(final) as staging:
        staging.mkdir()
        (staging / "a.bin").write_text("half")
        raise RuntimeError("killed mid-build")
    assert (final / "a.bin").read_text() == "v1"           # the old complete directory stays
    (tmp_path / ".model.tmp-999").mkdir()                   # left by a process killed mid-build
    with publish_dir(final) as staging:
        staging.mkdir()
        (staging / "b.bin").write_text("v2")
    assert sorted(p.name for p in final.iterdir()) == ["b.bin"]     # replaced, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no leftovers
    with pytest.raises(FileNotFoundError, match="nothing was built"), publish_dir(final):
        pass


def test_append_only_cache_preloads_what_it_lacks_and_counts_reuse(tmp_path):
    from ain.atomic import AppendOnlyCache

    sibling = tmp_path / "sibling.jsonl"
    with AppendOnlyCache(sibling) as other:
        other.put_entry({"key": "a", "v": "theirs"})
        other.put_entry({"key": "b", "v": "theirs"})
    sibling.open("a").write('not json\n{"key": "c"')  # a bad line and a torn one: skipped
    with AppendOnlyCache(tmp_path / "own.jsonl") as cache:
        cache.put_entry({"key": "a", "v": "ours"})
        assert cache.preload([sibling, tmp_path / "missing.jsonl"]) == 1    # only b: a is ours already
        assert cache.get("a")["v"] == "ours" and cache.reused == 0
        assert cache.get("b")["v"] == "theirs" and cache.reused == 1
        assert cache.get("c") is None and (cache.written, len(cache)) == (1, 2)
