"""Disk full while publishing: a small tmpfs mounted for the test (needs root; skipped otherwise)
is filled, then an atomic write, a resumable commit and a pack task run out of space. Each gives
a clear error (ENOSPC, "No space left on device"), and nothing that looks valid is left behind:
no temp file, no shard under a final name that fails its checksum, no manifest, no marker. After
space is freed the re-run gives the same bytes as a run that never saw the fault."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

from ain.atomic import ResumableJsonl, atomic_write_bytes
from ain.data.shards import iter_shard, verify_shard
from ain.rundir import RunDir
from tests.unit.test_pack import digests, ingested, make_cfg, make_run, pack_out, run_task  # noqa: F401
from tests.unit.test_train_loop import _run, vl_setup  # noqa: F401

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@contextlib.contextmanager
def small_disk(path: Path, size_kb: int):
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k,mode=0700", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(disk: Path, leave_bytes: int) -> Path:
    """Take all free space but about `leave_bytes` (tmpfs counts whole pages)."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            f.write(b"\0" * max(0, free - leave_bytes))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_atomic_write_on_a_full_disk_keeps_the_old_file_and_no_temp(tmp_path):
    with small_disk(tmp_path / "disk", 256) as disk:
        target = disk / "checkpoint.json"
        atomic_write_bytes(target, b'{"step": 1}')
        fill(disk, 4096)
        with pytest.raises(OSError) as info:
            atomic_write_bytes(target, b"x" * 200_000)
        assert info.value.errno == errno.ENOSPC and "No space left" in str(info.value)
        assert target.read_bytes() == b'{"step": 1}'              # the previous version is intact
        assert sorted(p.name for p in disk.iterdir()) == ["checkpoint.json", "filler"]  # no temp left


def test_resumable_commit_on_a_full_disk_then_resume_loses_nothing(tmp_path):
    with small_disk(tmp_path / "disk", 256) as disk:
        files, state = {"rows": disk / "rows.jsonl"}, disk / "state.json"
        out = ResumableJsonl(files, state)
        for i in range(10):
            out.write("rows", {"i": i})
        out.commit(10)
        filler = fill(disk, 0)
        with pytest.raises(OSError) as info:
            for i in range(10, 5000):
                out.write("rows", {"i": i, "pad": "x" * 100})
            out.commit(5000)
        assert info.value.errno == errno.ENOSPC
        out.close()
        assert json.loads(state.read_text())["position"] == 10     # the commit that failed is not recorded
        assert not files["rows"].exists()                          # nothing published
        filler.unlink()
        again = ResumableJsonl(files, state)
        assert again.position == 10
        for i in range(10, 20):
            again.write("rows", {"i": i})
        again.commit(20)
        again.finish()
        assert [json.loads(line)["i"] for line in files["rows"].read_text().splitlines()] == list(range(20))


def test_pack_on_a_full_disk_leaves_no_valid_looking_shard_then_rerun_is_exact(ingested, tmp_path):  # noqa: F811
    cfg = make_cfg(num_tasks=1, target_mb=0.004, max_samples=4)
    clean = make_run(ingested, tmp_path / "clean")
    run_task(clean, cfg, 0)
    clean_bytes = sum(p.stat().st_size for p in pack_out(clean).iterdir())

    with small_disk(tmp_path / "disk", 1024) as disk:
        root = make_run(ingested, disk)
        filler = fill(disk, clean_bytes // 2)  # room for about half of the shards
        with pytest.raises(OSError) as info:
            run_task(root, cfg, 0)
        assert info.value.errno == errno.ENOSPC, info.value
        out = pack_out(root)
        assert not (out / "manifest-00000.jsonl").exists()
        assert not RunDir(root).stage("pack").marker(0).exists()
        listed = [json.loads(line) for line in (out / "manifest-00000.jsonl.partial").read_text().splitlines()
                  if line.strip()] if (out / "manifest-00000.jsonl.partial").exists() else []
        committed = json.loads(RunDir(root).stage("pack").state_file(0).read_text())["counters"].get("shards", 0) \
            if RunDir(root).stage("pack").state_file(0).exists() else 0
        for e in listed[:committed]:
            verify_shard(out / e["shard"], e)  # what a commit lists is whole
        for path in out.glob("*.tar"):  # anything under a final name is a complete tar
            assert len(list(iter_shard(path))) > 0
        assert not list(out.glob("*.tar.partial"))  # the shard being written was discarded

        filler.unlink()
        run_task(root, cfg, 0)
        assert digests(out) == digests(pack_out(clean))


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.mark.slow
def test_deepspeed_checkpoint_on_a_full_disk_fails_clearly_and_the_previous_one_resumes(vl_setup):  # noqa: F811
    """A real ZeRO-3 save runs out of space: the checkpoint directory is a tmpfs with room for one
    checkpoint and a half, so step 2's save fits and step 4's does not. The job fails with
    CheckpointWriteError naming the checkpoint and the tag `latest` still names; `latest` stays on
    step 2. After the disk is grown (remount), the re-run deletes the half-written step 4, resumes
    from step 2 and its losses equal an uninterrupted run's."""
    root = vl_setup
    full = _run(root, "df_full", 3, 6, "ckpt_df_full", save_every=2)
    one_checkpoint = _tree_bytes(root / "ckpt_df_full" / "step4")  # step2 was pruned (keep 2)
    size_kb = int(one_checkpoint * 1.5) // 1024 + 256  # + room for metrics, sample ids, TensorBoard
    with small_disk(root / "ckpt_df", size_kb) as disk:
        failed = _run(root, "df_fail", 3, 6, "ckpt_df", save_every=2, expect_rc=1)
        assert "CheckpointWriteError" in failed["stderr"], failed["stderr"][-3000:]
        message = failed["stderr"][failed["stderr"].index("CheckpointWriteError"):]
        assert f"{disk / 'step4'} could not be written" in message and "MB free on that filesystem" in message
        assert "`latest` still names step2" in message
        assert (disk / "latest").read_text() == "step2"

        subprocess.run(["mount", "-o", f"remount,size={size_kb * 4}k", str(disk)], check=True)
        resumed = _run(root, "df_resumed", 3, 6, "ckpt_df", save_every=2)
        assert resumed["resumed_from_step"] == 2 and resumed["steps"] == 6
        assert max(abs(x - y) for x, y in zip(resumed["losses"], full["losses"][2:])) <= 1e-5
        assert (disk / "latest").read_text() == "step6"
        assert sorted(p.name for p in disk.glob("step*")) == ["step4", "step6"]
        assert _tree_bytes(disk / "step4") == one_checkpoint  # rewritten whole, not the torn one
