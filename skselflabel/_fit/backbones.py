"""Backbones: the shared networks whose output feeds the heads (``MLP`` for tables,
``SmallCNN`` for small images), built from the ``backbone`` parameter and initialised from
an explicit generator."""
import copy
import math

import torch
from torch import nn


class MLP(nn.Module):
    """Multi-layer perceptron for tables: blocks of Linear, BatchNorm1d and ReLU.

    Parameters
    ----------
    in_features : int
        Number of input columns.
    hidden : tuple of int, default=(512, 512, 128)
        Width of each block; the last width is the representation size.

    Attributes
    ----------
    out_features : int
        Width of the output representation.

    Examples
    --------
    >>> import torch
    >>> from skselflabel._fit.backbones import MLP
    >>> MLP(64).eval()(torch.zeros(3, 64)).shape
    torch.Size([3, 128])
    """

    def __init__(self, in_features, hidden=(512, 512, 128)):
        super().__init__()
        layers, width = [], in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True)]
            width = h
        self.layers = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, x):
        return self.layers(x.flatten(1))


class SmallCNN(nn.Module):
    """A small CNN for small images (8x8 digits to 32x32 photos), cheap enough for a CPU.

    Three 3x3 convolutions (each with BatchNorm and ReLU) of widths 32, 64 and 128, with
    2x2 max pooling before the second convolution when the image side exceeds 16, before
    the third always, and after it when the map is still wider than 8; then global average
    pooling and a Linear-BatchNorm-ReLU block. On 8x8 digits the first two convolutions
    see the full image; on 28x28 images the convolutions work at 28, 14 and 7 pixels.

    ``forward`` gives the heads' input. ``represent`` gives the representation for
    downstream use (:meth:`SelfLabelClusterer.transform`): the map of the last convolution
    block average-pooled to 3x3 and that of the one before pooled to 2x2, concatenated
    (128 * 9 + 64 * 4 = 1408 values). It keeps the coarse layout that global pooling
    throws away; as in the SeLa paper's evaluation, conv features are meant as
    linear-probe inputs (the user guide's "What transform returns" has the measurements).

    Parameters
    ----------
    in_channels : int
        Channels of the input images.
    image_size : tuple of int
        ``(height, width)`` of the input images.
    out_features : int, default=128
        Width of the output of ``forward``.

    Attributes
    ----------
    out_features : int
        Width of the output of ``forward``.
    representation_features : int
        Width of the output of ``represent`` (1408).

    Examples
    --------
    >>> import torch
    >>> from skselflabel._fit.backbones import SmallCNN
    >>> net = SmallCNN(1, (8, 8)).eval()
    >>> net(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 128])
    >>> net.represent(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 1408])
    """

    def __init__(self, in_channels, image_size, out_features=128):
        super().__init__()
        size = min(image_size)

        def conv(c_in, c_out):
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True)]

        first = conv(in_channels, 32)
        if size > 16:
            first.append(nn.MaxPool2d(2))
            size //= 2
        self.block1 = nn.Sequential(*first)
        self.block2 = nn.Sequential(*conv(32, 64))
        third = []
        if size >= 4:
            third.append(nn.MaxPool2d(2))
            size //= 2
        self.block3 = nn.Sequential(*third, *conv(64, 128))
        self.pool = nn.MaxPool2d(2) if size > 8 else nn.Identity()
        self.project = nn.Sequential(
            nn.Linear(128, out_features), nn.BatchNorm1d(out_features), nn.ReLU(inplace=True)
        )
        self.out_features = out_features
        self.representation_features = 9 * 128 + 4 * 64

    def forward(self, x):
        h3 = self.block3(self.block2(self.block1(x)))
        return self.project(self.pool(h3).mean((2, 3)))

    def represent(self, x):
        """Last conv block's map average-pooled to 3x3, the one before it to 2x2, concatenated."""
        h2 = self.block2(self.block1(x))
        h3 = self.block3(h2)
        return torch.cat([nn.functional.adaptive_avg_pool2d(h3, 3).flatten(1),
                          nn.functional.adaptive_avg_pool2d(h2, 2).flatten(1)], 1)


def place_backbone(module, device):
    """Move ``module`` to ``device`` (in place) in the layout its convolutions run fastest in.

    On the CPU a ``SmallCNN`` keeps its convolution weights channels-last: oneDNN's CPU
    convolutions then run in that layout end to end instead of reordering every batch
    (about twice as fast in inference). Elsewhere, and for every other module, the
    layout is left as PyTorch makes it.
    """
    module.to(device)
    if isinstance(module, SmallCNN):
        cpu = torch.device(device).type == "cpu"
        module.to(memory_format=torch.channels_last if cpu else torch.contiguous_format)
    return module


def init_parameters_(module, generator):
    """Re-initialise ``module``'s parameters in place from ``generator``.

    Linear and convolution layers get PyTorch's default scheme (Kaiming-uniform weights,
    uniform biases in ``+-1/sqrt(fan_in)``) drawn from ``generator``; normalisation layers
    are reset to ones and zeros. Other parameters are left as they are.
    """
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                if m.bias is not None:
                    fan_in = m.weight[0].numel()
                    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                    nn.init.uniform_(m.bias, -bound, bound, generator=generator)
            elif isinstance(m, nn.modules.batchnorm._NormBase) or isinstance(
                m, (nn.LayerNorm, nn.GroupNorm)
            ):
                m.reset_parameters()
    return module


def build_quietly(factory):
    """Call ``factory()`` without leaving a trace on torch's global CPU RNG.

    Module constructors draw their default initialisation from the global RNG; the state is
    saved and restored around the call so that fitting never changes it.
    """
    with torch.random.fork_rng(devices=[]):
        return factory()


def resolve_backbone(backbone, input_shape, generator):
    """Build the backbone module for inputs of shape ``(n_samples, *input_shape)``.

    Parameters
    ----------
    backbone : {"auto", "mlp", "cnn"}, nn.Module or callable
        "auto" picks ``MLP`` for 1-D samples and ``SmallCNN`` for images ``(c, h, w)``.
        An ``nn.Module`` is deep-copied (never trained in place) and used as it is. A
        callable is called as ``backbone(input_shape)`` and must return an ``nn.Module``;
        its Linear/Conv/Norm layers are then initialised from ``generator``.
    input_shape : tuple of int
        Shape of one sample as the network receives it: ``(n_features,)`` or ``(c, h, w)``.
    generator : torch.Generator
        Source of the initial weights of built modules.

    Returns
    -------
    module : nn.Module
        A fresh module on the CPU.
    out_features : int
        Width of the module's output for one sample.
    """
    if isinstance(backbone, nn.Module):
        module = copy.deepcopy(backbone).cpu()
    elif isinstance(backbone, str):
        kind = backbone
        if kind == "auto":
            kind = "mlp" if len(input_shape) == 1 else "cnn"
        if kind == "mlp":
            n_in = math.prod(input_shape)
            module = build_quietly(lambda: MLP(n_in))
        elif kind == "cnn":
            if len(input_shape) != 3:
                raise ValueError(
                    "backbone='cnn' needs images: X of shape (n_samples, height, width) or "
                    f"(n_samples, channels, height, width); got samples of shape {input_shape}. "
                    "Use backbone='mlp' or 'auto' for tables."
                )
            module = build_quietly(lambda: SmallCNN(input_shape[0], input_shape[1:]))
        else:  # validated by _parameter_constraints; kept for direct callers
            raise ValueError(f"backbone must be 'auto', 'mlp' or 'cnn', got {backbone!r}.")
        init_parameters_(module, generator)
    elif callable(backbone):
        module = build_quietly(lambda: backbone(tuple(input_shape)))
        if not isinstance(module, nn.Module):
            raise TypeError(
                "A callable backbone must return a torch.nn.Module built for samples of "
                f"shape {tuple(input_shape)}; it returned {type(module).__name__}."
            )
        init_parameters_(module, generator)
        module = module.cpu()
    else:
        raise TypeError(
            "backbone must be 'auto', 'mlp', 'cnn', a torch.nn.Module or a callable, "
            f"got {type(backbone).__name__}."
        )
    return module, _output_width(module, input_shape)


def build_network(backbone, input_shape, n_clusters, n_heads, generator):
    """The backbone and ``n_heads`` linear heads of ``n_clusters`` outputs each.

    Returns ``(backbone, heads, width, representation_width)``: the modules (on the CPU,
    initialised from ``generator``), the width of the backbone's output (the heads'
    input) and the width of what :meth:`SelfLabelClusterer.transform` returns.
    """
    module, width = resolve_backbone(backbone, input_shape, generator)
    heads = build_quietly(lambda: nn.ModuleList(nn.Linear(width, n_clusters)
                                                for _ in range(n_heads)))
    init_parameters_(heads, generator)
    return module, heads, width, representation_width(module, input_shape) or width


def representation_width(module, input_shape):
    """Width of ``module.represent`` for one sample, or None when it has no ``represent``.

    A backbone may define ``represent(x)`` to give :meth:`SelfLabelClusterer.transform` a
    different representation than the heads' input (``forward``), as ``SmallCNN`` does.
    """
    if not callable(getattr(module, "represent", None)):
        return None
    return _output_width(module, input_shape, method="represent")


def _output_width(module, input_shape, method="forward"):
    """Width of the module's output for one sample, found with a dry run of two samples."""
    was_training = module.training
    module.eval()
    run = module if method == "forward" else getattr(module, method)
    try:
        with torch.no_grad():
            out = run(torch.zeros((2, *input_shape)))
    except Exception as exc:  # give the user the shapes, which is what goes wrong
        raise ValueError(
            f"The backbone's {method} failed on a batch of shape {(2, *input_shape)}: {exc}"
        ) from exc
    finally:
        module.train(was_training)
    if out.ndim != 2:
        raise ValueError(
            f"The backbone's {method} must return a 2-D tensor (batch, features); for a batch of shape "
            f"{(2, *input_shape)} it returned shape {tuple(out.shape)}. Add a Flatten at its end."
        )
    if out.shape[1] == 0:
        raise ValueError(
            f"The backbone's {method} returns 0 features per sample (shape "
            f"{tuple(out.shape)} for a batch of shape {(2, *input_shape)}); the heads need "
            "at least one."
        )
    return int(out.shape[1])
