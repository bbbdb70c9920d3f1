"""Built-in datasets. Every builder is ``builder(root=None, **options) -> DataSplits`` and takes
``limit_train``/``limit_test`` (seeded random subsets). A dataset whose files are missing
raises one UserError listing every folder tried and how to get the data.
"""

from neural_alignment.plugins.datasets.cifar import cifar10
from neural_alignment.plugins.datasets.digits import digits
from neural_alignment.plugins.datasets.imagefolder import imagefolder, imagenet
from neural_alignment.plugins.datasets.mnist import fashion_mnist, mnist
from neural_alignment.plugins.datasets.synthetic import synthetic
from neural_alignment.registry.markers import hookimpl


@hookimpl
def register_datasets(register):
    for builder in (digits, fashion_mnist, mnist, cifar10, imagefolder, imagenet, synthetic):
        register(builder.__name__, builder)
