"""Sized labels: hard labels read off a Sinkhorn plan within cluster-size bounds, moving as
few samples off the argmax as the bounds require (the user guide's "Many clusters")."""
import torch

from .._runtime.memory import FLOAT32, INT64, Need

# Candidate rows gathered at once (rows x clusters floats).
GATHER_ELEMENTS = 1 << 22
# Seed of the draws (fixed: the labels are reproducible).
SEED = 0


def size_bounds(p, n, tolerance):
    """Lower and upper cluster sizes (int64) for proportions ``p`` of ``n`` samples.

    ``tolerance=0`` gives integer sizes summing to ``n`` (largest remainders); otherwise
    the integers within ``(1 -+ tolerance) * n * p`` (``ceil`` / ``floor``), or, where those
    cannot hold ``n`` samples (more clusters than ``tolerance * n``), ``floor`` / ``ceil``.
    """
    raw = p.double().cpu() * n
    if tolerance > 0:
        # The margin keeps float rounding of p (1/3000 * 60000 = 20.000000000000004) from
        # moving a bound by one.
        low, high = raw * (1 - tolerance), raw * (1 + tolerance)
        inner = (low - 1e-9).ceil().long().clamp_min(0), (high + 1e-9).floor().long()
        if int(inner[0].sum()) > n or int(inner[1].sum()) < n:
            inner = (low + 1e-9).floor().long().clamp_min(0), (high - 1e-9).ceil().long()
        return inner[0].to(p.device), inner[1].to(p.device)
    sizes = raw.floor().long()
    short = n - int(sizes.sum())
    if short > 0:
        # Ties between equal remainders go to the lower cluster index (stable sort).
        order = torch.argsort(raw - sizes, descending=True, stable=True)
        sizes[order[:short]] += 1
    sizes = sizes.to(p.device)
    return sizes, sizes.clone()


def _keep_best(group, score, room):
    """Boolean mask: within each group, the ``room[g]`` members with the best score."""
    order = torch.argsort(score, descending=True, stable=True)
    order = order[torch.argsort(group[order], stable=True)]     # by group, best first
    grouped = group[order]
    counts = torch.bincount(grouped, minlength=room.shape[0])
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(order.shape[0], device=order.device) - starts[grouped]
    keep = torch.empty_like(group, dtype=torch.bool)
    keep[order] = rank < room[grouped]
    return keep


def _row_sums(W, v, rows):
    """``W @ v``: the (unnormalised) mass of each sample's row of the plan."""
    sums = torch.empty(W.shape[0], dtype=W.dtype, device=W.device)
    rows.per_block(lambda s, e: torch.mv(W[s:e], v, out=sums[s:e]))
    return sums.clamp_min_(torch.finfo(W.dtype).tiny)


def _gumbel(shape, generator, like):
    """Standard Gumbel noise: ``argmax(log w + noise)`` draws an index with weights ``w``."""
    u = torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)
    return u.clamp_(1e-20, 1.0 - 1e-7).log_().neg_().log_().neg_()


def _propose(W, v, sums, pending, is_open, generator):
    """A cluster with room for each pending sample, drawn from its row of the plan
    restricted to those clusters, and the sample's confidence there."""
    choice = torch.empty_like(pending)
    score = torch.empty(pending.shape[0], dtype=W.dtype, device=W.device)
    step = max(1, GATHER_ELEMENTS // W.shape[1])
    tiny = torch.finfo(W.dtype).tiny
    for s in range(0, pending.shape[0], step):
        idx = pending[s:s + step]
        mass = W[idx] * v
        logits = mass.clamp_min(tiny).log_().add_(_gumbel(mass.shape, generator, mass))
        choice[s:s + step] = logits.masked_fill_(~is_open, -torch.inf).argmax(1)
        score[s:s + step] = mass.gather(1, choice[s:s + step, None]).squeeze(1) / sums[idx]
    return choice, score


def _cap(W, v, sums, labels, high, generator):
    """Phase 1: no cluster above ``high``; members beyond it re-propose elsewhere."""
    out = torch.empty_like(labels)
    pending = torch.arange(W.shape[0], device=W.device)
    choice = labels
    score = W.gather(1, labels[:, None]).squeeze(1) * v[labels] / sums
    remaining = high.clone()
    while True:
        keep = _keep_best(choice, score, remaining)
        out[pending[keep]] = choice[keep]
        remaining -= torch.bincount(choice[keep], minlength=remaining.shape[0])
        pending = pending[~keep]
        if pending.shape[0] == 0:
            return out
        choice, score = _propose(W, v, sums, pending, remaining > 0, generator)


def _best_candidates(W, v, sums, candidates, clusters, want, generator):
    """For each cluster in ``clusters``, ``want`` of the ``candidates`` drawn with weights
    their confidence about it: (sample, cluster, score) triples, in chunks of rows."""
    found_i, found_k, found_s = [], [], []
    step = max(1, GATHER_ELEMENTS // max(1, clusters.shape[0]))
    tiny = torch.finfo(W.dtype).tiny
    for s in range(0, candidates.shape[0], step):
        idx = candidates[s:s + step]
        conf = W[idx[:, None], clusters[None, :]] * v[clusters] / sums[idx, None]
        conf = conf.clamp_min_(tiny).log_().add_(_gumbel(conf.shape, generator, conf))
        top = conf.topk(min(want, idx.shape[0]), dim=0)
        found_i.append(idx[top.indices].reshape(-1))
        found_k.append(clusters.repeat(top.indices.shape[0]))
        found_s.append(top.values.reshape(-1))
    return torch.cat(found_i), torch.cat(found_k), torch.cat(found_s)


def _fill(W, v, sums, labels, low, generator):
    """Phase 2: clusters below ``low`` take the samples most confident about them among
    those whose cluster can spare them (each round: every short cluster picks, each
    sample joins at most one, each donor gives at most its spare)."""
    K = low.shape[0]
    while True:
        counts = torch.bincount(labels, minlength=K)
        short = (low - counts).clamp_min(0)
        if int(short.sum()) == 0:
            return labels
        spare = (counts - low).clamp_min(0)
        candidates = torch.nonzero(spare[labels] > 0).squeeze(1)
        clusters = torch.nonzero(short > 0).squeeze(1)
        i, k, s = _best_candidates(W, v, sums, candidates, clusters, int(short.max()),
                                   generator)
        take = _keep_best(k, s, short)                         # each cluster its shortfall
        i, k, s = i[take], k[take], s[take]
        once = _keep_best(i, s, torch.ones(W.shape[0], dtype=torch.long, device=W.device))
        i, k, s = i[once], k[once], s[once]                    # each sample one cluster
        give = _keep_best(labels[i], s, spare)                 # each donor its spare
        labels = labels.clone()
        labels[i[give]] = k[give]


def round_to_sizes(W, v, labels, bounds, rows):
    """Labels whose cluster sizes lie within ``bounds``, moving as few samples as needed.

    Parameters
    ----------
    W : torch.Tensor of shape (N, K)
        The plan's kernel: ``Q_ik`` is proportional to ``W_ik * v_k`` within each row.
    v : torch.Tensor of shape (K,)
        Column scalings, same dtype as ``W`` (0 for clusters with zero prior).
    labels : torch.Tensor of shape (N,), int64
        The row-wise argmax of the plan.
    bounds : tuple of torch.Tensor
        ``(low, high)`` sizes per cluster (int64), with ``sum(low) <= N <= sum(high)``.
    rows : RowBlocks
        Row-block visitor for the pass over ``W``.
    """
    low, high = bounds
    if not int(low.sum()) <= W.shape[0] <= int(high.sum()):
        raise ValueError(f"size bounds cannot hold {W.shape[0]} samples: they allow "
                         f"{int(low.sum())} to {int(high.sum())}.")
    sums = _row_sums(W, v, rows)
    generator = torch.Generator(device=W.device).manual_seed(SEED)
    labels = _cap(W, v, sums, labels, high, generator)
    return _fill(W, v, sums, labels, low, generator)


def rounding_needs(n):
    """What sizing ``n`` labels allocates: per-row sums, proposals, confidences, indices,
    and the argmax kept to count the labels moved."""
    return [Need("label sizing", n * (FLOAT32 + 4 * INT64 + FLOAT32), "n_samples")]
