"""Searches on a real two-node Ray cluster reached through RAY_ADDRESS, as a user reaches one.

Two ``ray start --block`` nodes (each its own GCS-registered raylet, its own temp folder), on
loopback addresses (127.0.0.2 the head, 127.0.0.3 the worker: Ray rewrites 127.0.0.1 in an
address into the machine's outward IP, so a node on 127.0.0.1 cannot be joined), each declaring
one unit of ``accel``, the stand-in for an accelerator. Every process started is ended in the
fixture's ``finally`` (its process group, then any straggler naming the node's temp folder).
Where the machine allows a private mount namespace (root), the worker node sees an empty tmpfs
over ``hidden/``: the node that cannot see the search folder.
"""

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from neural_alignment.grids.placement import SHARED_MARK  # noqa: E402

RAY = str(Path(sys.executable).with_name("ray"))
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"
ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
SYSTEM_CONFIG = {"health_check_period_ms": 1000, "health_check_timeout_ms": 2000, "health_check_failure_threshold": 4}
RECIPE = """\
name: tiny-cluster-search
base: digits-mlp
rule: {{name: wm}}
data: {{train_limit: 200, test_limit: 60, val_split: 0.25, batch_size: 32}}
model: {{options: {{hidden: [8]}}}}
train: {{steps: {steps}, epochs: null, progress: false, metrics_every: 5, checkpoint_every: 10}}
log: {{loggers: [jsonl]}}
search:
  max_evals: 4
  startup_trials: 2
  trial_resources: {{accel: 1}}
  space:
    rule.noise_std: {{dist: uniform, low: 0.0, high: 1.0}}
    rule.weights.decay: {{dist: loguniform, low: 1.0e-4, high: 1.0e-2}}
"""


class Node:
    """One ``ray start --block`` node in its own process group (``hide``: a folder it sees as an empty tmpfs)."""

    def __init__(self, ip: str, head: str | None = None, resources=None, hide: Path | None = None):
        self.temp = Path(tempfile.mkdtemp(prefix="nr", dir="/tmp"))  # unix socket paths must stay short
        command = [RAY, "start", "--block", f"--node-ip-address={ip}", f"--temp-dir={self.temp}", "--num-cpus=2"]
        command += [f"--resources={json.dumps(resources or {'accel': 1})}", "--object-store-memory=80000000"]
        command += ["--disable-usage-stats"]
        if head is None:
            command += [
                "--head",
                "--port=0",
                "--include-dashboard=false",
                f"--system-config={json.dumps(SYSTEM_CONFIG)}",
            ]
        else:
            command += [f"--address={head}"]
        if hide is not None:
            command = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs tmpfs "$0" && exec "$@"', str(hide), *command]
        self.log = self.temp / "node.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                command, env={**os.environ, **ENV}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ray start failed: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)

    @property
    def address(self) -> str:
        return (self.temp / "ray_current_cluster").read_text().strip()

    def raylet(self) -> psutil.Process:
        return next(p for p in psutil.Process(self.process.pid).children(recursive=True) if p.name() == "raylet")

    def running_trials(self) -> list:
        """This node's Ray workers that run a Tune trial (Ray names their process ``ray::ImplicitFunc...``)."""
        try:
            workers = self.raylet().children(recursive=True)
        except (StopIteration, psutil.Error):
            return []
        return [p for p in workers if "ImplicitFunc" in " ".join(p.cmdline())]

    def stop(self) -> None:
        """End the node: its process group (SIGTERM, then SIGKILL), then anything still naming its temp folder."""
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=5)  # then no waiting for Ray's 30 s drain
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        for p in psutil.process_iter(["cmdline"]):
            if str(self.temp) in " ".join(p.info["cmdline"] or []):
                p.kill()
        shutil.rmtree(self.temp, ignore_errors=True)


def mount_namespaces() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(["unshare", "-m", "true"]).returncode == 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(head, worker, folder): a two-node cluster; the worker sees ``folder / "hidden"`` as an empty tmpfs."""
    folder = tmp_path_factory.mktemp("cluster")
    hidden = folder / "hidden"
    hidden.mkdir()
    nodes = []
    try:
        nodes.append(Node(HEAD_IP))
        nodes.append(Node(WORKER_IP, nodes[0].address, hide=hidden if mount_namespaces() else None))
        yield nodes[0], nodes[1], folder
    finally:
        for node in reversed(nodes):
            node.stop()


@pytest.fixture
def on_cluster(cluster, monkeypatch):
    head, _, _ = cluster
    monkeypatch.setenv("RAY_ADDRESS", head.address)
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    return cluster


def recipe(folder: Path, steps: int) -> str:
    path = folder / f"search-{steps}.yaml"
    path.write_text(RECIPE.format(steps=steps))
    return str(path)


def records(out: Path) -> list[dict]:
    path = out / "trials.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def search_command(folder: Path, out: Path, steps: int, *extra: str) -> list[str]:
    nalign = [sys.executable, "-m", "neural_alignment.cli"]
    return [
        *nalign,
        "search",
        recipe(folder, steps),
        "--out",
        str(out),
        "--backend",
        "ray",
        "--parallelism",
        "4",
        *extra,
    ]


def assert_one_trial_per_node_at_a_time(got: list[dict]) -> None:
    by_node: dict[str, list[tuple[float, float]]] = {}
    for record in got:
        start = record["started_at"]
        by_node.setdefault(record["placement"]["node_id"], []).append((start, start + record["seconds"]))
    for spans in by_node.values():
        spans.sort()
        assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans))


def test_a_node_that_cannot_see_the_search_folder_fails_its_trial_with_the_reason(on_cluster):
    _, _, folder = on_cluster
    if not mount_namespaces():
        pytest.skip("no private mount namespace here (needs root): every node sees every folder")
    out = folder / "hidden" / "search"  # the worker node sees an empty tmpfs at folder/hidden
    # two trials at once, one accel per node: one of them on the worker node
    done = subprocess.run(search_command(folder, out, 4, "--max-evals", "2"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    got = records(out)
    assert len(got) == 2
    on_worker = [r for r in got if r["status"] == "failed"]
    assert on_worker, "no trial ran on the worker node"
    for record in on_worker:
        assert record["error"].startswith("node ")
        assert f"({WORKER_IP}) does not see the driver's folder {out}" in record["error"]
        assert SHARED_MARK in record["error"] and "\n" not in record["error"]
        assert not (out / record["run_dir"]).exists()  # it trained nowhere the driver reads
    assert all(r["placement"]["node_ip"] == HEAD_IP for r in got if r["status"] == "finished")


def test_a_search_killed_and_resumed_ran_one_trial_per_accelerator_on_both_nodes(on_cluster, tmp_path):
    """Parallelism 4, but each trial holds its node's one accel: at most one trial per node at a time,
    on both nodes; the driver killed (SIGKILL) mid-search, the resumed search runs no finished trial again."""
    _, _, folder = on_cluster
    out = tmp_path / "killed"
    driver = subprocess.Popen(search_command(folder, out, 60), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while len(records(out)) < 1 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        driver.kill()  # SIGKILL: no chance for Tune to save anything
        driver.wait()
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    before = records(out)
    assert 1 <= len(before) < 4, "the driver was not killed in the middle of the search"

    # the resumed driver is a process of its own too: Ray keeps its first connection's settings for the
    # life of a process (its auth mode among them), which would leak into later tests' local clusters
    resumed = subprocess.run(
        [sys.executable, "-m", "neural_alignment.cli", "search", "--resume", str(out)], capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = records(out)
    assert len(after) == 4 and len({r["trial"] for r in after}) == 4
    for record in before:  # the same record, started_at included: not trained again
        assert next(r for r in after if r["trial"] == record["trial"]) == record
    assert all(r["status"] == "finished" for r in after), [(r["status"], r.get("error")) for r in after]
    assert {r["placement"]["node_ip"] for r in after} == {HEAD_IP, WORKER_IP}  # both nodes trained
    assert len({r["placement"]["node_id"] for r in after}) == 2
    assert_one_trial_per_node_at_a_time(after)
    for record in after:  # the run's own summary.json says where it ran and with what
        summary = json.loads((out / record["run_dir"] / "summary.json").read_text())
        assert summary["placement"] == record["placement"]
        assert summary["placement"]["resources"] == {"CPU": 1.0, "accel": 1.0}
        assert summary["placement"]["backend"] == "cpu"  # accel is not a GPU or TPU: the recipe's backend


def held_trial_folder(processes: list, trials: Path) -> Path | None:
    """The trial run folder one of ``processes`` holds open (a run holds its folder's lock descriptor as it runs)."""
    for process in processes:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{process.pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = Path(os.readlink(fd))
                    if target.parent == trials:
                        return target
    return None


def logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [json.loads(line)["step"] for line in lines if line.endswith("}")]


def test_a_trial_on_a_killed_node_is_retried_on_another_and_the_search_ends_whole(on_cluster, tmp_path):
    """Last in the module: it kills the worker node (every process of it at once, as a lost machine)
    while the node trains a trial, past its first records and before its end."""
    _, worker, folder = on_cluster
    out = tmp_path / "lost-node"
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen(search_command(folder, out, 400), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        lost = None
        while time.monotonic() < deadline and driver.poll() is None:
            lost = lost or held_trial_folder(worker.running_trials(), out / "trials")
            if lost is not None and any(step > 0 for step in logged_steps(lost)):
                break
            time.sleep(0.05)
        assert lost is not None, f"no trial ran on the worker node: {(tmp_path / 'driver.log').read_text()[-3000:]}"
        node = [psutil.Process(worker.process.pid), *psutil.Process(worker.process.pid).children(recursive=True)]
        for process in node:
            with contextlib.suppress(psutil.Error):
                process.kill()
        assert not (lost / "summary.json").exists(), "the worker's trial ended before its node was killed"
        driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 0
    got = records(out)  # every line parses: the record stays whole
    assert len(got) == 4 and len({r["trial"] for r in got}) == 4
    assert all(r["status"] == "finished" for r in got)  # the lost trial was retried, not dropped
    retried = next(r for r in got if Path(r["run_dir"]).name == lost.name)
    assert retried["placement"]["node_ip"] == HEAD_IP  # on the node that was left
    assert retried["steps"] == 400 and logged_steps(lost)[-1] == 400
    assert_one_trial_per_node_at_a_time(got)
