"""Built-in loggers: the JSONL record, the console lines, and a real offline W&B run read back
from the ``.wandb`` file it wrote (no mocks)."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest
import torch
from tqdm import tqdm

from neural_alignment.core.errors import UserError
from neural_alignment.plugins.loggers.wandb_logger import resolve_mode
from neural_alignment.registry import Registry
from neural_alignment.runtime.logger import Logger, layer_metric_key

CONFIG = {"model": {"arch": "mlp", "options": {"hidden": [8]}}, "rule": {"name": "kp"}}


@pytest.fixture(scope="module")
def loggers():
    return Registry(autoload=False).catalog("loggers")


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """No W&B credentials or settings from the machine; W&B quiet; its caches in tmp."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_DIR", "WANDB_PROJECT", "WANDB_ENTITY"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / "netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / "config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(home / "cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(home / "data"))
    return home


def test_layer_metric_key():
    assert layer_metric_key("angle", "features.block1.conv") == "angle/features.block1.conv"


def test_jsonl_appends_flushed_lines_and_writes_summary(tmp_path, loggers):
    run_dir = tmp_path / "run"
    logger = loggers.get("jsonl")(run_dir, "demo", CONFIG)
    assert isinstance(logger, Logger)
    logger.log({"loss": torch.tensor(0.25), "angle/fc": 12.5}, step=10)
    # flushed at once: readable before close (a killed run keeps its record)
    assert json.loads((run_dir / "metrics.jsonl").read_text()) == {"step": 10, "loss": 0.25, "angle/fc": 12.5}
    logger.log({"loss": float("nan"), "test_acc": 0.5}, step=20)
    logger.close({"test_acc": 0.5, "steps": 20})
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["step"] == 20 and rows[1]["test_acc"] == 0.5 and rows[1]["loss"] != rows[1]["loss"]  # NaN kept
    assert json.loads((run_dir / "summary.json").read_text()) == {"test_acc": 0.5, "steps": 20}
    resumed = loggers.get("jsonl")(run_dir, "demo", CONFIG)
    resumed.log({"loss": 0.1}, step=30)
    resumed.close({"steps": 30})
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [10, 20, 30]
    assert not list(run_dir.glob("*.tmp"))


def test_console_lines_keep_a_progress_bar_intact(tmp_path, loggers, capsys):
    logger = loggers.get("console")(tmp_path, "fmnist-kp", CONFIG, precision=3)
    with tqdm(total=2, file=None, disable=False) as bar:
        logger.log({"loss": 0.123456, "test_acc": torch.tensor(0.875), "angle/fc": 3.0}, step=100)
        bar.update(1)
    logger.close({"test_acc": 0.9, "status": "finished"})
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[")]
    assert lines == ["[fmnist-kp] step 100  loss 0.123  test_acc 0.875", "[fmnist-kp] done  test_acc 0.9"]
    picked = loggers.get("console")(tmp_path, "r", CONFIG, keys=["angle/fc"], stream="stdout")
    picked.log({"loss": 1.0, "angle/fc": 3.0}, step=1)
    assert capsys.readouterr().out.strip() == "[r] step 1  angle/fc 3"


def test_logger_option_errors(tmp_path, loggers):
    with pytest.raises(UserError, match="unknown option 'path' for logger 'jsonl'"):
        loggers.get("jsonl")(tmp_path, "r", CONFIG, path="x")
    with pytest.raises(UserError, match=r"'stream'.*stderr, stdout"):
        loggers.get("console")(tmp_path, "r", CONFIG, stream="file")


def test_wandb_mode_resolution(wandb_env, monkeypatch):
    assert resolve_mode(None) == "offline"
    assert resolve_mode("disabled") == "disabled"
    with pytest.raises(UserError, match=r"no credentials.*wandb login"):
        resolve_mode("online")
    with pytest.raises(UserError, match=r"'sometimes'.*online, offline, disabled"):
        resolve_mode("sometimes")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode(None) == "disabled" and resolve_mode("offline") == "offline"
    monkeypatch.delenv("WANDB_MODE")
    (wandb_env / "netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "a" * 40 + "\n")
    assert resolve_mode(None) == "online"  # what `wandb login` leaves behind
    (wandb_env / "netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "b" * 40)
    assert resolve_mode(None) == "online"


def read_wandb_records(path: Path):
    """The protobuf records of a ``.wandb`` transaction log.

    Format (wandb's LevelDB-style log): a 7-byte header ``:W&B`` + magic + version, then
    32 KiB blocks of chunks, each ``crc32 (4) | length (2, little-endian) | type (1) | payload``;
    type 1 is a whole record, 2/3/4 first/middle/last pieces. Payloads are wandb's own
    ``wandb_internal_pb2.Record`` messages.
    """
    from wandb.proto import wandb_internal_pb2

    block = 32 * 1024
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pieces = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the tail of a block too short for a chunk header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pieces += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            pieces = b""
            yield record


def finished_records(path: Path, timeout: float = 60.0) -> list:
    """The records once the log holds the run's exit record.

    ``run.finish()`` can return before wandb-core has written its buffer to the file (the
    service flushes asynchronously), so wait for the exit record rather than read once.
    """
    deadline = time.monotonic() + timeout
    while True:
        records = list(read_wandb_records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert "exit" in [r.WhichOneof("record_type") for r in records], "the run was not finished"
    return records


def item_key(item) -> str:
    return item.key or ".".join(item.nested_key)


def test_wandb_offline_run_records_name_config_metrics_and_summary(tmp_path, wandb_env, loggers):
    run_dir = tmp_path / "runs" / "fmnist-convnet-kp"
    logger = loggers.get("wandb")(run_dir, "fmnist-convnet-kp", CONFIG, tags=["test"])
    for step in (0, 25, 50):
        logger.log(
            {"loss": 2.0 / (step + 1), "angle/features.block1.conv": 90.0 - step, "angle/classifier.1": 80.0 - step},
            step=step,
        )
    logger.close({"test_acc": 0.875, "mean_weight_angle": 12.5})

    (log_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    records = finished_records(log_file)

    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.display_name == "fmnist-convnet-kp" and run.project == "neural-alignment"
    assert list(run.tags) == ["test"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["model"] == CONFIG["model"] and config["rule"] == CONFIG["rule"]

    history = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            history.append({item_key(i): json.loads(i.value_json) for i in r.history.item})
    assert [h["_step"] for h in history] == [0, 25, 50]
    assert [h["angle/features.block1.conv"] for h in history] == [90.0, 65.0, 40.0]
    assert [h["angle/classifier.1"] for h in history] == [80.0, 55.0, 30.0]
    assert history[1]["loss"] == pytest.approx(2.0 / 26)

    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({item_key(i): json.loads(i.value_json) for i in r.summary.update})
    assert summary["test_acc"] == 0.875 and summary["mean_weight_angle"] == 12.5
    assert summary["angle/classifier.1"] == 30.0  # last logged value

    # one chart with a line per layer: a W&B line series whose table lists (step, layer, value)
    (table_file,) = log_file.parent.glob("files/media/table/angle/all_layers_table_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["step", "lineKey", "lineVal"]
    assert sorted(map(tuple, table["data"])) == sorted(
        [(s, "features.block1.conv", 90.0 - s) for s in (0, 25, 50)]
        + [(s, "classifier.1", 80.0 - s) for s in (0, 25, 50)]
    )
