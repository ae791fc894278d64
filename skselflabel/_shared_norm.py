"""BatchNorm over the whole batch of a data-parallel fit, on any device.

In a data-parallel fit each process holds a share of every batch. Plain BatchNorm would
normalise each share by its own statistics, and halving the samples behind them is not
harmless here: on scikit-learn's digits (8x8 images, ``n_clusters=10``, batches of 128)
one process computing BatchNorm over two halves of each batch, everything else alike,
clustered with ACC 0.870 and 0.878 (random_state 0 and 1) instead of 0.961 and 0.990.
So during training every BatchNorm layer of the network uses the mean and variance of the
whole batch: each process sums its share's statistics, the sums are all-reduced, and the
backward pass all-reduces the two sums that the gradient of the statistics needs (the
scheme of ``torch.nn.SyncBatchNorm``, which runs on CUDA only). The layers keep their
class and parameters: :func:`shared_batch_norm` replaces their ``forward`` for the length
of training only, so the fitted modules are plain modules again afterwards.
"""
from contextlib import contextmanager
import types

import torch
from torch import nn


class _SharedBatchNorm(torch.autograd.Function):
    """``(x - mean) / sqrt(var + eps) * weight + bias`` with the statistics of the batch of
    every process (channels on dimension 1)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, team):
        dims = [0] + list(range(2, x.dim()))
        count = x.numel() // x.shape[1]
        var, mean = torch.var_mean(x, dims, correction=0)
        # Sums of the counts, of the means and of the second moments, in float64.
        sums = torch.cat([(count * mean).double(), (count * (var + mean * mean)).double(),
                          torch.tensor([float(count)], dtype=torch.float64,
                                       device=x.device)])
        team.sum_(sums)
        channels, total = x.shape[1], sums[-1]
        mean = sums[:channels] / total
        var = (sums[channels:2 * channels] / total - mean * mean).clamp_min(0)
        invstd = (var + eps).rsqrt().to(x.dtype)
        mean = mean.to(x.dtype)
        shape = [1, channels] + [1] * (x.dim() - 2)
        xhat = (x - mean.view(shape)) * invstd.view(shape)
        ctx.save_for_backward(xhat, weight, invstd)
        ctx.team, ctx.total, ctx.shape, ctx.dims = team, float(total), shape, dims
        out = xhat if weight is None else xhat * weight.view(shape) + bias.view(shape)
        # The statistics for the running averages (the variance unbiased, as BatchNorm's).
        unbiased = (var * (total / max(1.0, float(total) - 1))).to(x.dtype)
        ctx.mark_non_differentiable(mean, unbiased)
        return out, mean, unbiased

    @staticmethod
    def backward(ctx, grad_out, _mean, _var):
        xhat, weight, invstd = ctx.saved_tensors
        shape, dims = ctx.shape, ctx.dims
        sum_dy = grad_out.sum(dims)
        sum_dy_xhat = (grad_out * xhat).sum(dims)
        grad_weight = None if weight is None else sum_dy_xhat.clone()
        grad_bias = None if weight is None else sum_dy.clone()
        sums = ctx.team.sum_(torch.cat([sum_dy, sum_dy_xhat]))
        channels = xhat.shape[1]
        mean_dy = (sums[:channels] / ctx.total).view(shape)
        mean_dy_xhat = (sums[channels:] / ctx.total).view(shape)
        scale = invstd if weight is None else invstd * weight
        grad_x = (grad_out - mean_dy - xhat * mean_dy_xhat) * scale.view(shape)
        return grad_x, grad_weight, grad_bias, None, None


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
        out, mean, var = _SharedBatchNorm.apply(x, self.weight, self.bias, self.eps, team)
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(var, momentum)
        return out

    return forward


@contextmanager
def shared_batch_norm(module, team):
    """Within the block, the BatchNorm layers of ``module`` normalise training batches by
    the statistics of the batches of every process of ``team`` (nothing changes for one
    process)."""
    layers = ([m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
              if team.world > 1 else [])
    forward = _forward(team)
    for layer in layers:
        layer.forward = types.MethodType(forward, layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward
