"""Built-in backends: ``cpu``, ``cuda`` (one GPU), ``ddp`` (torch.distributed data parallelism,
launched by torchrun or by ``nalign run`` itself) and ``xla`` (torch-xla's PJRT runtime: TPU, or
its CPU device in tests). Each is one module; ``xla`` imports torch-xla only when built.
"""

from neural_alignment.plugins.backends.ddp import DDPBackend
from neural_alignment.plugins.backends.local import CPUBackend, CUDABackend
from neural_alignment.plugins.backends.xla import XLABackend
from neural_alignment.registry.markers import hookimpl


@hookimpl
def register_backends(register):
    register("cpu", CPUBackend)
    register("cuda", CUDABackend)
    register("ddp", DDPBackend)
    register("xla", XLABackend)
