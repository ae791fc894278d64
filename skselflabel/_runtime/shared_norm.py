"""BatchNorm over the whole batch of a data-parallel fit, on any device: each process's
statistics summed over the team, for the length of training only."""
from contextlib import contextmanager
import types

import torch
from torch import nn


class _Scratch:
    """Two buffers the size of a layer's input, kept from one training step to the next.

    The statistics and their gradient need temporaries as large as the activations; on the
    CPU a fresh buffer of many megabytes costs page faults on every step, enough to make a
    data-parallel epoch slower than one process. Reused buffers cost nothing after the
    first step. (The buffers only live inside one forward or one backward call, so a layer
    called twice in a step may share them.)
    """

    def __init__(self):
        self.buffers = [None, None]

    def get(self, i, like):
        buffer = self.buffers[i]
        if (buffer is None or buffer.shape != like.shape or buffer.dtype != like.dtype
                or buffer.device != like.device):
            buffer = self.buffers[i] = torch.empty_like(like,
                                                        memory_format=torch.contiguous_format)
        return buffer


class _SharedBatchNorm(torch.autograd.Function):
    """``(x - mean) / sqrt(var + eps) * weight + bias`` with the statistics of the batch of
    every process (channels on dimension 1).

    Each process sums its share's count, sum and centred sum of squares ``M2`` (centred on
    its own mean, so that a large mean does not cancel the variance away in float32); the
    all-reduced float64 sums give the whole batch's mean and (biased) variance,
    ``var = sum_p (M2_p + n_p m_p^2) / N - mean^2``. The backward pass all-reduces
    ``sum(dy)`` and ``sum(dy * xhat)`` and returns
    ``dx = weight / sqrt(var + eps) * (dy - mean(dy) - xhat * mean(dy * xhat))``.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps, team, scratch):
        dims = [0] + list(range(2, x.dim()))
        channels = x.shape[1]
        shape = [1, channels] + [1] * (x.dim() - 2)
        count = x.numel() // channels
        own_mean = x.sum(dims) / count
        centred = torch.sub(x, own_mean.view(shape), out=scratch.get(0, x))
        own_m2 = centred.square_().sum(dims).double()
        own_mean = own_mean.double()
        sums = torch.cat([count * own_mean, own_m2 + count * own_mean * own_mean,
                          torch.tensor([float(count)], dtype=torch.float64,
                                       device=x.device)])
        team.sum_(sums)
        total = sums[-1]
        mean = sums[:channels] / total
        var = (sums[channels:2 * channels] / total - mean * mean).clamp_min(0)
        mean, var = mean.to(x.dtype), var.to(x.dtype)
        out = torch.batch_norm(x, weight, bias, mean, var, False, 0.0, eps, False)
        ctx.save_for_backward(x, weight, mean, var)
        # The count stays a tensor: reading it on the host would sync a GPU in every layer.
        ctx.team, ctx.scratch, ctx.total, ctx.eps = team, scratch, total, eps
        ctx.dims, ctx.shape = dims, shape
        # The statistics for the running averages (the variance unbiased, as BatchNorm's).
        unbiased = var * (total / (total - 1).clamp_min(1.0)).to(x.dtype)
        ctx.mark_non_differentiable(mean, unbiased)
        return out, mean, unbiased

    @staticmethod
    def backward(ctx, grad_out, _mean, _var):
        x, weight, mean, var = ctx.saved_tensors
        dims, shape, channels = ctx.dims, ctx.shape, x.shape[1]
        invstd = (var + ctx.eps).rsqrt()
        xhat = torch.sub(x, mean.view(shape), out=ctx.scratch.get(0, x))
        xhat.mul_(invstd.view(shape))
        sum_dy = grad_out.sum(dims)
        sum_dy_xhat = torch.mul(grad_out, xhat, out=ctx.scratch.get(1, x)).sum(dims)
        grad_weight = None if weight is None else sum_dy_xhat.clone()
        grad_bias = None if weight is None else sum_dy.clone()
        sums = ctx.team.sum_(torch.cat([sum_dy, sum_dy_xhat]))
        mean_dy, mean_dy_xhat = sums[:channels] / ctx.total, sums[channels:] / ctx.total
        scale = invstd if weight is None else invstd * weight
        # BatchNorm's fused inference kernel computes scale * dy + shift per channel.
        grad_x = torch.batch_norm(grad_out, scale, -scale * mean_dy, torch.zeros_like(scale),
                                  torch.ones_like(scale), False, 0.0, 0.0, False)
        grad_x.addcmul_(xhat, (-scale * mean_dy_xhat).view(shape))
        return grad_x, grad_weight, grad_bias, None, None, None


def _forward(team):
    """A BatchNorm ``forward`` that uses the statistics of every process in training."""

    def forward(self, x):
        if not self.training:
            return type(self).forward(self, x)
        momentum = self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if momentum is None:        # a cumulative average, as BatchNorm does
                momentum = 1.0 / float(self.num_batches_tracked)
        out, mean, var = _SharedBatchNorm.apply(x, self.weight, self.bias, self.eps, team,
                                                self._shared_scratch)
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(var, momentum)
        return out

    return forward


@contextmanager
def shared_batch_norm(module, team, enabled=True):
    """Within the block, the BatchNorm layers of ``module`` normalise training batches by
    the statistics of the batches of every process of ``team`` (nothing changes for one
    process, or when not ``enabled``)."""
    layers = ([m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
              if team.world > 1 and enabled else [])
    forward = _forward(team)
    for layer in layers:
        layer.forward = types.MethodType(forward, layer)
        layer._shared_scratch = _Scratch()
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward, layer._shared_scratch
