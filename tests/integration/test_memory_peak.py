"""The memory estimate of a fit against the measured peak of a real one (slow: ~15 s)."""
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow


def test_fit_estimate_matches_the_measured_peak():
    # The estimate is meant to be the size of what is allocated, not a loose bound: check
    # it against the resident-set peak of a fit in a fresh process.
    script = textwrap.dedent("""
        import os, threading, time
        import numpy as np
        from skselflabel import SelfLabelClusterer
        from skselflabel._fit.config import resolve_config
        from skselflabel._fit.fit import fit_phases
        from skselflabel._runtime import memory

        def rss():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

        X = np.random.default_rng(0).standard_normal((20000, 16)).astype(np.float32)
        SelfLabelClusterer(3, max_epochs=1, n_neighbors=0).fit(X[:300])   # torch warmed up
        est = SelfLabelClusterer(2000, max_epochs=1, n_label_updates=1, n_neighbors=0,
                                 random_state=0)
        base, peak, done = rss(), [0], threading.Event()
        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss())
                time.sleep(0.001)
        thread = threading.Thread(target=sample)
        thread.start()
        est.fit(X)
        done.set()
        thread.join()
        cfg = resolve_config(est.get_params(deep=False), 20000, (16,))
        total = memory.peak(fit_phases(20000, 16, 2000, 1, est._head_width,
                                       cfg.n_neighbors, cfg.diffusion_steps))[0]
        print(total / (peak[0] - base))
    """)
    if not os.path.exists("/proc/self/statm"):
        pytest.skip("needs /proc/self/statm to measure the resident set")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 0.8 < float(proc.stdout) < 1.25
