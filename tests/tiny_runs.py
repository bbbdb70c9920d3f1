"""The few-step run the trainer-level tests share: overrides that make any recipe train a 16-unit
MLP on batches of 32 of scikit-learn's digits, logging every step to metrics.jsonl only, no
progress bar; ``SGD_MOMENTUM`` pins W's optimizer (SGD, lr 0.05, momentum 0.9). Each test file
adds its own limits, steps and rule."""

TINY_MLP = [
    "data.dataset=digits",
    "data.batch_size=32",
    "model.arch=mlp",
    "model.options.hidden=[16]",
    "train.progress=false",
    "log.loggers=[jsonl]",
    "train.metrics_every=1",
]
SGD_MOMENTUM = ["optim.task.name=sgd", "optim.task.lr=0.05", "optim.task.momentum=0.9"]
