"""Direct feedback alignment, loaded in process through the public hooks.

On a small MLP and a small convnet (conv, pooling, conv, linear) the gradient reaching each
aligned layer's input equals e D_l computed here by hand: e the loss gradient at the logits
(autograd on the logits alone), D_l the layer's fixed matrix; the weight gradients follow from
those errors through the activations, written out by hand; D_l is Glorot-uniform, fixed across
steps and restored from a checkpoint.
"""

import math

import neural_alignment_direct_feedback as plugin
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import neural_alignment as na
from neural_alignment import aligned_layers
from neural_alignment.registry import Registry

F64 = torch.float64


def dfa(model: nn.Module) -> nn.Module:
    reg = Registry(autoload=False, extra_plugins=[plugin])  # the plugin in process, not installed
    return na.convert(model, rule="dfa", registry=reg)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return dfa(nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).double())


def convnet() -> nn.Module:
    torch.manual_seed(0)
    return dfa(
        nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(3, 4, 3, stride=2, padding=1),
            nn.Tanh(),
            nn.Flatten(),
            nn.Linear(4 * 2 * 2, 3),
        ).double()
    )


def input_gradients(model: nn.Module, x: torch.Tensor, targets: torch.Tensor):
    """(e, {layer name: (input, gradient at its input)}) of one cross-entropy backward."""
    inputs = {}

    def keep(name):
        def hook(module, args):
            args[0].retain_grad()
            inputs[name] = args[0]

        return hook

    handles = [layer.register_forward_pre_hook(keep(name)) for name, layer in aligned_layers(model)]
    logits = model(x)
    for handle in handles:
        handle.remove()
    loss = F.cross_entropy(logits, targets)
    (e,) = torch.autograd.grad(loss, logits, retain_graph=True)
    loss.backward()
    return e, {name: (inputs[name].detach(), inputs[name].grad) for name in inputs}


def feedback_matrix(layer) -> torch.Tensor:
    return layer.direct_feedback_matrix


def check_every_input_gradient_is_e_times_d(model, x, targets):
    e, seen = input_gradients(model, x, targets)
    for name, layer in aligned_layers(model):
        inputs, grad = seen[name]
        D = feedback_matrix(layer)
        n_in = math.prod(inputs.shape[1:])
        assert D.shape == (e.shape[1], n_in)
        assert D.abs().max() <= math.sqrt(6 / (e.shape[1] + n_in))
        by_hand = torch.stack([e[i] @ D for i in range(len(e))]).view_as(inputs)
        torch.testing.assert_close(grad, by_hand, rtol=1e-12, atol=1e-15)
    return e, seen


def test_mlp_input_gradients_are_e_d_and_weight_gradients_follow():
    model = mlp()
    x = torch.randn(7, 6, dtype=F64, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    e, seen = check_every_input_gradient_is_e_times_d(model, x, targets)
    first, second, last = model[0], model[2], model[4]
    h1, h2 = seen["2"][0], seen["4"][0]
    d2 = (e @ last.direct_feedback_matrix) * (h2 > 0)  # ReLU': error of the second layer
    d1 = (e @ second.direct_feedback_matrix) * (1 - h1**2)  # tanh': error of the first layer
    torch.testing.assert_close(last.weight.grad, e.t() @ h2, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(second.weight.grad, d2.t() @ h1, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(first.weight.grad, d1.t() @ x.detach(), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(first.bias.grad, d1.sum(0), rtol=1e-12, atol=1e-15)


def test_convnet_input_gradients_are_e_d_including_conv_layers():
    model = convnet()
    x = torch.randn(5, 2, 8, 8, dtype=F64, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 1, 0])
    e, seen = check_every_input_gradient_is_e_times_d(model, x, targets)
    conv2 = model[3]
    h = seen["3"][0]  # pooled ReLU output, [5, 3, 4, 4]
    assert conv2.direct_feedback_matrix.shape == (3, 3 * 4 * 4)
    a2 = conv2(h).detach()
    d2 = (e @ model[6].direct_feedback_matrix).view_as(a2) * (1 - torch.tanh(a2) ** 2)
    torch.testing.assert_close(
        conv2.weight.grad, torch.nn.grad.conv2d_weight(h, conv2.weight.shape, d2, 2, 1), rtol=1e-12, atol=1e-15
    )


def test_feedback_matrices_are_fixed_and_restored_from_a_checkpoint():
    model = convnet()
    x = torch.randn(4, 2, 8, 8, dtype=F64, requires_grad=True)  # so the first layer draws its D too
    targets = torch.tensor([0, 1, 2, 1])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    first = None
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(model(x), targets).backward()
        optimizer.step()
        matrices = [feedback_matrix(layer).clone() for _, layer in aligned_layers(model)]
        first = first or matrices
        assert all(torch.equal(a, b) for a, b in zip(first, matrices, strict=True))
    assert not torch.allclose(first[0][:, : first[1].shape[1]], first[1])  # each layer its own D
    restored = convnet()
    restored.load_state_dict(model.state_dict())
    F.cross_entropy(restored(x), targets).backward()
    assert all(
        torch.equal(a, feedback_matrix(layer)) for a, (_, layer) in zip(first, aligned_layers(restored), strict=True)
    )


def test_a_backward_without_the_output_layer_on_its_path_is_an_error_naming_it():
    model = mlp()
    x = torch.randn(3, 6, dtype=F64, requires_grad=True)
    hidden = model[:4](x)  # the last layer to run forward is not on this loss's path
    model[4](torch.randn(2, 4, dtype=F64))
    with pytest.raises(RuntimeError, match=r"the last aligned layer to run forward \(the output layer\) must be on"):
        hidden.sum().backward()
