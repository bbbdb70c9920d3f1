"""A full disk during a checkpoint, on a real small tmpfs (mounted when running as root, else skipped):
one line naming the file, "No space left on device" and the checkpoint that is kept, which still
loads, and the run resumes once there is space again."""

import errno
import os
import subprocess

import pytest
from tiny_runs import TINY_MLP

from neural_alignment.cli import main
from neural_alignment.runtime import checkpoint

TINY = [
    *TINY_MLP,
    "data.train_limit=128",
    "data.test_limit=64",
    "optim.task.schedule=null",  # digits-mlp's schedules span 20 epochs: these few-step runs would be warned
    "optim.alignment.schedule=null",
]


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs at ``tmp_path/disk``."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the full-disk test runs as root (CI does)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def fill(disk, leave):
    """Fill ``disk`` until ``leave`` bytes are free (a file that takes the rest)."""
    stat = os.statvfs(disk)
    with open(disk / "filler", "wb") as handle:
        handle.write(b"\0" * (stat.f_bavail * stat.f_frsize - leave))


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_last_checkpoint(small_disk, capsys):
    run = small_disk / "run"
    assert main(["run", "digits-mlp", *TINY, "train.steps=3", "--out", str(run)]) == 0
    capsys.readouterr()
    fill(small_disk, leave=16 * 1024)  # room for the records, not for a checkpoint (about 30 KB)
    code = main(["run", "--resume", str(run), "train.steps=6", "train.checkpoint_every=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and err[0].startswith(
        f"nalign: error: cannot write {run / 'checkpoint.pt'}: {os.strerror(errno.ENOSPC)} ("
    )
    assert err[0].endswith(
        f"the last checkpoint (step 3) is kept; free space, then continue with: nalign run --resume {run}"
    )
    assert checkpoint.load(run / "checkpoint.pt")["step"] == 3  # whole, and no temporary file left
    assert checkpoint.temporary_files(run / "checkpoint.pt") == []
    (small_disk / "filler").unlink()
    assert main(["run", "--resume", str(run), "train.steps=6"]) == 0
    assert checkpoint.load(run / "checkpoint.pt")["step"] == 6
