"""Built-in architectures: ``mlp``, ``convnet``, ResNet v1 ``resnet{18,34,50,101,152,200}`` and
v2 ``resnet{...}_v2``, the vision transformer ``vit``.

Every builder is ``builder(num_classes, in_shape, **options) -> nn.Module`` and uses plain
torch layers only; the trainer turns them into aligned networks with
``neural_alignment.convert(model, rule)``.
"""

from neural_alignment.plugins.architectures.convnet import convnet
from neural_alignment.plugins.architectures.mlp import mlp
from neural_alignment.plugins.architectures.resnet import RESNETS
from neural_alignment.plugins.architectures.vit import vit
from neural_alignment.registry.markers import hookimpl


@hookimpl
def register_architectures(register):
    register("mlp", mlp)
    register("convnet", convnet)
    for name, builder in RESNETS.items():
        register(name, builder)
    register("vit", vit)
