"""The limits the memory check holds an estimate against: MemAvailable, the process's cgroup
(v1 and v2, read from fake cgroup folders, since tests may not create cgroups), its resource
limits, SKSELFLABEL_MEMORY_LIMIT; the tightest one applies and is named."""
import os
from pathlib import Path
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from skselflabel import SelfLabelClusterer
from skselflabel._runtime import limits
from skselflabel._runtime.limits import ENV, Limit
from skselflabel._runtime.memory import available

GiB, KiB = 2**30, 2**10
V1_UNLIMITED = "9223372036854771712"


def fake_tree(root, cgroup_lines, mount_lines, files, mem_available=16 * GiB,
              vm_size=GiB, vm_data=GiB // 2):
    """A tree as the process would see it: /proc/self/{cgroup,mountinfo,status},
    /proc/meminfo, and ``files`` ({path: text}) in the cgroup folders."""
    proc = Path(root, "proc")
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text("\n".join(cgroup_lines) + "\n")
    (proc / "self" / "mountinfo").write_text("\n".join(mount_lines) + "\n")
    (proc / "self" / "status").write_text(
        f"Name:\tpython\nVmPeak:\t  {vm_size // KiB} kB\nVmSize:\t  {vm_size // KiB} kB\n"
        f"VmData:\t  {vm_data // KiB} kB\nThreads:\t1\n")
    (proc / "meminfo").write_text(f"MemTotal:       67108864 kB\n"
                                  f"MemAvailable:   {mem_available // KiB} kB\n")
    for path, text in files.items():
        target = Path(root, path.lstrip("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return str(root)


V2_MOUNT = "31 23 0:28 / /sys/fs/cgroup rw,nosuid,nodev,noexec - cgroup2 cgroup2 rw"
V1_MOUNTS = ["31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755",
             "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu",
             "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory",
             "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw"]


def no_rlimits():
    return {"RLIMIT_AS": lambda: -1, "RLIMIT_DATA": lambda: -1}


@pytest.fixture
def isolated(monkeypatch):
    """No SKSELFLABEL_MEMORY_LIMIT, and no resource limits whatever the test runner sets."""
    monkeypatch.delenv(ENV, raising=False)
    real = limits.resource_limits
    monkeypatch.setattr(limits, "resource_limits",
                        lambda root=None: real(root, getrlimit=no_rlimits()))


def test_cgroup_v2_limit_less_its_usage_and_the_job_above_it(tmp_path, isolated):
    # A SLURM-like layout: the job's cgroup has the limit, the step (the process) none; the
    # page cache the kernel would reclaim (inactive_file) is not counted as used.
    job = "/sys/fs/cgroup/system.slice/slurmstepd.scope/job_7"
    root = fake_tree(tmp_path, ["0::/system.slice/slurmstepd.scope/job_7/step_0"], [V2_MOUNT], {
        f"{job}/memory.max": f"{8 * GiB}\n",
        f"{job}/memory.current": f"{3 * GiB}\n",
        f"{job}/memory.stat": f"anon {2 * GiB}\nfile {GiB}\ninactive_file {GiB}\n",
        f"{job}/step_0/memory.max": "max\n",
        f"{job}/step_0/memory.current": f"{GiB}\n",
        "/sys/fs/cgroup/memory.current": f"{20 * GiB}\n",     # the root: no memory.max
    })
    found = limits.cgroup_limits(root)
    assert found == [Limit(6 * GiB, "the memory limit of cgroup v2 "
                           "'/system.slice/slurmstepd.scope/job_7' (memory.max) of 8.0 GiB, "
                           "of which 2.0 GiB is in use")]
    tightest = limits.tightest("cpu", root)
    assert tightest == found[0]                       # below MemAvailable's 16 GiB


def test_cgroup_v1_memory_controller(tmp_path, isolated):
    folder = "/sys/fs/cgroup/memory/docker/abc"
    root = fake_tree(tmp_path, ["12:pids:/docker/abc", "4:memory:/docker/abc",
                                "1:name=systemd:/docker/abc", "0::/"], V1_MOUNTS, {
        f"{folder}/memory.limit_in_bytes": f"{4 * GiB}\n",
        f"{folder}/memory.usage_in_bytes": f"{3 * GiB}\n",
        f"{folder}/memory.stat": f"cache {2 * GiB}\ninactive_file {GiB}\n"
                                 f"total_inactive_file {GiB + GiB // 2}\n",
        "/sys/fs/cgroup/memory/docker/memory.limit_in_bytes": V1_UNLIMITED,
        "/sys/fs/cgroup/memory/memory.limit_in_bytes": V1_UNLIMITED,
    })
    assert limits.cgroup_limits(root) == [Limit(
        int(2.5 * GiB), "the memory limit of cgroup v1 '/docker/abc' (memory.limit_in_bytes) "
        "of 4.0 GiB, of which 1.5 GiB is in use")]
    room, source = available_under(root, "cpu")
    assert room == int(2.5 * GiB) and "cgroup v1 '/docker/abc'" in source


def available_under(root, device):
    limit = limits.tightest(device, root)
    return limit.nbytes, limit.source


def test_a_container_sees_its_own_cgroup_at_the_mount_root(tmp_path, isolated):
    # With a cgroup namespace the process's cgroup is "/" and the mount is the cgroup itself;
    # without one, the mount's root is the container's path, which the cgroup path repeats.
    ns = fake_tree(tmp_path / "ns", ["0::/"], [
        "500 400 0:30 / /sys/fs/cgroup ro,nosuid - cgroup2 cgroup rw"], {
        "/sys/fs/cgroup/memory.max": f"{GiB}\n", "/sys/fs/cgroup/memory.current": "0\n"})
    assert limits.cgroup_limits(ns)[0].nbytes == GiB
    bound = fake_tree(tmp_path / "bound", ["4:memory:/kubepods/pod1/c1"], [
        "600 400 0:31 /kubepods/pod1/c1 /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory"], {
        "/sys/fs/cgroup/memory/memory.limit_in_bytes": f"{2 * GiB}\n",
        "/sys/fs/cgroup/memory/memory.usage_in_bytes": f"{GiB}\n"})
    assert limits.cgroup_limits(bound) == [Limit(GiB, (
        "the memory limit of cgroup v1 '/' (memory.limit_in_bytes) of 2.0 GiB, of which "
        "1.0 GiB is in use"))]


def test_no_cgroup_limit_and_no_files(tmp_path, isolated):
    root = fake_tree(tmp_path / "free", ["4:memory:/user", "0::/user"], V1_MOUNTS + [V2_MOUNT], {
        "/sys/fs/cgroup/memory/user/memory.limit_in_bytes": V1_UNLIMITED,
        "/sys/fs/cgroup/memory/user/memory.usage_in_bytes": "12345\n",
        "/sys/fs/cgroup/user/memory.max": "max\n"})
    assert limits.cgroup_limits(root) == []
    assert limits.tightest("cpu", root) == Limit(16 * GiB, "MemAvailable in /proc/meminfo")
    assert limits.cgroup_limits(str(tmp_path / "nothing")) == []       # not Linux
    assert limits.limits("cpu", str(tmp_path / "nothing")) == []
    assert limits.tightest("cpu", str(tmp_path / "nothing")) is None


def test_resource_limits_less_what_the_process_maps(tmp_path):
    root = fake_tree(tmp_path, [], [], {}, vm_size=GiB, vm_data=GiB // 4)
    found = limits.resource_limits(root, getrlimit={"RLIMIT_AS": lambda: 3 * GiB,
                                                    "RLIMIT_DATA": lambda: 2 * GiB})
    assert found == [
        Limit(2 * GiB, "RLIMIT_AS (ulimit -v) of 3.0 GiB, of which the process maps "
                       "1.0 GiB (VmSize)"),
        Limit(2 * GiB - GiB // 4, "RLIMIT_DATA (ulimit -d) of 2.0 GiB, of which the process "
                                  "maps 256.0 MiB (VmData)")]
    assert limits.resource_limits(root, getrlimit=no_rlimits()) == []
    # A process that already maps more than its limit has no room at all.
    assert limits.resource_limits(root, getrlimit={"RLIMIT_AS": lambda: GiB // 2,
                                                   "RLIMIT_DATA": lambda: -1})[0].nbytes == 0


def test_the_tightest_limit_applies_the_variable_included(tmp_path, monkeypatch):
    folder = "/sys/fs/cgroup/memory/job"
    root = fake_tree(tmp_path, ["4:memory:/job"], V1_MOUNTS, {
        f"{folder}/memory.limit_in_bytes": f"{6 * GiB}\n",
        f"{folder}/memory.usage_in_bytes": f"{GiB}\n"}, mem_available=8 * GiB, vm_size=GiB)
    monkeypatch.setattr(limits, "ROOT", root)
    rlimit = {"RLIMIT_AS": lambda: 4 * GiB, "RLIMIT_DATA": lambda: -1}
    real = limits.resource_limits
    monkeypatch.setattr(limits, "resource_limits", lambda root=None: real(root, rlimit))
    monkeypatch.delenv(ENV, raising=False)
    assert available("cpu") == (3 * GiB, "RLIMIT_AS (ulimit -v) of 4.0 GiB, of which the "
                                          "process maps 1.0 GiB (VmSize)")
    monkeypatch.setenv(ENV, "2GiB")               # tighter than every other: it applies
    assert available("cpu") == (2 * GiB, f"${ENV}=2GiB")
    monkeypatch.setenv(ENV, "32GiB")              # looser: it does not lift the others
    assert available("cpu")[0] == 3 * GiB
    monkeypatch.setenv(ENV, "off")
    assert available("cpu") == (None, f"${ENV}=off")
    # On another device only the variable counts (CUDA adds its own free memory).
    monkeypatch.setenv(ENV, "5GiB")
    assert available("meta") == (5 * GiB, f"${ENV}=5GiB")
    monkeypatch.delenv(ENV)
    assert available("meta") == (None, "unknown for meta")


def test_a_fit_in_a_cgroup_is_refused_naming_the_cgroup(tmp_path, monkeypatch, isolated):
    job = "/sys/fs/cgroup/job_1"
    root = fake_tree(tmp_path, ["0::/job_1"], [V2_MOUNT], {
        f"{job}/memory.max": f"{64 * 2**20}\n", f"{job}/memory.current": f"{48 * 2**20}\n"})
    monkeypatch.setattr(limits, "ROOT", root)
    X = np.random.default_rng(0).standard_normal((4000, 8)).astype(np.float32)
    with pytest.raises(MemoryError, match=r"SelfLabelClusterer.fit would need about .* but "
                       r"16.0 MiB is available \(the tightest limit: the memory limit of "
                       r"cgroup v2 '/job_1' \(memory.max\) of 64.0 MiB"):
        SelfLabelClusterer(2000, max_epochs=1, n_neighbors=0).fit(X)   # logits: 30.5 MiB


RLIMIT_SCRIPT = textwrap.dedent("""
    import resource, sys, time
    import numpy as np
    from skselflabel import SelfLabelClusterer
    from skselflabel._fit.config import resolve_config
    from skselflabel._fit.fit import fit_phases
    from skselflabel._runtime import memory

    n, d, k, heads = (int(v) for v in sys.argv[1:5])
    X = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    est = SelfLabelClusterer(k, n_heads=heads, max_epochs=1, n_label_updates=1,
                             n_neighbors=0, random_state=0)
    config = resolve_config(est.get_params(deep=False), n, (d,))
    estimate = memory.peak(fit_phases(n, d, k, heads, 128, 0, config.diffusion_steps))[0]
    with open("/proc/self/status") as f:
        mapped = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize"))
    room = int(float(sys.argv[5]) * estimate)
    resource.setrlimit(resource.RLIMIT_AS, (mapped + room, mapped + room))
    began = time.perf_counter()
    try:
        est.fit(X)
        print("fitted", len(est.labels_), f"{time.perf_counter() - began:.2f}")
    except MemoryError as exc:
        print("refused", f"{time.perf_counter() - began:.2f}", exc)
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"),
                    reason="RLIMIT_AS is read against /proc/self/status (Linux)")
def test_a_real_rlimit_as_refuses_a_fit_beyond_it_and_lets_one_within_it_run():
    # The case in small: a process limited by RLIMIT_AS (ulimit -v) to less room than
    # the fit's estimate gets the MemoryError before any large allocation; with room for
    # the estimate (and for what torch maps besides) the same fit completes.
    def run(room_over_estimate):
        proc = subprocess.run(
            [sys.executable, "-c", RLIMIT_SCRIPT, "10000", "16", "1000", "2",
             str(room_over_estimate)], capture_output=True, text=True, timeout=300,
            env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
        return proc.stdout.split(maxsplit=2)

    outcome, seconds, message = run(0.5)
    assert outcome == "refused", message
    assert float(seconds) < 5
    assert "SelfLabelClusterer.fit would need about" in message
    assert "the tightest limit: RLIMIT_AS (ulimit -v)" in message
    assert "logits of one head" in message and "(lower: n_clusters or n_samples)" in message
    outcome, clusters, _ = run(4.0)
    assert outcome == "fitted" and int(clusters) == 10000
