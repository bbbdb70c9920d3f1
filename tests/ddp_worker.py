"""Run under torchrun by tests/test_ddp.py: train a tiny MLP for each rule on the ddp backend.

``python -m torch.distributed.run --nproc-per-node=2 tests/ddp_worker.py OUT NAME...`` trains
``tests.test_ddp.variant(name, ddp=True)`` into ``OUT/<name>`` for each name, with the
real Trainer in every process (the process group is created by the first and reused).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_ddp import variant

from neural_alignment.training.trainer import train

if __name__ == "__main__":
    out, names = Path(sys.argv[1]), sys.argv[2:]
    for name in names:
        train(variant(name, ddp=True), out / name)
