"""Row blocks: how the solver visits the rows of an N x K matrix, in cache-sized blocks
spread over threads of its own."""
from concurrent.futures import ThreadPoolExecutor

from .._runtime.threads import limit_own_threads

# CPU: row ranges per worker thread (see RowBlocks).
RANGES_PER_WORKER = 4
# Bytes of one row block of the fused sweep: it should sit in a core's L2 cache.
BLOCK_BYTES = 1 << 20


def block_rows(K, itemsize, device):
    """Rows per block: GPUs want few, large launches; CPUs want blocks that stay in L2."""
    budget = BLOCK_BYTES if device.type == "cpu" else 256 * BLOCK_BYTES
    return max(8, budget // max(1, K * itemsize))


class RowBlocks:
    """Visits the rows of an N-row matrix in cache-sized blocks.

    On CPU, each of ``n_workers`` Python threads takes contiguous ranges of rows, with
    torch's own intra-op threads limited to one in those threads (the per-block ops are
    small, and an OpenMP barrier per op costs more than the op when the cores are shared).
    On other devices the blocks are visited in order (each op is one asynchronous launch).
    """

    def __init__(self, N, block, device, n_workers):
        self.N, self.block = N, block
        n_blocks = -(-N // block)
        self.n_workers = max(1, min(n_workers, n_blocks)) if device.type == "cpu" else 1
        # A few ranges per worker, handed out as workers free up, so that a core slowed by
        # other processes does not hold up the whole sweep.
        n_ranges = min(n_blocks, self.n_workers * RANGES_PER_WORKER)
        per = -(-n_blocks // n_ranges) * block
        self.ranges = [(lo, min(N, lo + per)) for lo in range(0, N, per)]
        self._pool = None
        if self.n_workers > 1:
            self._pool = ThreadPoolExecutor(self.n_workers,
                                            initializer=limit_own_threads, initargs=(1,))

    def map(self, fn):
        """``[fn(lo, hi, block) for each range]``, the ranges spread over the workers."""
        if self._pool is None:
            return [fn(lo, hi, self.block) for lo, hi in self.ranges]
        return list(self._pool.map(lambda r: fn(r[0], r[1], self.block), self.ranges))

    def per_block(self, fn):
        """``fn(start, stop)`` for every block of rows, the blocks spread over the workers."""
        def visit(lo, hi, block):
            for start in range(lo, hi, block):
                fn(start, min(hi, start + block))

        self.map(visit)

    def close(self):
        if self._pool is not None:
            self._pool.shutdown()
