"""Overhead of ``SelfLabelClusterer.fit`` over a hand-written PyTorch loop training the same model.

Both sides run in one process, interleaved (estimator first on even repeats, hand loop first
on odd ones) so that load from other jobs on the machine hits both alike; medians are reported.

What both sides share: the data (Fashion-MNIST training images, or the 8x8 digits when the
IDX files are absent), centred and scaled per channel; the model (``SmallCNN`` from
``skselflabel._fit.backbones`` plus one ``nn.Linear`` head, initialised by ``init_parameters_``);
Adam (lr 1e-3, weight decay 1e-4) with the cosine schedule; the batch size; the
augmentation callable that the estimator resolves for images (``resolve_augment("auto")``);
neighbour views (a random one of 10 nearest neighbours with probability 0.5) on the same
k-NN graph function; the self-label step's recipe (eval-mode features in batches of 256,
20 lazy random-walk diffusion steps over the graph, ``sinkhorn_knopp`` with lam 10 and
tol 1e-2, argmax) at the same quadratic schedule.

Two measurements:

(a) training epoch: wall time of one epoch that has no self-label step, from the estimator's
    ``history_["seconds"]`` and from the hand loop's own clock around the same epochs.
(b) whole fit per epoch: ``fit`` wall time (input validation, statistics, k-NN graph, all
    self-label steps including the final one, ``labels_``) divided by the epochs, against
    the hand loop's wall time for the same work written by hand (normalisation, k-NN
    graph, training, the same number of self-label passes, a final pass and an argmax).

    .venv/bin/python benchmarks/fit_overhead.py [--n-samples 10000] [--epochs 4]
        [--label-updates 4] [--repeats 3] [--quick]

Writes ``results/fit_overhead.json`` (the "fit-overhead" section of docs/benchmarks.md).
"""
import math
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from skselflabel import SelfLabelClusterer, SinkhornAssigner, sinkhorn_knopp
from skselflabel._data.augment import resolve_augment
from skselflabel._fit.backbones import SmallCNN, init_parameters_
from skselflabel._fit.graph import nearest_neighbors
from skselflabel._fit.training import label_update_steps
from skselflabel.datasets import load_digits_images, load_fashion_mnist

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from _markdown import quick_banner, source, table  # noqa: E402
from _results import Record, parser  # noqa: E402

SECTION = "fit-overhead"

BATCH_SIZE = 128
N_NEIGHBORS = 10
NEIGHBOR_PROB = 0.5
DIFFUSION_STEPS = 20
LAM = 10.0
N_CLUSTERS = 10


def load_images(n_samples):
    try:
        X, y = load_fashion_mnist(split="train", return_X_y=True, as_float=True)
        name = "Fashion-MNIST train"
    except FileNotFoundError:
        X, y = load_digits_images(return_X_y=True)
        name = "digits 8x8 (Fashion-MNIST files absent)"
    n = min(n_samples, len(X))
    return X[:n], f"{name}, first {n} images"


# ---------------------------------------------------------------------- the hand-written side
def self_label_pass(backbone, head, X_t, neighbors):
    """Eval-mode features in batches of 256, diffused head probabilities, balanced argmax."""
    backbone.eval()
    head.eval()
    with torch.no_grad():
        features = torch.cat([backbone(X_t[i:i + 256]) for i in range(0, len(X_t), 256)])
        probs = torch.softmax(head(features), 1)
        for _ in range(DIFFUSION_STEPS):
            probs = 0.5 * (probs + probs[neighbors].mean(1))
        scores = probs.clamp_(min=1e-8).log_()
        labels = torch.as_tensor(sinkhorn_knopp(scores, lam=LAM, tol=1e-2, copy=False).labels)
    backbone.train()
    head.train()
    return labels


def hand_fit(X, n_epochs, n_label_updates, seed):
    """The whole job by hand; returns (wall s, CPU s, per-epoch wall s, labels)."""
    tic_total, cpu = time.perf_counter(), time.process_time()
    X_t = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))[:, None]
    X_t = (X_t - X_t.mean()) / X_t.std()
    n = len(X_t)
    init_gen = torch.Generator().manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    backbone = SmallCNN(1, X_t.shape[2:])
    head = nn.Linear(backbone.out_features, N_CLUSTERS)
    init_parameters_(backbone, init_gen)
    init_parameters_(head, init_gen)
    augment = resolve_augment("auto", is_image=True)
    neighbors = nearest_neighbors(X_t, N_NEIGHBORS)
    params = list(backbone.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3, weight_decay=1e-4)
    steps_per_epoch = n // BATCH_SIZE + (n % BATCH_SIZE > 1)
    total = n_epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    update_at = set(label_update_steps(n_label_updates, total).tolist())
    labels = torch.randperm(n, generator=init_gen) % N_CLUSTERS
    epoch_seconds, step = [], 0
    backbone.train()
    head.train()
    for _ in range(n_epochs):
        tic = time.perf_counter()
        order = torch.randperm(n, generator=gen)
        loss_sum = torch.zeros(())
        for b in range(steps_per_epoch):
            if step in update_at:
                labels = self_label_pass(backbone, head, X_t, neighbors)
            idx = order[b * BATCH_SIZE:(b + 1) * BATCH_SIZE]
            pick = neighbors[idx, torch.randint(N_NEIGHBORS, idx.shape, generator=gen)]
            keep = torch.rand(idx.shape, generator=gen) >= NEIGHBOR_PROB
            xb = augment(X_t[torch.where(keep, idx, pick)], gen)
            loss = F.cross_entropy(head(backbone(xb)), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach()
            step += 1
        loss_sum.item()  # one host sync per epoch, as a logging loop would do
        epoch_seconds.append(time.perf_counter() - tic)
    self_label_pass(backbone, head, X_t, neighbors)
    backbone.eval()
    head.eval()
    with torch.no_grad():
        predicted = torch.cat([head(backbone(X_t[i:i + 256])).argmax(1)
                               for i in range(0, n, 256)]).numpy()
    return (time.perf_counter() - tic_total, time.process_time() - cpu, epoch_seconds,
            predicted)


# ---------------------------------------------------------------------- the estimator side
def estimator_fit(X, n_epochs, n_label_updates, seed):
    clu = SelfLabelClusterer(n_clusters=N_CLUSTERS, backbone="cnn", batch_size=BATCH_SIZE,
                             max_epochs=n_epochs, n_label_updates=n_label_updates,
                             optimizer="adam", lr=1e-3, weight_decay=1e-4,
                             n_neighbors=N_NEIGHBORS, neighbor_prob=NEIGHBOR_PROB,
                             neighbor_features="input",   # the hand loop's graph: pixels
                             diffusion_steps=DIFFUSION_STEPS,
                             assigner=SinkhornAssigner(lam=LAM, tol=1e-2), augment="auto",
                             device="cpu", random_state=seed)
    tic, cpu = time.perf_counter(), time.process_time()
    clu.fit(X)
    return (time.perf_counter() - tic, time.process_time() - cpu,
            list(clu.history_["seconds"]), clu.labels_)


def epochs_without_update(n, n_epochs, n_label_updates):
    steps_per_epoch = n // BATCH_SIZE + (n % BATCH_SIZE > 1)
    updates = label_update_steps(n_label_updates, n_epochs * steps_per_epoch)
    busy = set((updates // steps_per_epoch).tolist())
    return [e for e in range(n_epochs) if e not in busy]


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--n-samples", type=int, default=10_000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--label-updates", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads for both sides (1: least disturbed by "
                   "other jobs on a shared machine, and CPU time then measures work)")
    args = p.parse_args(argv)
    if args.quick:
        args.n_samples, args.epochs, args.label_updates, args.repeats = 1000, 2, 1, 1
    torch.set_num_threads(args.threads)
    X, data_name = load_images(args.n_samples)
    free = epochs_without_update(len(X), args.epochs, args.label_updates)
    if not free:
        p.error("every epoch has a self-label step; raise --epochs or lower --label-updates")
    sides = {"estimator": estimator_fit, "hand loop": hand_fit}
    with Record("fit_overhead", args, data=data_name, epochs=args.epochs,
                label_updates=args.label_updates, repeats=args.repeats,
                batch_size=BATCH_SIZE, threads=args.threads) as rec:
        # One untimed small run of each side first: one-time costs of the process (lazy
        # initialisation, allocator growth) would otherwise fall on whichever side runs
        # first.
        for fit in sides.values():
            fit(X[:512], 2, 2, 0)
        for r in range(args.repeats):
            for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
                total, cpu, per_epoch, labels = sides[name](X, args.epochs,
                                                            args.label_updates, r)
                assert labels.shape == (len(X),)
                rec.runs.append({"repeat": r, "side": name, "fit_seconds": total,
                                 "cpu_seconds": cpu, "epoch_seconds": per_epoch,
                                 "epochs_without_update": free})
                print(f"repeat {r} {name:9s}: fit {total:6.1f} s wall, {cpu:6.1f} s CPU; "
                      "training epochs " + ", ".join(f"{per_epoch[e]:.2f}" for e in free)
                      + " s", flush=True)


def render(load):
    r = load("fit_overhead")
    if r is None:
        return None
    s = r["settings"]
    med = {}
    for side in ("estimator", "hand loop"):
        runs = [x for x in r["runs"] if x["side"] == side]
        med[side] = (statistics.median(x["epoch_seconds"][e] for x in runs
                                       for e in x["epochs_without_update"]),
                     statistics.median(x["fit_seconds"] / s["epochs"] for x in runs),
                     statistics.median(x["cpu_seconds"] / s["epochs"] for x in runs))
    rows = [[label, f"{med['estimator'][i]:.2f}", f"{med['hand loop'][i]:.2f}",
             f"{med['estimator'][i] / med['hand loop'][i]:.3f}"]
            for i, label in enumerate(["(a) training epoch, no self-label step (s)",
                                       "(b) whole fit / epochs (s)",
                                       "(b') whole fit / epochs, process CPU time (s)"])]
    return "\n".join([
        "## Fit overhead: SelfLabelClusterer.fit vs a hand-written PyTorch loop "
        "(`benchmarks/fit_overhead.py`)", "",
        quick_banner(r) + source(r, "fit_overhead"), "",
        f"Data: {s['data']}. SmallCNN + one linear head, 10 clusters, batch "
        f"{s['batch_size']}, Adam with cosine schedule, the estimator's image augmentation, "
        f"neighbour views (k={N_NEIGHBORS}, p={NEIGHBOR_PROB}); {s['epochs']} epochs with "
        f"{s['label_updates']} self-label steps (+1 final) per fit, {s['threads']} torch "
        f"thread(s). Medians over {s['repeats']} interleaved repeats, after one untimed "
        "warm-up run of each side.", "",
        table(["measure", "SelfLabelClusterer.fit", "hand-written loop", "ratio"], rows), "",
        "(a) is the estimator's `history_` seconds against the hand loop's clock on the same "
        "epochs, which have no self-label step. (b) is the whole `fit` (validation, input "
        "statistics, k-NN graph, all self-label steps, final labelling, `labels_`) against "
        "the same work written by hand; (b') is the same in process CPU time, which other "
        "jobs on the machine disturb less than wall time.",
    ])


if __name__ == "__main__":
    main()
