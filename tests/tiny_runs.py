"""The few-step runs the trainer-level tests share: overrides that make any recipe train on batches
of 32 of scikit-learn's digits with no progress bar, logging to metrics.jsonl only. ``TINY_MLP``: a
16-unit MLP, every step logged; ``TINY_CONVNET``: a convnet with BatchNorm (channels 4 and 8), 6
steps, W trained by ``SGD_MOMENTUM``; ``SGD_MOMENTUM`` pins W's optimizer (SGD, lr 0.05, momentum
0.9); ``DIGITS_MLP_FEW``: for the ``digits-mlp`` recipe itself, an 8-unit MLP on 128 examples,
unscheduled (the recipe's schedules span 20 epochs), the step count left to the test. Each test
file adds its own limits, steps and rule."""

_DIGITS = ["data.dataset=digits", "data.batch_size=32", "train.progress=false", "log.loggers=[jsonl]"]
SGD_MOMENTUM = ["optim.task.name=sgd", "optim.task.lr=0.05", "optim.task.momentum=0.9"]
TINY_MLP = [*_DIGITS, "model.arch=mlp", "model.options.hidden=[16]", "train.metrics_every=1"]
TINY_CONVNET = [*_DIGITS, *SGD_MOMENTUM, "model.arch=convnet", "model.options={channels: [4, 8]}", "train.steps=6"]
DIGITS_MLP_FEW = [
    *_DIGITS,
    "optim.task.schedule=null",
    "optim.alignment.schedule=null",
    "data.train_limit=128",
    "data.test_limit=64",
    "model.options.hidden=[8]",
    "train.epochs=null",
    "train.metrics_every=1",
]
