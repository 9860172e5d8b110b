"""Data-parallel training over MPI (mpi4py): one training run on N processes.

    mpirun -n 4 gdfast train          # the same command line as one process

    from gdfast import distributed
    distributed.set_threads()         # the host's cores divided between its ranks
    trainer = distributed.DistributedTrainer(model, optimizer, (x, y), batch_size=128,
                                             test=(x_test, y_test), checkpoint_dir="run1")
    trainer.fit(10)                   # run as: mpirun -n 4 python script.py

Every rank holds the whole model and data set and draws the same global
mini-batches as a one-process run with the same seed; rank r gathers only
rows [r b / N, (r + 1) b / N) of each batch of b and computes their
gradient, scaled by their share of the batch, and one in-place Allreduce of the gradient arena (a
single contiguous buffer) sums the shares. Every rank then takes the same
optimizer step on the same gradients, so the parameters stay bitwise
identical on all ranks (checked at the end of every epoch). The optimizer
state is whole on every rank, so checkpoints do not depend on N: rank 0
writes them and a run resumes with any number of ranks.

Parts of a batch train the network one process would: a dropout mask is
keyed by its row's place in the whole batch (loss_and_grad's first_row) and
the masks' counter steps once per optimizer step, and the part holding the
batch's first row alone adds the L2 penalty (penalty=False elsewhere).

By default the whole arena is summed in one blocking Allreduce after
backward. overlap=True (gdfast's MLP only) starts each layer's allreduce as
soon as backward has produced its gradients instead: one Iallreduce per
layer, from the last layer down, through MLP.loss_and_grad's on_layer hook,
so the messages can travel while the layers below are computed. On one host
it measured slower (docs/distributed.md): there the CPU that computes also
moves the bytes. On 2 ranks both give the same bits; on more, MPI may sum a
layer's smaller message in another order than the whole arena's.

deterministic=True fixes the order in which partial gradients are summed:
the batch is cut into `shards` parts (default N), each part's gradient is
computed on its own, and each rank sums its slice of the arena over all
parts in part order (Alltoall, ordered sum, Allgather: the same traffic as
a ring allreduce). The bits then depend on `shards` only, not on N: a
one-process run with the same `shards` gives the same parameters. A plain
one-process Trainer does not: its batch-wide GEMM sums the batch in one
chain that partial sums cannot reproduce (see docs/distributed.md).

Errors: a rank that raises inside fit() prints the error with its rank and
ends the whole job (MPI Abort), as no other rank could finish its next
collective; errors every rank sees alike (a diverged loss, an unreadable
checkpoint, a start-up mismatch) are raised on every rank instead.
"""
import contextlib
import hashlib
import inspect
import math
import os
import sys
import traceback
import zlib
from pathlib import Path

import numpy as np

from . import checkpoint as ckpt
from ._version import __version__
from .mlp import MLP
from .train import Trainer, TrainingDiverged, _model_info, _optimizer_name

__all__ = ["DistributedTrainer", "DistributedError", "launched", "set_threads",
           "abort_on_error", "start"]

# what launchers set for each process: Open MPI, MPICH/Intel MPI (Hydra, PMI), MVAPICH, Slurm
_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")
# the rows of a data set its fingerprint reads (with its shape and all labels)
_SAMPLE_ROWS = 1024
_TIMING = ("samples_per_s", "train_time", "eval_time")


class DistributedError(RuntimeError):
    """Raised on every rank alike: the ranks disagree, or rank 0 could not write."""


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(
            "gdfast.distributed needs mpi4py and an MPI library: pip install 'gdfast[mpi]' "
            "(with Open MPI installed, e.g. apt-get install openmpi-bin libopenmpi-dev)") from e
    return MPI


def launched(environ=None):
    """Whether an MPI launcher (mpirun, mpiexec, srun) started this process
    as one of several ranks; read from the environment, without MPI."""
    environ = os.environ if environ is None else environ
    for var in _SIZE_VARS:
        try:
            return int(environ[var]) > 1
        except (KeyError, ValueError):
            continue
    return False


def set_threads(threads=None, comm=None):
    """Set gdfast's threads for this rank and return the count: `threads`, or
    else OMP_NUM_THREADS, or else this host's cores divided between the ranks
    on it (counted with a shared-memory communicator), within the cores this
    rank may run on (mpirun may bind each rank to one)."""
    import gdfast
    if threads is not None:
        if isinstance(threads, bool) or int(threads) != threads or threads < 1:
            raise ValueError(f"threads must be an integer >= 1 or None, got {threads!r}")
    elif os.environ.get("OMP_NUM_THREADS", "").strip():
        threads = gdfast.get_num_threads()
    else:
        MPI = _mpi()
        node = (comm if comm is not None else MPI.COMM_WORLD).Split_type(MPI.COMM_TYPE_SHARED)
        local = node.Get_size()
        node.Free()
        cores = os.cpu_count() or 1
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
        threads = max(1, min(usable, cores // local))
    gdfast.set_num_threads(int(threads))
    return int(threads)


def _abort(comm, exc):
    """Say what failed on this rank, then end every rank of the job."""
    who = f"rank {comm.Get_rank()} of {comm.Get_size()}"
    if isinstance(exc, SystemExit):     # its message (if any) is the whole story
        code = exc.code if isinstance(exc.code, int) else 1
        what = exc.code if isinstance(exc.code, str) else f"exited with status {code}"
        print(f"gdfast: {who}: {what}; ending the job", file=sys.stderr, flush=True)
    else:
        code = 1
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        print(f"gdfast: {who} failed with {type(exc).__name__}: {exc}; ending the job "
              "(the other ranks would wait for it forever)", file=sys.stderr, flush=True)
    comm.Abort(code)


@contextlib.contextmanager
def abort_on_error(comm=None):
    """Any exception, or a non-zero sys.exit, in the block ends the whole job
    with a message naming this rank (MPI Abort) instead of leaving the other
    ranks waiting in a collective."""
    comm = comm if comm is not None else _mpi().COMM_WORLD
    try:
        yield comm
    except SystemExit as e:
        if e.code not in (None, 0):
            _abort(comm, e)
        raise
    except BaseException as e:
        _abort(comm, e)


def start(threads=None):
    """What `gdfast train` does under mpirun: MPI up, set_threads(threads),
    and stdout on rank 0 only (errors still print on every rank). Returns COMM_WORLD."""
    comm = _mpi().COMM_WORLD
    set_threads(threads, comm)
    if comm.Get_rank():
        sys.stdout = open(os.devnull, "w")
    return comm


def _rows(n, part, parts):
    """Rows [lo, hi) of part `part` when n rows are cut into `parts` near-equal parts."""
    return part * n // parts, (part + 1) * n // parts


class _RankBatches:
    """The rank's part of every global mini-batch of `batches`: x of its rows
    only, y of the whole batch (labels are small, and the Trainer counts a
    batch by them). The same randomness is drawn as by one process."""

    def __init__(self, batches, rank, size):
        self.batches, self.rank, self.size = batches, rank, size
        if not batches.full:
            rows = -(-batches.batch_size // size)         # the most a part can have
            self._x = np.empty((rows,) + batches.x.shape[1:], batches.x.dtype)
            self._raw = np.empty_like(self._x) if batches.shift else None
            self._y = np.empty((batches.batch_size,) + batches.y.shape[1:], batches.y.dtype)

    def __getattr__(self, name):    # get_state, batch_size, x, ...: the global batches'
        return getattr(self.batches, name)

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        b = self.batches
        if b.full:
            lo, hi = _rows(len(b.y), self.rank, self.size)
            yield b.x[lo:hi], b.y
            return
        for idx, counts in b.plan():
            lo, hi = _rows(len(idx), self.rank, self.size)
            xb, yb = self._x[:hi - lo], self._y[:len(idx)]
            if counts is None:
                np.take(b.x, idx[lo:hi], axis=0, out=xb, mode="clip")
            else:       # the batch's runs of each translation, cut to rows lo:hi
                ends = np.cumsum(counts)
                mine = np.clip(np.minimum(ends, hi) - np.maximum(ends - counts, lo), 0, None)
                np.take(b.x, idx[lo:hi], axis=0, out=self._raw[:hi - lo], mode="clip")
                b._shift_into(self._raw[:hi - lo], xb, mine)
            np.take(b.y, idx, axis=0, out=yb, mode="clip")
            yield xb, yb


def _data_digest(pair):
    """Shape, dtypes, every label and an even sample of the rows of (x, y)."""
    if pair is None:
        return None
    x, y = np.asarray(pair[0]), np.asarray(pair[1])
    rows = np.unique(np.linspace(0, len(x) - 1, _SAMPLE_ROWS).astype(np.intp))
    h = hashlib.blake2b(repr((x.shape, x.dtype.str, y.shape, y.dtype.str)).encode(), digest_size=8)
    h.update(np.ascontiguousarray(x[rows]).tobytes())
    h.update(np.ascontiguousarray(y).tobytes())
    return h.hexdigest()


class DistributedTrainer(Trainer):
    """A Trainer (same arguments, same history and checkpoints) whose every
    step is computed by all ranks of `comm` (default MPI.COMM_WORLD) together.

    Collective: every rank must build it and call fit() alike. At start the
    ranks compare fingerprints of the model, optimizer, schedule, settings and
    data (a DistributedError names what differs), then rank 0's parameters,
    optimizer state and shuffle state are broadcast.

    deterministic: sum partial gradients in a fixed order, so the result
        depends on `shards` (the parts each batch is cut into; default N,
        a multiple of N) and not on the number of ranks.
    overlap: start each layer's allreduce inside backward, as soon as the
        layer is done (needs gdfast's MLP; not with deterministic).
    """

    def __init__(self, model, optimizer, train, *, comm=None, deterministic=False, shards=None,
                 overlap=False, **kwargs):
        MPI = _mpi()
        comm = MPI.COMM_WORLD if comm is None else comm
        size = comm.Get_size()
        if getattr(model, "alpha", 0) and not isinstance(model, MLP):
            raise ValueError(
                f"DistributedTrainer cannot train a {type(model).__name__} with alpha: every "
                "part of a batch would add the whole L2 penalty once (gdfast's MLP adds it on "
                "one part only)")
        if kwargs.get("accumulate", 1) != 1 and deterministic:
            raise ValueError("deterministic=True cannot accumulate gradients (accumulate=1): its "
                             "ordered sum needs each part's whole gradient; use a global batch "
                             "that many times larger instead")
        if not isinstance(deterministic, bool):
            raise TypeError(f"deterministic must be True or False, got {deterministic!r}")
        if shards is not None:
            if not deterministic:
                raise ValueError("shards applies to deterministic=True only")
            if isinstance(shards, bool) or int(shards) != shards or shards < 1 or shards % size:
                raise ValueError(f"shards must be a positive multiple of the {size} ranks, "
                                 f"got {shards!r}")
        if not isinstance(overlap, bool):
            raise TypeError(f"overlap must be True or False, got {overlap!r}")
        if overlap and deterministic:
            raise ValueError("overlap=True cannot be combined with deterministic=True: the "
                             "ordered sum needs every part's whole gradient first")
        if overlap and not isinstance(model, MLP):
            raise ValueError(f"overlap=True needs gdfast's MLP, whose backward reports each "
                             f"finished layer; got a {type(model).__name__}")
        super().__init__(model, optimizer, train, **kwargs)
        self.comm, self.rank, self.size = comm, comm.Get_rank(), size
        self.deterministic, self.shards = deterministic, int(shards or size)
        self.overlap = overlap
        self._one_call = False          # the gradients must be summed before the update
        self.batches = _RankBatches(self.batches, self.rank, size)
        self._in_place, self._sum, self._request = MPI.IN_PLACE, MPI.SUM, MPI.Request
        self._loss = np.zeros(1)
        self._mean_over = "mean_over" in inspect.signature(model.loss_and_grad).parameters
        self._is_mlp = isinstance(model, MLP)
        self._step0 = None      # the MLP's dropout step at the start of this optimizer step
        if self.overlap:                # layer l's gradients: w_l then b_l, one slice
            p = self.params
            self._layer_grads = {l: p.grad[p.offset(f"w{l}"):p.offset(f"b{l}") + model.sizes[l]]
                                 for l in range(1, len(model.sizes))}
            self._requests = []
        if deterministic:
            parts, width = self.shards // size, -(-self.params.size // size)
            self._send = np.zeros((size, parts, width), np.float32)
            self._recv = np.zeros_like(self._send)
            self._part = np.zeros(size * width, np.float32)     # one part's gradient, padded
            self._slice = np.empty(width, np.float32)
            self._whole = np.empty(size * width, np.float32)
            self._losses, self._all_losses = np.zeros(parts), np.zeros(self.shards)
        self._agree()
        state = comm.bcast(self.state_dict() if self.rank == 0 else None, root=0)
        if self.rank:
            self.load_state_dict(state)

    # -- start-up ----------------------------------------------------------------

    def _fingerprint(self):
        b = self.batches
        groups = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        items = {
            "gdfast version": __version__,
            "model": (_model_info(self.model), self.params.layout()),
            "optimizer": (_optimizer_name(self.optimizer), groups),
            "schedule": (type(self.schedule).__name__, self.schedule.state_dict()),
            "batches": (b.batch_size, b.shuffle, b.drop_last, b.shift, len(b.x)),
            "training data": _data_digest((b.x, b.y)),
            "validation data": _data_digest(self.validation),
            "test data": _data_digest(self.test),
            "trainer settings": (self.monitor, self.early_stopping, self.min_delta,
                                 self.restore_best, self.clip_norm, self.track_grad_norm,
                                 self.acc_every, self.eval_batch_size, self.checkpoint_dir is None,
                                 self.deterministic, self.shards, self.overlap),
        }
        return {k: hashlib.blake2b(repr(v).encode(), digest_size=8).hexdigest()
                for k, v in items.items()}

    def _agree(self):
        """Refuse to start when the ranks were given different models or data."""
        everyone = self.comm.allgather(self._fingerprint())
        diffs = []
        for key in everyone[0]:
            ranks = {}
            for r, f in enumerate(everyone):
                ranks.setdefault(f[key], []).append(r)
            if len(ranks) > 1:
                diffs.append(f"{key} (" + " vs ".join(f"ranks {v}" for v in ranks.values()) + ")")
        if diffs:
            raise DistributedError(
                f"the {self.size} ranks were not given the same training: they differ in "
                f"{'; '.join(diffs)}. Start every rank with the same command line and data.")

    # -- the step ------------------------------------------------------------------

    def _part_loss(self, x, y, n, first_row, **kwargs):
        """loss_and_grad of rows first_row.. (at least one) of a batch of n,
        loss and gradients as their share of its mean. gdfast's MLP draws the
        dropout masks of those rows in one call over the whole batch (every
        part gets the step's counter), and the part holding row 0 alone adds
        the L2 penalty, whole."""
        if not self._is_mlp:
            return self.model.loss_and_grad(x, y, mean_over=n, **kwargs) * (len(y) / n)
        self.model.step = self._step0
        loss = self.model.loss_and_grad(x, y, mean_over=n, first_row=first_row,
                                        penalty=first_row == 0, **kwargs)
        return self._mlp_share(loss, len(y) / n)

    def _mlp_share(self, loss, w):
        """The share w of a batch's loss from an MLP part's own mean `loss`,
        whose L2 penalty (if it added it) counts whole; exactly loss when w = 1."""
        return loss * w + self.model.last_penalty * (1 - w)

    def _share(self, x, y, n, first_row, out):
        """The loss and gradient (into out) of rows x, y (first_row.. of a batch of n),
        both weighted by the rows' share of it, so that the shares sum to the batch mean."""
        if not len(y):                  # more parts than rows in a last short batch
            out.fill(0.0)
            return 0.0
        if self._mean_over:             # the model scales its gradients: no pass over them
            loss = self._part_loss(x, y, n, first_row)
            if out is not self.params.grad:
                np.copyto(out, self.params.grad)
            return loss
        w = len(y) / n
        loss = self.model.loss_and_grad(x, y)
        np.multiply(self.params.grad, np.float32(w), out=out)
        return loss * w

    def _loss_and_grad(self, xb, yb):
        """xb: this rank's rows of the batch, yb: the whole batch's targets. An
        MLP's dropout counter steps once, as in one process, however many
        parts (or none, on a rank without rows) this rank computes."""
        self._step0 = self.model.step if self._is_mlp else None
        if self.deterministic:
            loss = self._ordered_loss_and_grad(xb, yb)
        elif self.overlap:
            loss = self._overlapped_loss_and_grad(xb, yb)
        else:
            loss = self._summed_loss_and_grad(xb, yb)
        if self._is_mlp:
            self.model.step = self._step0 + 1
        return loss

    def _summed_loss_and_grad(self, xb, yb):
        grad = self.params.grad
        lo, hi = _rows(len(yb), self.rank, self.size)
        self._loss[0] = self._share(xb, yb[lo:hi], len(yb), lo, grad)
        loss = self.comm.Iallreduce(self._in_place, self._loss, op=self._sum)
        self.comm.Allreduce(self._in_place, grad, op=self._sum)   # their latencies overlap
        loss.Wait()
        return float(self._loss[0])

    def _overlapped_loss_and_grad(self, xb, yb):
        """Each layer's allreduce starts as backward finishes it, last layer first."""
        requests, comm, n = self._requests, self.comm, len(yb)
        lo, hi = _rows(n, self.rank, self.size)

        def start(layer):
            requests.append(comm.Iallreduce(self._in_place, self._layer_grads[layer],
                                            op=self._sum))
            # Open MPI moves non-blocking collectives on only inside MPI calls
            self._request.Testall(requests)
        requests.clear()
        if hi > lo:     # the gradient of this rank's rows, as their share of the batch mean
            self._loss[0] = self._part_loss(xb, yb[lo:hi], n, lo, on_layer=start)
        else:           # no rows here (a short last batch): the same messages, of zeros
            self.params.grad.fill(0.0)
            self._loss[0] = 0.0
            for layer in sorted(self._layer_grads, reverse=True):
                start(layer)
        requests.append(comm.Iallreduce(self._in_place, self._loss, op=self._sum))
        self._request.Waitall(requests)
        return float(self._loss[0])

    def _accumulated_step(self, xb, yb, lr, first, mean_over, last):
        """One micro-batch of an accumulated step: this rank's rows added to
        its gradients (beta = 1 in the weight-gradient GEMMs, no message);
        after the last, one Allreduce of the sums and the update. The loss
        is summed over the ranks for every micro-batch (8 bytes)."""
        n = len(yb)
        lo, hi = _rows(n, self.rank, self.size)
        step0 = self.model.step if self._is_mlp else None
        if hi > lo:
            kwargs = {} if step0 is None else {"first_row": lo, "penalty": lo == 0}
            loss = self.model.loss_and_grad(xb, yb[lo:hi], accumulate=not first,
                                            mean_over=mean_over, **kwargs)
            w = (hi - lo) / n       # the micro-batch's loss: a mean over its n rows
            self._loss[0] = loss * w if step0 is None else self._mlp_share(loss, w)
        else:                       # no rows here: nothing to add (zeros on a first)
            if first:
                self.params.grad.fill(0.0)
            self._loss[0] = 0.0
        if step0 is not None:
            self.model.step = step0 + 1
        self.comm.Allreduce(self._in_place, self._loss, op=self._sum)
        loss = float(self._loss[0])
        self._check_loss(loss, lr)
        if not last:
            return loss, math.nan
        self.comm.Allreduce(self._in_place, self.params.grad, op=self._sum)
        return loss, self._step_stored()

    def _ordered_loss_and_grad(self, xb, yb):
        n, size, size_p = len(yb), self.size, self.params.size
        parts, first = self.shards // size, _rows(n, self.rank, size)[0]
        for j in range(parts):
            lo, hi = _rows(n, self.rank * parts + j, self.shards)
            self._losses[j] = self._share(xb[lo - first:hi - first], yb[lo:hi], n, lo,
                                          self._part[:size_p])
            self._send[:, j] = self._part.reshape(size, -1)
        # rank q receives slice q of every part's gradient, from rank 0's parts on: part order
        self.comm.Alltoall(self._send, self._recv)
        every = self._recv.reshape(self.shards, -1)
        self._slice[...] = every[0]
        for part in every[1:]:          # one chain, whatever the number of ranks
            self._slice += part
        self.comm.Allgather(self._slice, self._whole)
        self.params.grad[...] = self._whole[:size_p]
        self.comm.Allgather(self._losses, self._all_losses)
        loss = 0.0
        for v in self._all_losses:
            loss += float(v)
        return loss

    def _hits(self, xb, yb):
        lo, hi = _rows(len(yb), self.rank, self.size)
        mine = int(np.count_nonzero(self.model.predict(xb) == yb[lo:hi])) if hi > lo else 0
        return self.comm.allreduce(mine)

    # -- epochs, checkpoints -----------------------------------------------------------

    def fit(self, epochs, resume=False):
        """Trainer.fit on every rank; rank 0 decides whether there is a
        checkpoint to resume and reads it. An exception on one rank ends the job."""
        if resume:
            path = Path(resume) if isinstance(resume, (str, Path)) else self._ckpt_path("last")
            if path is None:
                raise ValueError("resume=True needs checkpoint_dir (or pass the checkpoint path)")
            if self.comm.bcast(path.exists() if self.rank == 0 else None, root=0):
                self.load_checkpoint(path)
        try:
            return super().fit(epochs)
        except (TrainingDiverged, DistributedError):    # raised on every rank alike
            raise
        except BaseException as e:
            _abort(self.comm, e)

    def load_checkpoint(self, path):
        """Rank 0 reads `path` and sends it to every rank (no shared file
        system needed); a file it cannot read raises its error on every rank."""
        state = error = None
        if self.rank == 0:
            try:
                state = ckpt.load(path)
            except (OSError, ValueError) as e:
                error = e
        state, error = self.comm.bcast((state, error), root=0)
        if error is not None:
            raise error
        self.load_state_dict(state)
        self.last_checkpoint = Path(path)

    def save_checkpoint(self, path):
        """Rank 0 writes the checkpoint (atomically); returns its path on every rank."""
        self.last_checkpoint = self._on_rank0(lambda: Trainer.save_checkpoint(self, path),
                                              f"write {path}")
        return self.last_checkpoint

    def _save_epoch(self, improved):
        if self.checkpoint_dir is not None:
            self._on_rank0(lambda: Trainer._save_epoch(self, improved),
                           f"write the checkpoint in {self.checkpoint_dir}")
            self.last_checkpoint = self._ckpt_path("last")
        self._check_in_step()

    def _on_rank0(self, write, what):
        """Run `write` on rank 0 only; its failure is raised on every rank."""
        error = None
        if self.rank == 0:
            try:
                result = write()
            except OSError as e:
                error = f"rank 0 could not {what}: {e}"
        error = self.comm.bcast(error, root=0)
        if error is not None:
            raise DistributedError(error)
        return self.comm.bcast(result if self.rank == 0 else None, root=0)

    def _check_in_step(self):
        """The ranks still hold the same parameters and made the same decisions."""
        record = {k: v for k, v in (self.history[-1] if self.history else {}).items()
                  if k not in _TIMING}
        mine = (zlib.crc32(self.params.data), repr(record), repr(self.best), self.bad_epochs,
                self.stopped_early, self.step)
        everyone = self.comm.allgather(mine)
        if any(other != mine for other in everyone):
            raise DistributedError(
                f"the ranks drifted apart by epoch {self.epoch} (parameter checksums "
                f"{[e[0] for e in everyone]}): a bug in gdfast.distributed, please report it")
