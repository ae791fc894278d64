"""Memory of SelfLabelClusterer at the paper's head scale: n_clusters=3000, n_heads=10.

Fits 60,000 random 64-feature samples for one epoch (two self-label steps: the initial and
the final one, each relabelling 10 heads of 3,000 clusters one at a time) and reports the
peak resident memory beyond what the process held with the data loaded.

    python benchmarks/clusterer_scale.py [--diffusion-steps 20]
"""
import argparse
import resource
import time

import numpy as np

from skselflabel import SelfLabelClusterer


def peak_rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-samples", type=int, default=60_000)
    parser.add_argument("--diffusion-steps", type=int, default=20)
    args = parser.parse_args()
    X = np.random.default_rng(0).random((args.n_samples, 64), dtype=np.float32)
    before = peak_rss_gib()
    tic = time.perf_counter()
    clu = SelfLabelClusterer(n_clusters=3000, n_heads=10, max_epochs=1, n_label_updates=1,
                             diffusion_steps=args.diffusion_steps, random_state=0).fit(X)
    seconds = time.perf_counter() - tic
    extra = peak_rss_gib() - before
    print(f"n_samples={args.n_samples} n_clusters=3000 n_heads=10 "
          f"diffusion_steps={args.diffusion_steps}: peak memory beyond the data "
          f"{extra:.2f} GiB, fit {seconds:.0f} s, self_labels_ {clu.self_labels_.shape}, "
          f"largest cluster of head 0: {np.bincount(clu.self_labels_[0]).max()} samples")


if __name__ == "__main__":
    main()
