"""The multi-rank checks of gdfast.distributed, run by tests/test_distributed.py as
``mpirun -n 2 python tests/mpi_driver.py CASE [DIR]``.

checks: every rank runs every check in step and prints "rank R: all checks passed";
    a failed assertion ends the job through abort_on_error (naming the rank).
fault: rank 1 raises inside fit() at its 3rd step; the job must end, not hang.
kill: rank 1 dies by SIGKILL at its 3rd step; the job must end, not hang.
"""
import os
import shutil
import signal
import sys
import zlib
from pathlib import Path

import numpy as np
from mpi4py import MPI

import gdfast
from gdfast import schedules
from gdfast.distributed import DistributedError, DistributedTrainer, abort_on_error, set_threads

WORLD = MPI.COMM_WORLD
RANK = WORLD.Get_rank()
TIMING = ("samples_per_s", "train_time", "eval_time")


def data(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 12)).astype(np.float32)
    y = (x[:, :3].argmax(axis=1) + (x[:, 3] > 1)).astype(np.int64) % 3
    return x, y


def trainer(comm=WORLD, n=1000, batch_size=64, epochs_total=3, x=None, dropout=0.0, alpha=0.0,
            **kw):
    xy = data(n) if x is None else x
    model = gdfast.MLP([12, 16, 8, 3], seed=1, dropout=dropout, alpha=alpha)
    opt = gdfast.Adam(model.params, lr=1e-2)
    kw.setdefault("schedule", schedules.Cosine(1e-2, epochs_total * -(-n // batch_size)))
    return DistributedTrainer(model, opt, xy, batch_size=batch_size, comm=comm,
                              test=data(200, seed=5), **kw)


def same_on_all_ranks(arr):
    crcs = WORLD.allgather(zlib.crc32(arr))
    return all(c == crcs[0] for c in crcs)


class EveryStep:
    """A progress object that checks the parameters are equal on all ranks after each step."""

    def __init__(self, params):
        self.params, self.steps = params, 0

    def on_epoch_begin(self, epoch, steps):
        pass

    def on_step(self, loss, acc):
        assert same_on_all_ranks(self.params.data), f"parameters differ after step {self.steps}"
        self.steps += 1

    def on_epoch_end(self, record):
        pass


def untimed(history):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in history]


def check_identical_every_step():
    for kw in (dict(overlap=True), dict(overlap=False), dict(deterministic=True)):
        t = trainer(**kw)
        t.progress = EveryStep(t.params)
        t.fit(3)
        assert t.progress.steps == 3 * 16
        hist = WORLD.allgather(untimed(t.history))
        assert all(h == hist[0] for h in hist), "histories differ between ranks"


def check_close_to_one_process():
    # with dropout each rank draws its rows' masks of the whole batch, and rank 0
    # alone adds the L2 penalty: the same training
    for dropout, alpha in ((0.0, 0.0), ([0.3, 0.1], 0.0), (0.0, 1e-2), (0.2, 1e-2)):
        both = trainer(dropout=dropout, alpha=alpha)
        alone = trainer(comm=MPI.COMM_SELF, dropout=dropout, alpha=alpha)
        both.fit(3)
        alone.fit(3)
        np.testing.assert_allclose(both.params.data, alone.params.data, rtol=0, atol=1e-4)
        assert abs(both.history[-1]["train_loss"] - alone.history[-1]["train_loss"]) < 1e-5
        assert both.model.step == alone.model.step == 3 * 16


def check_accumulation_close_to_one_process():
    # 1000 rows in batches of 64, 3 per step: micro-batches of 40 rows at the end
    for dropout, alpha in ((0.0, 0.0), (0.2, 1e-2)):
        both = trainer(accumulate=3, dropout=dropout, alpha=alpha)
        alone = trainer(comm=MPI.COMM_SELF, accumulate=3, dropout=dropout, alpha=alpha)
        both.fit(3)
        alone.fit(3)
        np.testing.assert_allclose(both.params.data, alone.params.data, rtol=0, atol=1e-4)
        assert abs(both.history[-1]["train_loss"] - alone.history[-1]["train_loss"]) < 1e-5
        assert both.step == alone.step == 3 * 6 and both.model.step == alone.model.step


def check_overlap_equals_blocking():
    # 129 rows in batches of 64 end with one row: rank 0's share is empty, and
    # its dropout counter must still step
    for n, dropout, alpha in ((1000, 0.0, 0.0), (129, 0.3, 1e-2)):
        runs = [trainer(n=n, overlap=overlap, dropout=dropout, alpha=alpha)
                for overlap in (True, False)]
        for t in runs:
            t.fit(3)
            assert same_on_all_ranks(np.array([t.model.step])) and t.model.step == 3 * -(-n // 64)
        assert runs[0].overlap and not runs[1].overlap
        assert np.array_equal(runs[0].params.data, runs[1].params.data), n
        assert untimed(runs[0].history) == untimed(runs[1].history), n


def check_deterministic_equals_one_process():
    # 1000 rows in batches of 64 end with a batch of 40; 130 rows end with 2 rows,
    # fewer than 4 parts: two of them are empty
    for n, shards, dropout, alpha in ((1000, 2, 0.0, 0.0), (1000, 4, 0.0, 0.0),
                                      (130, 4, 0.0, 0.0), (1000, 4, 0.3, 1e-2),
                                      (130, 4, 0.3, 1e-2)):
        both = trainer(n=n, deterministic=True, shards=shards, dropout=dropout, alpha=alpha)
        alone = trainer(n=n, comm=MPI.COMM_SELF, deterministic=True, shards=shards,
                        dropout=dropout, alpha=alpha)
        both.fit(3)
        alone.fit(3)
        assert np.array_equal(both.params.data, alone.params.data), (n, shards)
        assert untimed(both.history) == untimed(alone.history), (n, shards)


def check_checkpoints(tmp):
    # only rank 0 writes: rank 1 is given a directory of its own that must stay empty
    mine = tmp / f"rank{RANK}"
    whole = trainer(deterministic=True)
    whole.fit(3)
    first = trainer(deterministic=True, checkpoint_dir=mine)
    first.fit(1)
    assert (tmp / "rank0" / "last.npz").exists() and not (tmp / "rank1").exists()
    assert first.last_checkpoint == mine / "last.npz"
    if RANK == 0:
        shutil.copy(tmp / "rank0" / "last.npz", tmp / "epoch1.npz")
    # resumed on 2 ranks from rank 0's file (rank 1 has none: rank 0 reads and sends it)
    again = trainer(deterministic=True, checkpoint_dir=mine)
    again.fit(3, resume=True)
    assert np.array_equal(again.params.data, whole.params.data)
    assert untimed(again.history) == untimed(whole.history)
    # resumed by one process (a different number of ranks), with the same parts
    if RANK == 0:
        alone = trainer(comm=MPI.COMM_SELF, deterministic=True, shards=2)
        alone.load_checkpoint(tmp / "epoch1.npz")
        alone.fit(3)
        assert np.array_equal(alone.params.data, whole.params.data)
    WORLD.Barrier()


def check_write_failure(tmp):
    # rank 0 cannot write (its checkpoint_dir is a file): every rank raises, none hangs
    blocker = tmp / "not-a-dir"
    if RANK == 0:
        blocker.write_text("x")
    WORLD.Barrier()
    t = trainer(checkpoint_dir=blocker / "run")
    try:
        t.fit(1)
    except DistributedError as e:
        assert "rank 0 could not write" in str(e), e
    else:
        raise AssertionError("an unwritable checkpoint_dir on rank 0 raised nothing")


def check_mismatch():
    x, y = data()
    if RANK == 1:
        y = y.copy()
        y[7] = (y[7] + 1) % 3
    try:
        trainer(x=(x, y))
    except DistributedError as e:
        assert "training data (ranks [0] vs ranks [1])" in str(e), e
    else:
        raise AssertionError("different training data on the ranks was not refused")
    model = gdfast.MLP([12, 16 + RANK, 8, 3])
    try:
        DistributedTrainer(model, gdfast.Adam(model.params), data(), comm=WORLD)
    except DistributedError as e:
        assert "model (ranks [0] vs ranks [1])" in str(e), e
    else:
        raise AssertionError("different models on the ranks were not refused")


def check_early_stopping_and_plateau():
    def kw():       # a schedule of its own for each trainer
        return dict(validation=data(300, seed=9), early_stopping=2, min_delta=0.02,
                    deterministic=True, schedule=schedules.ReduceOnPlateau(3e-2, patience=0))
    both, alone = trainer(**kw()), trainer(comm=MPI.COMM_SELF, shards=2, **kw())
    both.fit(30)
    alone.fit(30)
    assert both.stopped_early and alone.stopped_early
    assert untimed(both.history) == untimed(alone.history)
    assert np.array_equal(both.params.data, alone.params.data)      # the best, restored


def check_lbfgs_closure():
    # L-BFGS calls the closure (a collective here) as often as its line search needs
    def lbfgs(comm):
        model = gdfast.MLP([12, 16, 3], seed=2)
        t = DistributedTrainer(model, gdfast.LBFGS(model.params, max_iter=5), data(),
                               batch_size=None, comm=comm, deterministic=True, shards=2)
        t.fit(2)
        return t
    both, alone = lbfgs(WORLD), lbfgs(MPI.COMM_SELF)
    assert np.array_equal(both.params.data, alone.params.data)
    assert both.history[-1]["train_loss"] < both.history[0]["train_loss"]


def check_threads():
    # both ranks run on this host: each gets half its cores (or those it is bound to)
    os.environ.pop("OMP_NUM_THREADS", None)
    cores, usable = os.cpu_count(), len(os.sched_getaffinity(0))
    assert set_threads() == max(1, min(usable, cores // 2)) == gdfast.get_num_threads()


def run_checks(tmp):
    checks = [check_threads, check_identical_every_step, check_overlap_equals_blocking,
              check_accumulation_close_to_one_process,
              check_close_to_one_process,
              check_deterministic_equals_one_process, lambda: check_checkpoints(tmp),
              lambda: check_write_failure(tmp), check_mismatch, check_early_stopping_and_plateau,
              check_lbfgs_closure]
    with abort_on_error():
        for check in checks:
            check()
    print(f"rank {RANK}: all checks passed", flush=True)


class Fail:
    """A progress object with which rank 1 fails at its 3rd step."""

    def __init__(self, how):
        self.how, self.steps = how, 0

    def on_epoch_begin(self, epoch, steps):
        pass

    def on_step(self, loss, acc):
        self.steps += 1
        if RANK == 1 and self.steps == 3:
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise ZeroDivisionError("rank 1 broke on purpose")

    def on_epoch_end(self, record):
        pass


if __name__ == "__main__":
    case = sys.argv[1]
    if case == "checks":
        run_checks(Path(sys.argv[2]))
    else:
        t = trainer()
        t.progress = Fail(case)
        t.fit(3)
        print(f"rank {RANK}: finished although rank 1 failed", flush=True)
