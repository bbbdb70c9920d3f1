"""benchmarks/peers.py without its peer: biotorch missing is a message, and our side still runs."""

import importlib.util
import sys
from pathlib import Path

PEERS = Path(__file__).resolve().parents[1] / "benchmarks" / "peers.py"


def load_peers():
    spec = importlib.util.spec_from_file_location("peers_benchmark", PEERS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_missing_biotorch_is_skipped_with_a_message(monkeypatch, capsys):
    peers = load_peers()
    monkeypatch.setitem(sys.modules, "biotorch", None)  # import biotorch raises ImportError
    monkeypatch.setitem(sys.modules, "biotorch.module.biomodule", None)
    assert peers.main(["--rules", "usf,dfa", "--train-limit", "128", "--test-limit", "500", "--batch-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "peer biotorch skipped" in out and "pip install --no-deps biotorch==0.0.16" in out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| usf") or line.startswith("| dfa")]
    assert [row[0] for row in rows] == ["| usf", "| dfa"]
    for row in rows:  # ours measured, biotorch's columns empty
        assert 0 <= float(row[1]) <= 1 and row[2] == "-" and float(row[5]) > 0 and row[6] == "-"
