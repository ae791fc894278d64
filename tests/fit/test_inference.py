"""Fixed-size padded batches: a sample's output never depends on its batch-mates."""
import torch
from torch import nn

from skselflabel._fit.inference import embed, head_logits, map_padded, represent, slices
from feeding import feeder_of


def test_every_call_sees_a_full_batch_and_the_output_is_trimmed():
    sizes = []

    def fn(batch):
        sizes.append(batch.shape[0])
        return batch.sum(1, keepdim=True)

    X = torch.arange(10.0).view(5, 2)
    out = map_padded(fn, slices(X, 4), 5, 1, batch_size=4)
    assert sizes == [4, 4] and out.shape == (5, 1)
    torch.testing.assert_close(out[:, 0], X.sum(1))
    buffer = torch.empty(5, 1)
    assert map_padded(fn, slices(X, 4), 5, 1, out=buffer, batch_size=4) is buffer


def test_outputs_do_not_depend_on_what_else_is_predicted():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    head = nn.Linear(8, 3)
    X = torch.randn(300, 16)
    together = head_logits(net, head, feeder_of(X), 8)
    alone = torch.cat([head_logits(net, head, feeder_of(X[i:i + 1]), 8)
                       for i in range(0, 300, 37)])
    assert torch.equal(together[::37], alone)
    assert torch.equal(embed(net, feeder_of(X), 8)[5], embed(net, feeder_of(X[5:6]), 8)[0])


def test_represent_uses_the_backbones_represent_when_it_has_one():
    class Net(nn.Module):
        def forward(self, x):
            return x[:, :2]

        def represent(self, x):
            return x * 10

    X = torch.ones(3, 4)
    torch.testing.assert_close(represent(Net(), feeder_of(X), 4), torch.full((3, 4), 10.0))
    torch.testing.assert_close(represent(nn.Identity(), feeder_of(X), 4), X)
