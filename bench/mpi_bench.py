"""What a data-parallel step costs, piece by piece (the figures behind
docs/distributed.md and BENCHMARKS.md's "Data-parallel over MPI").

    mpirun -n 2 python bench/mpi_bench.py      # on 2 ranks: compute vs each way to sum
    python bench/mpi_bench.py                  # one process: what deterministic=True
                                               # and each rank's batch gathering cost
    python bench/mpi_bench.py compare          # gdfast train, 1 process x 2 threads
                                               # vs mpirun -n 2 x 1 thread (and --overlap)
    python bench/mpi_bench.py model            # docs/distributed.md's scaling tables

For the MNIST network 784-256-128-10 and the 12M-weight
784-2500-2000-1500-1000-500-10, with a global batch of 128: the gradient of
a rank's share (loss_and_grad), and the ways to sum the arena over the ranks:
one blocking Allreduce; one Iallreduce per layer, all started together;
backward then a blocking Allreduce against backward starting each layer's
Iallreduce as it finishes the layer (DistributedTrainer's overlap=False and
True, their runs alternated); Reduce_scatter + Adam on 1/N
of the arena + Allgather of the parameters (the sharded optimizer) against
Allreduce + Adam on all of it; and deterministic=True's Alltoall + ordered
sum + Allgather. Best and median of repeated runs, each after a Barrier.
"""
import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np

import gdfast
from gdfast.mlp import MLP

NETS = {"MNIST 784-256-128-10": [784, 256, 128, 10],
        "12M 784-2500-2000-1500-1000-500-10": [784, 2500, 2000, 1500, 1000, 500, 10]}
BATCH = 128


class Ms(float):
    """A best time in ms that prints with its median: on a loaded machine the
    best of many runs is the closest to the uncontended cost."""

    def __new__(cls, times):
        ms = super().__new__(cls, 1e3 * min(times))
        ms.median = 1e3 * statistics.median(times)
        return ms

    def __format__(self, spec):
        return f"{format(float(self), spec)} (median {format(self.median, spec)})"


def best_ms(fn, reps, comm=None):
    times = []
    for _ in range(reps):
        if comm is not None:
            comm.Barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Ms(times)


def alternated(fns, reps, comm):
    """best_ms of each of fns, their runs taken in turn so that all see the same machine."""
    times = [[] for _ in fns]
    for _ in range(reps):
        for fn, ts in zip(fns, times):
            comm.Barrier()
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [Ms(ts) for ts in times]


def batch(sizes, n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, sizes[0]), dtype=np.float32), rng.integers(0, sizes[-1], n)


def ranks(comm, reps):
    from mpi4py import MPI
    size, rank = comm.Get_size(), comm.Get_rank()
    out = print if rank == 0 else (lambda *a, **k: None)
    out(f"{size} ranks x {gdfast.get_num_threads()} threads, global batch {BATCH}; "
        f"{MPI.Get_library_version().splitlines()[0].strip()}")
    for name, sizes in NETS.items():
        model = MLP(sizes)
        p = model.params
        n_p, width = p.size, -(-p.size // size)
        x, y = batch(sizes, BATCH // size, seed=rank)
        r = reps if n_p < 1e6 else max(3, reps // 10)
        compute = best_ms(lambda: model.loss_and_grad(x, y), r, comm)
        grad, data = p.grad, p.data
        adam = gdfast.Adam(p, lr=1e-3)
        allreduce = best_ms(lambda: comm.Allreduce(MPI.IN_PLACE, grad, op=MPI.SUM), r, comm)
        adam_all = best_ms(adam.step, r, comm)
        # one request per layer (w_l and b_l lie together in the arena)
        layers = [(p.offset(f"w{l}"), p.offset(f"b{l}") + sizes[l]) for l in range(1, len(sizes))]

        def per_layer():
            MPI.Request.Waitall([comm.Iallreduce(MPI.IN_PLACE, grad[a:b], op=MPI.SUM)
                                 for a, b in reversed(layers)])     # backward's order
        split = best_ms(per_layer, r, comm)

        def blocking():         # DistributedTrainer(overlap=False)
            model.loss_and_grad(x, y)
            comm.Allreduce(MPI.IN_PLACE, grad, op=MPI.SUM)
        views = {l: grad[a:b] for l, (a, b) in enumerate(layers, 1)}

        def overlapped():       # DistributedTrainer(overlap=True)
            requests = []

            def start(l):
                requests.append(comm.Iallreduce(MPI.IN_PLACE, views[l], op=MPI.SUM))
                MPI.Request.Testall(requests)
            model.loss_and_grad(x, y, on_layer=start)
            MPI.Request.Waitall(requests)
        blocked, overlap = alternated((blocking, overlapped), r, comm)
        # the sharded optimizer: each rank sums and updates 1/N of the arena
        gpad, ppad = np.zeros(size * width, np.float32), np.zeros(size * width, np.float32)
        gpad[:n_p], ppad[:n_p] = grad, data
        gmine, pmine = gpad[rank * width:(rank + 1) * width].copy(), ppad[rank * width:(rank + 1) * width]
        shard_adam = gdfast.Adam([pmine], lr=1e-3)
        rs = best_ms(lambda: comm.Reduce_scatter_block(gpad, gmine, op=MPI.SUM), r, comm)
        adam_part = best_ms(lambda: shard_adam.step([gmine]), r, comm)
        mine_copy = pmine.copy()
        ag = best_ms(lambda: comm.Allgather(mine_copy, ppad), r, comm)
        # deterministic=True: Alltoall, sum in part order, Allgather
        send = np.zeros((size, 1, width), np.float32)
        recv, part = np.zeros_like(send), np.zeros(size * width, np.float32)
        acc, whole = np.empty(width, np.float32), np.empty(size * width, np.float32)

        def ordered():
            np.multiply(grad, np.float32(1 / size), out=part[:n_p])
            send[:, 0] = part.reshape(size, -1)
            comm.Alltoall(send, recv)
            every = recv.reshape(size, -1)
            acc[...] = every[0]
            for q in every[1:]:
                np.add(acc, q, out=acc)
            comm.Allgather(acc, whole)
            grad[...] = whole[:n_p]
        det = best_ms(ordered, r, comm)
        mb = 4 * n_p / 1e6
        out(f"\n{name}: {n_p:,} floats ({mb:.2f} MB) per message")
        out(f"  loss_and_grad of {BATCH // size} rows        {compute:8.3f} ms")
        out(f"  Allreduce (blocking)                {allreduce:8.3f} ms  "
            f"({2 * (size - 1) / size * mb / allreduce:.2f} GB/s bus bandwidth)")
        out(f"  Iallreduce per layer, {len(layers)} at once     {split:8.3f} ms")
        out(f"  backward, then Allreduce (overlap=False)      {blocked:8.3f} ms")
        out(f"  backward starting each layer's Iallreduce (overlap=True) {overlap:8.3f} ms")
        out(f"  Adam on the whole arena             {adam_all:8.3f} ms")
        out(f"  Reduce_scatter + Adam 1/{size} + Allgather "
            f"{rs:.3f} + {adam_part:.3f} + {ag:.3f} = {rs + adam_part + ag:.3f} ms "
            f"(vs Allreduce + Adam {allreduce + adam_all:.3f} ms)")
        out(f"  deterministic: Alltoall + ordered sum + Allgather {det:8.3f} ms")
        out(f"  communication share of a step       {allreduce / (compute + allreduce + adam_all):8.1%}")


def cpu_ms(fn, reps):
    """The best CPU time of fn on this thread, in ms: on one thread, what it
    costs when not descheduled (the paper model's compute on a busy machine)."""
    times = []
    for _ in range(reps):
        t0 = time.thread_time()
        fn()
        times.append(time.thread_time() - t0)
    return 1e3 * min(times)


def one_process(reps):
    from gdfast.batching import Batches
    threads = gdfast.get_num_threads()
    gdfast.set_num_threads(1)
    print("compute on 1 thread, best CPU time (the inputs of the paper model)")
    for name, sizes in NETS.items():
        model = MLP(sizes)
        adam = gdfast.Adam(model.params, lr=1e-3)
        r = reps if model.params.size < 1e6 else max(3, reps // 10)
        data = {n: batch(sizes, n) for n in (128, 64, 16, 2)}
        rows = {n: cpu_ms(lambda: model.loss_and_grad(*xy), r) for n, xy in data.items()}
        print(f"  {name}: loss_and_grad " + ", ".join(f"{n} rows {t:.3f} ms" for n, t in rows.items())
              + f"; Adam step {cpu_ms(adam.step, r):.3f} ms")
    gdfast.set_num_threads(threads)
    print(f"1 process x {threads} threads, batch {BATCH}")
    for name, sizes in NETS.items():
        model = MLP(sizes)
        x, y = batch(sizes, BATCH)
        r = reps if model.params.size < 1e6 else max(3, reps // 10)
        whole = best_ms(lambda: model.loss_and_grad(x, y), r)
        g = model.params.grad
        acc = np.empty_like(g)

        def two_parts():        # what deterministic=True, shards=2 does in one process
            model.loss_and_grad(x[:BATCH // 2], y[:BATCH // 2])
            np.multiply(g, np.float32(0.5), out=acc)
            model.loss_and_grad(x[BATCH // 2:], y[BATCH // 2:])
            np.multiply(g, np.float32(0.5), out=g)
            np.add(g, acc, out=g)
        parts = best_ms(two_parts, r)
        print(f"\n{name}\n  loss_and_grad of {BATCH} rows   {whole:8.3f} ms\n"
              f"  as 2 parts of {BATCH // 2}, summed  {parts:8.3f} ms  "
              f"(deterministic=True, shards=2: {parts / whole - 1:+.0%})")
    # every rank gathers (and shifts) the whole global batch, then uses its share
    xs, ys = batch([784, 10], 17_196)
    for shift in (0, 1):
        b = Batches(xs, ys, BATCH, shift=shift)
        t0 = time.perf_counter()
        steps = sum(1 for _ in b)
        print(f"gathering a batch of {BATCH} (shift {shift}): "
              f"{1e3 * (time.perf_counter() - t0) / steps:.3f} ms")


def compare():
    """gdfast train on MNIST (GDFAST_DATA), 1 process x 2 threads, then 2 ranks x 1 thread
    without and with --overlap."""
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    train = [sys.executable, "-m", "gdfast", "train", "--no-progress"]
    for label, cmd in (("1 process x 2 threads", train + ["--threads", "2"]),
                       ("2 ranks x 1 thread", ["mpirun", "--oversubscribe", "-n", "2"] + train),
                       ("2 ranks, --overlap", ["mpirun", "--oversubscribe", "-n", "2"] + train
                        + ["--overlap"])):
        log = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
        acc = re.search(r"final test accuracy ([0-9.]+)%", log).group(1)
        rate = re.search(r"training throughput ([0-9,]+) samples/s", log).group(1)
        print(f"{label:<22} test accuracy {acc}%  training {rate} samples/s")


# The paper model of docs/distributed.md. A node computes like one core of
# the machine of BENCHMARKS.md: ms per step (loss_and_grad of the rows per
# node + Adam), the best 1-thread CPU times `python bench/mpi_bench.py`
# printed on that machine while it was quiet (2026-12-03).
ADAM_MS = {"MNIST 784-256-128-10": 0.117, "12M 784-2500-2000-1500-1000-500-10": 13.56}
COMPUTE_MS = {name: {n: t + ADAM_MS[name] for n, t in rows.items()} for name, rows in (
    ("MNIST 784-256-128-10", {128: 1.214, 16: 0.202, 2: 0.059}),
    ("12M 784-2500-2000-1500-1000-500-10", {128: 78.02, 16: 23.58, 2: 10.95}))}
LINKS = {"100 Gb/s InfiniBand (alpha 1.5 us, 11 GB/s)": (1.5e-6, 11e9),
         "10 Gb/s Ethernet (alpha 25 us, 1.1 GB/s)": (25e-6, 1.1e9)}


def ring_allreduce_s(n, nbytes, alpha, beta):
    """A ring allreduce of nbytes over n ranks: 2 (n - 1) steps, each moving nbytes / n."""
    return 2 * (n - 1) * alpha + 2 * (n - 1) / n * nbytes / beta if n > 1 else 0.0


def paper_model():
    for name, compute in COMPUTE_MS.items():
        nbytes = 4 * MLP(NETS[name]).params.size
        for link, (alpha, beta) in LINKS.items():
            print(f"\n{name}, {nbytes / 1e6:.2f} MB per allreduce, {link}; compute per node "
                  + ", ".join(f"{n} rows {t:.3f} ms" for n, t in compute.items()))
            print("| nodes | allreduce | 128 rows per node: samples/s (comm share) "
                  "| global batch 128: rows per node, samples/s (comm share) |")
            print("|---|---|---|---|")
            for n in (1, 8, 64, 512):
                ar = 1e3 * ring_allreduce_s(n, nbytes, alpha, beta)
                weak = 128 * n / (compute[128] + ar) * 1e3
                rows = 128 // n
                if rows in compute:
                    strong = (f"{rows}, {128 / (compute[rows] + ar) * 1e3:,.0f} "
                              f"({ar / (compute[rows] + ar):.0%})")
                else:
                    strong = "1 node" if n == 1 else "fewer rows than nodes"
                if n == 1:
                    strong = f"128, {128 / compute[128] * 1e3:,.0f} (0%)"
                print(f"| {n} | {ar:.3f} ms | {weak:,.0f} ({ar / (compute[128] + ar):.0%}) "
                      f"| {strong} |")


if __name__ == "__main__":
    if sys.argv[1:] == ["compare"]:
        compare()
    elif sys.argv[1:] == ["model"]:
        paper_model()
    elif int(os.environ.get("OMPI_COMM_WORLD_SIZE", os.environ.get("PMI_SIZE", "1"))) > 1:
        from gdfast import distributed
        from mpi4py import MPI
        distributed.set_threads()
        ranks(MPI.COMM_WORLD, reps=100)
    else:
        one_process(reps=100)
