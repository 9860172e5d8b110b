"""Checkpoints under faults: killed writes, truncated and tampered files,
pickles, mismatched models and optimizers, and divergence.

The faults are injected for real: a subprocess is SIGKILLed while numpy is
in the middle of writing the new checkpoint; files are cut at many offsets
and have bytes flipped at many positions. A load either gives back exactly
what was saved or raises CheckpointError (a ValueError) naming the file.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import gdfast
from conftest import child_python
from gdfast import checkpoint, schedules
from gdfast.checkpoint import CheckpointError
from gdfast.train import Trainer, TrainingDiverged

ROOT = Path(__file__).resolve().parents[1]


def blobs(n=96, d=12, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = np.eye(classes, d)[y] + 0.3 * rng.standard_normal((n, d))
    return x.astype(np.float32), y.astype(np.int64)


def trainer(tmp, sizes=(12, 16, 3), activation="relu", opt="adam", schedule=None, **kw):
    model = gdfast.MLP(list(sizes), activation=activation, seed=0)
    optimizer = (gdfast.Adam(model.params, lr=1e-2, **kw) if opt == "adam"
                 else gdfast.SGD(model.params, lr=1e-2, momentum=0.9))
    return Trainer(model, optimizer, blobs(), batch_size=32, checkpoint_dir=tmp,
                   schedule=schedule)


def snapshot(t):
    sd = t.optimizer.state_dict()
    return (t.params.data.copy(), t.step, t.epoch, len(t.history), sd["step"],
            {k: {n: a.copy() for n, a in b.items()} for k, b in sd["state"].items()})


def assert_snapshot_equal(a, b):
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1:5] == b[1:5]
    for key in a[5]:
        for name in a[5][key]:
            np.testing.assert_array_equal(a[5][key][name], b[5][key][name])


# ---- a write killed midway -------------------------------------------------------

KILLED_WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    import numpy.lib.format as fmt
    import gdfast
    sys.path.insert(0, {tests!r})
    from test_checkpoints import trainer

    which, target = sys.argv[1], sys.argv[2]
    if which == "trainer":
        t = trainer(target)
        t.fit(1)                                   # last.npz of epoch 1: must survive
    else:
        model = gdfast.MLP([12, 16, 3], seed=0)
        opt = gdfast.Adam(model.params, lr=1e-2)
        model.params.grad[...] = 0.5
        opt.step()
        opt.save(target)                           # step 1: must survive
        opt.step()
    original, written = fmt.write_array, []

    def slow_write(fp, array, *args, **kwargs):    # stall after a few arrays
        original(fp, array, *args, **kwargs)
        written.append(1)
        if len(written) == 3:
            fp.flush()
            print("MIDWRITE", flush=True)
            time.sleep(120)

    fmt.write_array = slow_write
    if which == "trainer":
        t.fit(2)
    else:
        opt.save(target)
    print("FINISHED", flush=True)
""")


def kill_mid_write(which, target):
    script = KILLED_WRITER.format(tests=str(ROOT / "tests"))
    env, cwd = child_python()
    proc = subprocess.Popen([sys.executable, "-c", script, which, str(target)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=cwd)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "MIDWRITE", (line, proc.stderr.read())
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL


def test_trainer_checkpoint_killed_mid_write_leaves_the_previous_one(tmp_path):
    kill_mid_write("trainer", tmp_path)
    partial = list(tmp_path.glob(".last.npz.*.tmp"))
    assert len(partial) == 1 and partial[0].stat().st_size > 0  # the kill hit the write
    state = checkpoint.load(tmp_path / "last.npz")
    assert state["epoch"] == 1 and len(state["history"]) == 1
    resumed = trainer(tmp_path)
    resumed.fit(2, resume=True)                     # and training goes on from it
    assert resumed.epoch == 2 and len(resumed.history) == 2


def test_optimizer_file_killed_mid_write_leaves_the_previous_one(tmp_path):
    path = tmp_path / "adam.npz"
    kill_mid_write("optimizer", path)
    model = gdfast.MLP([12, 16, 3], seed=0)
    opt = gdfast.Adam(model.params, lr=1e-2)
    opt.load(path)
    assert opt.state_dict()["step"] == 1
    assert list(tmp_path.glob(".adam.npz.*.tmp"))


# ---- truncated and tampered files ------------------------------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    t = trainer(d)
    t.fit(1)
    t.optimizer.save(d / "opt.npz")
    return d, (d / "last.npz").read_bytes(), (d / "opt.npz").read_bytes()


def loaders(d):
    def trainer_load(p):
        return checkpoint.load(p)

    def optimizer_load(p):
        opt = gdfast.Adam(gdfast.MLP([12, 16, 3], seed=0).params, lr=1e-2)
        opt.load(p)
        return opt.state_dict()

    return [("checkpoint", trainer_load, 1), ("optimizer", optimizer_load, 2)]


def same(a, b):
    """Deep equality of loaded states (arrays bitwise, NaN equal to NaN)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    return a == b or (a != a and b != b)


def test_truncated_files_are_refused_with_the_file_named(saved, tmp_path):
    d = saved[0]
    for name, load, which in loaders(d):
        data = saved[which]
        cuts = sorted({0, 1, 4, 30, 100, 1000, len(data) // 3, len(data) // 2, len(data) - 100,
                       len(data) - 23, len(data) - 22, len(data) - 1})
        for cut in cuts:
            p = tmp_path / f"{name}-cut{cut}.npz"
            p.write_bytes(data[:cut])
            with pytest.raises(CheckpointError, match=f"cut{cut}.npz"):
                load(p)


def test_flipped_bytes_are_refused_or_harmless(saved, tmp_path):
    """Every byte position class: a flip is caught (CRC, header, JSON) or
    lands where it changes nothing (zip timestamps); never silently wrong."""
    d = saved[0]
    rng = np.random.default_rng(0)
    refused = harmless = 0
    for name, load, which in loaders(d):
        data = saved[which]
        original = load(d / ("last.npz" if which == 1 else "opt.npz"))
        for pos in sorted(set(rng.integers(0, len(data), 150).tolist())):
            bad = bytearray(data)
            bad[pos] ^= 0x5A
            p = tmp_path / f"{name}-flip.npz"
            p.write_bytes(bytes(bad))
            try:
                got = load(p)
            except ValueError as e:  # CheckpointError, or the loader's own check
                assert str(p) in str(e) or "state" in str(e) or "param" in str(e), e
                refused += 1
            else:
                assert same(got, original), f"{name}: flip at {pos} loaded different data"
                harmless += 1
    assert refused > 200  # almost every flip hits data covered by a CRC


def test_object_arrays_are_never_unpickled(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    meta = json.dumps({"format": checkpoint.FORMAT, "version": checkpoint.VERSION,
                       "tree": {"__array__": "a0", "scalar": False}})
    np.savez(tmp_path / "evil.npz", __meta__=np.array(meta), a0=np.array([Boom()], dtype=object))
    with pytest.raises(CheckpointError, match="evil.npz"):
        checkpoint.load(tmp_path / "evil.npz")
    opt_meta = json.dumps({"format": "gdfast.optim/1", "class": "SGD", "step": 0, "keys": [0],
                           "param_groups": []})
    np.savez(tmp_path / "evil-opt.npz", __meta__=np.array(opt_meta),
             **{"state/0/momentum_buffer": np.array([Boom()], dtype=object)})
    with pytest.raises(CheckpointError, match="evil-opt.npz"):
        gdfast.SGD([np.zeros(1, np.float32)], momentum=0.9).load(tmp_path / "evil-opt.npz")
    assert not (tmp_path / "pwned").exists()
    # and nothing that would need pickle is ever written
    with pytest.raises(TypeError, match="pickle"):
        checkpoint.save(tmp_path / "x.npz", {"a": np.array([1, "two"], dtype=object)})
    with pytest.raises(TypeError):
        checkpoint.save(tmp_path / "x.npz", {"a": object()})
    assert not (tmp_path / "x.npz").exists() and not list(tmp_path.glob(".x.npz*"))


def test_format_and_version_are_checked(saved, tmp_path):
    d = saved[0]
    z = dict(np.load(d / "opt.npz", allow_pickle=False))
    meta = json.loads(str(z["__meta__"]))
    for key, value, pattern in [("format", "gdfast.optim/2", "gdfast.optim/2"),
                                ("class", "SGD", "holds SGD state")]:
        bad = dict(meta, **{key: value})
        np.savez(tmp_path / "o.npz", **dict(z, __meta__=np.array(json.dumps(bad))))
        with pytest.raises(CheckpointError, match=pattern):
            gdfast.Adam(gdfast.MLP([12, 16, 3]).params).load(tmp_path / "o.npz")
    np.savez(tmp_path / "o.npz", **dict(z, __meta__=np.array("{not json")))
    with pytest.raises(CheckpointError, match="damaged __meta__"):
        gdfast.Adam(gdfast.MLP([12, 16, 3]).params).load(tmp_path / "o.npz")
    z = dict(np.load(d / "last.npz", allow_pickle=False))
    z.pop("a3")
    np.savez(tmp_path / "c.npz", **z)
    with pytest.raises(CheckpointError, match="damaged checkpoint tree"):
        checkpoint.load(tmp_path / "c.npz")
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        checkpoint.load(tmp_path / "nothing-here.npz")


# ---- mismatched model or optimizer -----------------------------------------------

@pytest.mark.parametrize("other,pattern", [
    (dict(sizes=(12, 17, 3)), "layout"),
    (dict(activation="tanh"), "activation: checkpoint 'relu', this model 'tanh'"),
    (dict(opt="sgd"), "written with optimizer Adam, this trainer uses SGD"),
    (dict(amsgrad=True), "buffers"),
    (dict(schedule=schedules.Constant(1e-2)), "no state"),
])
def test_mismatched_checkpoint_is_refused_and_changes_nothing(tmp_path, other, pattern):
    source = trainer(tmp_path / "a", schedule=schedules.ReduceOnPlateau(1e-2)
                     if "schedule" in other else None)
    source.fit(2)
    target = trainer(tmp_path / "b", **other)
    target.fit(1)
    before = snapshot(target)
    with pytest.raises(ValueError, match=pattern):
        target.load_checkpoint(tmp_path / "a" / "last.npz")
    assert_snapshot_equal(snapshot(target), before)   # rolled back (schedule case: after the
    assert target.last_checkpoint == tmp_path / "b" / "last.npz"  # optimizer had loaded)


def test_tampered_tensor_shape_is_refused(tmp_path):
    t = trainer(tmp_path)
    t.fit(1)
    state = t.state_dict()
    state["params"]["b1"] = np.zeros(1, np.float32)   # would broadcast silently
    before = snapshot(t)
    with pytest.raises(ValueError, match="'b1' is float32 \\(1,\\), expected float32 \\(16,\\)"):
        t.load_state_dict(state)
    state["params"]["b1"] = np.zeros(16, np.float64)
    with pytest.raises(ValueError, match="'b1' is float64"):
        t.load_state_dict(state)
    del state["rng"]
    with pytest.raises(CheckpointError, match="lacks \\['rng'\\]"):
        t.load_state_dict(state)
    assert_snapshot_equal(snapshot(t), before)


def test_optimizer_load_into_other_shapes_is_refused(tmp_path):
    a = gdfast.Adam([np.zeros(5, np.float32), np.zeros(3, np.float32)])
    a.save(tmp_path / "a")                      # at exactly this path
    b = gdfast.Adam([np.zeros(5, np.float32), np.zeros(4, np.float32)])
    with pytest.raises(ValueError, match=r"state\[1\]\['exp_avg'\] must be float32 of shape \(4,\)"):
        b.load(tmp_path / "a")
    assert b.state_dict()["step"] == 0


# ---- divergence ---------------------------------------------------------------------

def test_nan_in_the_data_stops_training_before_any_nan_update(tmp_path):
    x, y = blobs()
    model = gdfast.MLP([12, 16, 3], seed=0)
    opt = gdfast.Adam(model.params, lr=1e-2)
    t = Trainer(model, opt, (x.copy(), y), batch_size=32, shuffle=False, checkpoint_dir=tmp_path)
    t.batches.x[70, 3] = np.nan                 # the third batch of every epoch
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 2 \(epoch 1.*"
                                               r"Last good checkpoint: none yet"):
        t.fit(2)
    assert np.isfinite(model.params.data).all()   # the NaN gradients were never applied
    assert opt.state_dict()["step"] == 2

    t = Trainer(model, opt, (x.copy(), y), batch_size=32, shuffle=False, checkpoint_dir=tmp_path)
    t.fit(1)
    good = model.params.data.copy()
    t.batches.x[70, 3] = np.inf                 # bad data shows up in epoch 2
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 5 \(epoch 2.*"
                                               r"Last good checkpoint: .*last\.npz"):
        t.fit(3)
    state = checkpoint.load(tmp_path / "last.npz")
    np.testing.assert_array_equal(np.concatenate([state["params"][n].ravel()
                                                  for n in model.params.names]), good)


class Exploding:
    """An optimizer whose update overflows on one step (the loss before it was fine)."""

    def __init__(self, inner, at):
        self.inner, self.at, self.n = inner, at, 0
        self.param_groups = inner.param_groups

    def step(self, max_grad_norm=None):
        norm = self.inner.step(max_grad_norm=max_grad_norm)
        self.n += 1
        if self.n == self.at:
            self.inner._arena_ref.data[5] = np.inf
        return norm

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, sd):
        self.inner.load_state_dict(sd)


def test_update_to_inf_at_epoch_end_is_not_checkpointed(tmp_path):
    model = gdfast.MLP([12, 16, 3], seed=0)
    opt = Exploding(gdfast.Adam(model.params, lr=1e-2), at=6)   # last step of epoch 2
    t = Trainer(model, opt, blobs(), batch_size=32, checkpoint_dir=tmp_path)
    with pytest.raises(TrainingDiverged, match=r"parameters became NaN/Inf by step 6 \(epoch 2.*"
                                               r"Last good checkpoint: .*last\.npz"):
        t.fit(3)
    state = checkpoint.load(tmp_path / "last.npz")
    assert state["epoch"] == 1
    assert all(np.isfinite(a).all() for a in state["params"].values())
