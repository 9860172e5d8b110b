"""gdfast.distributed: data-parallel training over MPI.

The multi-rank checks run under ``mpirun -n 2`` (tests/mpi_driver.py) when
mpi4py and mpirun are installed; the rest run in this process. Without
mpi4py, only the clear error it gives is tested.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gdfast
from gdfast import distributed
from gdfast.batching import Batches
from gdfast.train import Trainer

from conftest import child_python

DRIVER = Path(__file__).resolve().parent / "mpi_driver.py"


def test_without_mpi4py_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)   # `import mpi4py` now fails
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", None)
    model = gdfast.MLP([4, 3])
    x, y = np.zeros((8, 4), np.float32), np.zeros(8, np.int64)
    with pytest.raises(ImportError, match=r"needs mpi4py .*pip install 'gdfast\[mpi\]'"):
        distributed.DistributedTrainer(model, gdfast.SGD(model.params), (x, y))
    with pytest.raises(ImportError, match="needs mpi4py"):
        distributed.set_threads()


def test_launched_reads_the_launchers_environment():
    assert distributed.launched({"OMPI_COMM_WORLD_SIZE": "4"})
    assert distributed.launched({"PMI_SIZE": "2"})
    assert not distributed.launched({"OMPI_COMM_WORLD_SIZE": "1"})   # mpirun -n 1: one process
    assert not distributed.launched({"PMI_SIZE": "junk"})
    assert not distributed.launched({})


@pytest.mark.parametrize("shift, batch_size, drop_last", [(0, 64, False), (1, 64, False),
                                                        (1, 50, True), (0, None, False)])
def test_each_rank_gathers_its_rows_of_the_one_process_batches(shift, batch_size, drop_last):
    x = np.random.default_rng(0).random((230, 784), dtype=np.float32)
    y = np.arange(230)

    def two_epochs(batches):    # the second epoch's shuffle and translations too
        return [(xb.copy(), yb.copy()) for _ in range(2) for xb, yb in batches]
    whole = two_epochs(Batches(x, y, batch_size, shift=shift, drop_last=drop_last, seed=4))
    for rank in range(3):
        batches = Batches(x, y, batch_size, shift=shift, drop_last=drop_last, seed=4)
        mine = two_epochs(distributed._RankBatches(batches, rank, 3))
        assert len(mine) == len(whole)
        for (xb, yb), (xw, yw) in zip(mine, whole):
            lo, hi = rank * len(yw) // 3, (rank + 1) * len(yw) // 3
            assert np.array_equal(yb, yw) and np.array_equal(xb, xw[lo:hi])


@pytest.fixture
def mpi():
    return pytest.importorskip("mpi4py.MPI")


def _data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    return x, (x[:, 0] > x[:, 1]).astype(np.int64)


def _fit(cls, dropout=0.0, alpha=0.0, **kw):
    model = gdfast.MLP([6, 8, 2], seed=3, dropout=dropout, alpha=alpha)
    t = cls(model, gdfast.Adam(model.params, lr=1e-2), _data(), batch_size=32, test=_data(50, 1),
            **kw)
    t.fit(2)
    return t


class Wrapped:
    """A model of the Trainer's protocol that is not gdfast's MLP (no on_layer, no mean_over)."""

    def __init__(self, mlp):
        self.mlp, self.params = mlp, mlp.params

    def loss_and_grad(self, x, y):
        return self.mlp.loss_and_grad(x, y)

    def predict(self, x):
        return self.mlp.predict(x)

    def evaluate(self, x, y, batch_size=1000):
        return self.mlp.evaluate(x, y, batch_size)


@pytest.mark.parametrize("dropout, alpha", [(0.0, 0.0), (0.3, 0.0), (0.0, 1e-2), (0.3, 1e-2)])
@pytest.mark.parametrize("overlap", [True, False])
def test_one_rank_is_the_plain_trainer_bit_for_bit(mpi, overlap, dropout, alpha):
    plain = _fit(Trainer, dropout, alpha)
    one = _fit(distributed.DistributedTrainer, dropout, alpha, comm=mpi.COMM_SELF,
               overlap=overlap)
    assert one.overlap is overlap
    assert np.array_equal(one.params.data, plain.params.data)
    assert [r["train_loss"] for r in one.history] == [r["train_loss"] for r in plain.history]


def test_a_model_of_the_trainers_protocol_trains_without_overlap(mpi):
    x, y = _data()
    runs = []
    for wrap in (False, True):
        mlp = gdfast.MLP([6, 8, 2], seed=3)
        model = Wrapped(mlp) if wrap else mlp
        t = distributed.DistributedTrainer(model, gdfast.Adam(mlp.params, lr=1e-2), (x, y),
                                           batch_size=32, comm=mpi.COMM_SELF, overlap=not wrap)
        t.fit(2)
        runs.append(t)
    assert np.array_equal(runs[0].params.data, runs[1].params.data)
    with pytest.raises(ValueError, match="overlap=True needs gdfast's MLP"):
        distributed.DistributedTrainer(Wrapped(gdfast.MLP([6, 2])), gdfast.SGD(runs[0].params),
                                       (x, y), comm=mpi.COMM_SELF, overlap=True)


@pytest.mark.parametrize("dropout, alpha", [(0.0, 0.0), (0.3, 1e-2)])
def test_deterministic_result_depends_on_shards_only(mpi, dropout, alpha):
    two = _fit(distributed.DistributedTrainer, dropout, alpha, comm=mpi.COMM_SELF,
               deterministic=True, shards=2)
    again = _fit(distributed.DistributedTrainer, dropout, alpha, comm=mpi.COMM_SELF,
                 deterministic=True, shards=2)
    # the same masks (each part draws its rows' own) and the penalty added once
    plain = _fit(Trainer, dropout, alpha)
    assert np.array_equal(two.params.data, again.params.data)
    # the same training, summed in another order: close, not equal
    np.testing.assert_allclose(two.params.data, plain.params.data, atol=1e-4)
    for a, b in zip(two.history, plain.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


@pytest.mark.parametrize("kw, error, match", [
    (dict(shards=2), ValueError, "shards applies to deterministic=True only"),
    (dict(deterministic=True, shards=0), ValueError, "shards must be a positive multiple"),
    (dict(deterministic=True, shards=1.5), ValueError, "shards must be a positive multiple"),
    (dict(deterministic=1), TypeError, "deterministic must be True or False"),
    (dict(overlap=1), TypeError, "overlap must be True or False"),
    (dict(deterministic=True, overlap=True), ValueError, "cannot be combined with deterministic"),
])
def test_bad_arguments(mpi, kw, error, match):
    model = gdfast.MLP([6, 2])
    before = model.params.data.copy()
    with pytest.raises(error, match=match):
        distributed.DistributedTrainer(model, gdfast.SGD(model.params), _data(),
                                       comm=mpi.COMM_SELF, **kw)
    assert np.array_equal(model.params.data, before)


def test_refuses_an_l2_penalty_it_cannot_count_once(mpi):
    model = Wrapped(gdfast.MLP([6, 4, 4, 2]))
    model.alpha = 1e-3
    with pytest.raises(ValueError, match="cannot train a Wrapped with alpha"):
        distributed.DistributedTrainer(model, gdfast.SGD(model.params), _data(), comm=mpi.COMM_SELF)


def test_refuses_gradient_accumulation_in_deterministic_mode(mpi):
    model = gdfast.MLP([6, 4, 2])
    with pytest.raises(ValueError, match="deterministic=True cannot accumulate gradients"):
        distributed.DistributedTrainer(model, gdfast.SGD(model.params), _data(), comm=mpi.COMM_SELF,
                                       accumulate=2, deterministic=True)


@pytest.mark.parametrize("dropout, alpha", [(0.0, 0.0), (0.3, 1e-2)])
def test_one_rank_accumulates_as_the_plain_trainer_bit_for_bit(mpi, dropout, alpha):
    # 300 rows in batches of 32 with accumulate=3: the last step has one micro-batch of 12
    plain = _fit(Trainer, dropout, alpha, accumulate=3)
    one = _fit(distributed.DistributedTrainer, dropout, alpha, comm=mpi.COMM_SELF, accumulate=3)
    assert np.array_equal(one.params.data, plain.params.data)
    assert [r["train_loss"] for r in one.history] == [r["train_loss"] for r in plain.history]
    assert one.step == plain.step and one.model.step == plain.model.step


def test_set_threads(mpi, monkeypatch):
    before = gdfast.get_num_threads()
    try:
        assert distributed.set_threads(1, mpi.COMM_SELF) == 1 == gdfast.get_num_threads()
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        # one rank on this host: all the cores it may use
        assert distributed.set_threads(None, mpi.COMM_SELF) == len(os.sched_getaffinity(0))
        with pytest.raises(ValueError, match="threads must be an integer >= 1"):
            distributed.set_threads(0, mpi.COMM_SELF)
    finally:
        gdfast.set_num_threads(before)


def _mpirun(*args, timeout=240):
    """Run `args` on 2 ranks; Open MPI needs leave to run as root and to put 2
    ranks on fewer cores."""
    pytest.importorskip("mpi4py.MPI")
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        pytest.skip("mpirun is not installed")
    flags = ["--oversubscribe"] if "Open MPI" in subprocess.run(
        [mpirun, "--version"], capture_output=True, text=True).stdout else []
    env, cwd = child_python(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env.pop("OMP_NUM_THREADS", None)    # each rank's default: its share of the host's cores
    return subprocess.run([mpirun, *flags, "-n", "2", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


def test_two_ranks(tmp_path):
    """Threads per rank; bitwise-equal parameters on both ranks after every
    step; deterministic mode equal to one process; checkpoints by rank 0,
    resumed on 2 ranks and on 1; a failed write raised on every rank;
    mismatched data and models refused; early stopping with ReduceOnPlateau
    and L-BFGS as in one process."""
    proc = _mpirun(sys.executable, str(DRIVER), "checks", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("all checks passed") == 2, proc.stdout + proc.stderr


@pytest.mark.parametrize("how", ["fault", "kill"])
def test_a_failing_rank_ends_the_job(how):
    proc = _mpirun(sys.executable, str(DRIVER), how, timeout=120)   # a hang times out
    assert proc.returncode != 0
    assert "finished although rank 1 failed" not in proc.stdout
    if how == "fault":
        assert "gdfast: rank 1 of 2 failed with ZeroDivisionError: rank 1 broke on purpose" \
            in proc.stderr, proc.stderr


def test_gdfast_train_on_two_ranks_then_resumed_on_one(tmp_path):
    x, y = _data(600)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    common = ["-m", "gdfast", "train", "--train", str(tmp_path / "d.npz"), "--hidden", "16",
              "--dropout", "0.1", "--alpha", "1e-4", "--accumulate", "2", "--no-progress",
              "--checkpoint-dir", str(tmp_path / "run")]
    proc = _mpirun(sys.executable, *common, "--epochs", "2", "--overlap")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(re.findall(r"2 ranks x \d+ threads", proc.stdout)) == 1, proc.stdout  # rank 0's
    assert proc.stdout.count("final training loss") == 1, proc.stdout
    env, cwd = child_python()
    one = subprocess.run([sys.executable, *common, "--epochs", "3", "--resume"], env=env,
                         cwd=cwd, capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stdout + one.stderr
    assert "epoch   3/3" in one.stdout and "epoch   2/3" not in one.stdout, one.stdout
