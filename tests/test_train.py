"""The training loop with the real gdfast.MLP and optimizers."""
import json
import math
import os

import numpy as np
import pytest

import gdfast
from gdfast import checkpoint, schedules
from gdfast.train import Trainer, TrainingDiverged, fit

REAL_DATA = os.environ.get("GDFAST_DATA")


def blobs(n, d=20, classes=3, seed=0, spread=0.6):
    """Separable Gaussian clusters, float32 features in [0, 1]-ish, int64 labels."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(123).random((classes, d))
    y = rng.integers(0, classes, n)
    x = centers[y] + spread * rng.standard_normal((n, d)) / np.sqrt(d)
    return x.astype(np.float32), y.astype(np.int64)


def make(seed=0, sizes=(20, 16, 3), lr=1e-2, opt="adam"):
    model = gdfast.MLP(sizes=list(sizes), seed=seed)
    if opt == "adam":
        optimizer = gdfast.Adam(model.params, lr=lr)
    else:
        optimizer = gdfast.SGD(model.params, lr=lr, momentum=0.9)
    return model, optimizer


def test_trains_and_records_every_metric(tmp_path):
    x, y = blobs(400)
    xt, yt = blobs(200, seed=1)
    model, opt = make()
    sched = schedules.Warmup(schedules.Cosine(1e-2, 100), 25)
    trainer = Trainer(model, opt, (x, y), batch_size=32, schedule=sched, test=(xt, yt),
                      checkpoint_dir=tmp_path, acc_every=1)
    history = trainer.fit(epochs=5)
    assert len(history) == 5 and trainer.step == 5 * 13
    for r in history:
        assert {"epoch", "lr", "train_loss", "train_acc", "grad_norm", "test_loss", "test_acc",
                "samples_per_s"} <= set(r)
        assert r["samples_per_s"] > 0 and r["grad_norm"] > 0
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 2
    assert history[-1]["test_acc"] > 0.9 and history[-1]["train_acc"] > 0.85
    assert history[0]["lr"] == pytest.approx(sched(12)) and history[-1]["lr"] == pytest.approx(sched(64))
    assert opt.param_groups[0]["lr"] == pytest.approx(sched(64))
    saved = json.loads((tmp_path / "history.json").read_text())
    assert [r["test_acc"] for r in saved] == [r["test_acc"] for r in history]
    rows = (tmp_path / "history.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,lr,train_loss") and len(rows) == 6


@pytest.mark.parametrize("batch_size", [None, 1, 7])
def test_full_batch_sgd_and_minibatch_step_counts(batch_size):
    x, y = blobs(30)
    model, opt = make(opt="sgd", lr=0.05)
    trainer = Trainer(model, opt, (x, y), batch_size=batch_size)
    trainer.fit(2)
    per_epoch = {None: 1, 1: 30, 7: 5}[batch_size]
    assert trainer.step == 2 * per_epoch


OPTIMIZERS = {
    "adam": lambda p: gdfast.Adam(p, lr=3e-3),
    "lookahead-nesterov": lambda p: gdfast.Lookahead(gdfast.SGD(p, lr=3e-3, momentum=0.9, nesterov=True), k=3),
    "rmsprop-centered": lambda p: gdfast.RMSprop(p, lr=3e-3, centered=True, momentum=0.5),
    "adagrad": lambda p: gdfast.Adagrad(p, lr=3e-3),
}


def run(tmp_path, epochs, resume=False, seed=0, opt="adam"):
    x, y = np.random.default_rng(5).random((120, 784), dtype=np.float32), np.arange(120) % 10
    model = gdfast.MLP([784, 16, 10], seed=seed)
    opt = OPTIMIZERS[opt](model.params)
    sched = schedules.ReduceOnPlateau(schedules.Warmup(schedules.Cosine(3e-3, 40), 5), patience=0)
    trainer = Trainer(model, opt, (x, y), batch_size=16, schedule=sched, seed=3, shift=1,
                      validation=(x[:30], y[:30]), checkpoint_dir=tmp_path)
    trainer.fit(epochs, resume=resume)
    return trainer


def strip_times(history):
    return [{k: v for k, v in r.items() if not k.endswith(("time", "per_s"))} for r in history]


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_resume_continues_bit_identically(tmp_path, opt):
    full = run(tmp_path / "a", 4, opt=opt)
    run(tmp_path / "b", 2, opt=opt)
    resumed = run(tmp_path / "b", 4, resume=True, seed=99, opt=opt)   # fresh objects, other init
    np.testing.assert_array_equal(resumed.params.data, full.params.data)
    assert strip_times(resumed.history) == strip_times(full.history)
    assert resumed.step == full.step and resumed.schedule.state_dict() == full.schedule.state_dict()
    # same seed and threads, run again from scratch: the same bits
    np.testing.assert_array_equal(run(tmp_path / "c", 4, opt=opt).params.data, full.params.data)


def test_checkpoint_file_is_versioned_npz_without_pickle(tmp_path):
    trainer = run(tmp_path, 1)
    path = tmp_path / "last.npz"
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(str(npz["__meta__"]))
    assert meta["format"] == "gdfast-checkpoint" and meta["version"] == checkpoint.VERSION
    assert [f for f in os.listdir(tmp_path) if f.startswith(".")] == []
    state = checkpoint.load(path)
    np.testing.assert_array_equal(state["params"]["w1"], trainer.params["w1"])
    meta["version"] = 999
    bad = dict(np.load(path, allow_pickle=False))
    bad["__meta__"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "future.npz", **bad)
    with pytest.raises(checkpoint.CheckpointError, match="version 999"):
        checkpoint.load(tmp_path / "future.npz")
    other = gdfast.MLP([784, 8, 10])
    t2 = Trainer(other, gdfast.Adam(other.params), (np.zeros((4, 784), np.float32), np.zeros(4, np.int64)))
    with pytest.raises(ValueError, match="layout"):
        t2.load_checkpoint(path)


def test_early_stopping_restores_the_best_parameters(tmp_path):
    x, y = blobs(300, spread=2.0)
    xv = x[:100]
    yv = np.random.default_rng(9).integers(0, 3, 100)   # unlearnable: val loss rises as it fits
    model, opt = make(lr=3e-2, sizes=(20, 64, 3))
    trainer = Trainer(model, opt, (x, y), batch_size=16, validation=(xv, yv), early_stopping=2,
                      checkpoint_dir=tmp_path)
    history = trainer.fit(epochs=30)
    assert trainer.stopped_early and len(history) < 30
    best_epoch = int(np.argmin([r["val_loss"] for r in history])) + 1
    assert len(history) == best_epoch + 2
    best = checkpoint.load(tmp_path / "best.npz")
    np.testing.assert_array_equal(model.params["w1"], best["params"]["w1"])
    assert model.evaluate(xv, yv)[0] == pytest.approx(min(r["val_loss"] for r in history), rel=1e-5)


def test_plateau_schedule_gets_the_metric():
    x, y = blobs(200, spread=2.0)
    yv = np.random.default_rng(9).integers(0, 3, 100)
    model, opt = make(lr=3e-2, sizes=(20, 64, 3))
    sched = schedules.ReduceOnPlateau(3e-2, patience=0, factor=0.5)
    Trainer(model, opt, (x, y), batch_size=16, validation=(x[:100], yv), schedule=sched).fit(6)
    assert sched.scale < 1 and opt.param_groups[0]["lr"] < 3e-2


def test_nan_loss_names_the_step_and_last_checkpoint(tmp_path):
    x, y = blobs(64)
    model, opt = make()
    trainer = Trainer(model, opt, (x, y), batch_size=16, checkpoint_dir=tmp_path)
    trainer.fit(1)
    model.params["w2"][0, 0] = np.nan   # what an exploding update leaves behind
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 4 .*last\.npz"):
        trainer.fit(2)
    m2, opt2 = make()
    m2.params["b2"][:] = np.inf
    t2 = Trainer(m2, opt2, (x, y), batch_size=16)
    with pytest.raises(TrainingDiverged, match="none"):
        t2.fit(1)


def test_fit_function_and_argument_checks():
    x, y = blobs(50)
    model, opt = make()
    history = fit(model, opt, x, y, epochs=2, batch_size=10, test=(x, y))
    assert isinstance(history, list) and [r["epoch"] for r in history] == [1, 2]
    assert "test_acc" in history[-1]
    with pytest.raises(ValueError, match="needs validation"):
        Trainer(model, opt, (x, y), monitor="val_acc")
    with pytest.raises(ValueError, match="monitor must be one of"):
        Trainer(model, opt, (x, y), monitor="accuracy")
    with pytest.raises(ValueError, match="early_stopping"):
        Trainer(model, opt, (x, y), early_stopping=0)
    with pytest.raises(ValueError, match="lengths differ"):
        Trainer(model, opt, (x, y[:-1]))
    with pytest.raises(ValueError, match="checkpoint_dir"):
        Trainer(model, opt, (x, y)).fit(1, resume=True)


@pytest.mark.skipif(REAL_DATA is None, reason="GDFAST_DATA not set: no real MNIST")
def test_real_mnist_trains_well_above_chance():
    from gdfast.datasets import load_mnist
    data = load_mnist()
    model = gdfast.MLP([784, 64, 10], seed=0)
    opt = gdfast.Adam(model.params, lr=2e-3)
    trainer = Trainer(model, opt, (data.x_train[:8000], data.y_train[:8000]), batch_size=64,
                      test=(data.x_test, data.y_test))
    history = trainer.fit(2)
    assert history[-1]["test_acc"] > 0.9


def test_reference_trainer_matches_gdfast():
    """The NumPy reference trainer (the benchmark baseline) takes the same path."""
    from gdfast.reference.train import ReferenceMLP, ReferenceOptimizer
    x, y = blobs(256)
    runs = []
    for kind in ("gdfast", "reference"):
        model = gdfast.MLP([20, 16, 3], seed=4)
        if kind == "reference":
            model = ReferenceMLP([20, 16, 3], init_from=model.params)
            opt = ReferenceOptimizer("Adam", model.params, lr=1e-2)
        else:
            opt = gdfast.Adam(model.params, lr=1e-2)
        sched = schedules.Warmup(schedules.Cosine(1e-2, 40), 8)
        trainer = Trainer(model, opt, (x, y), batch_size=32, schedule=sched, test=(x, y), seed=1)
        trainer.fit(3)
        runs.append(trainer)
    fast, ref = runs
    np.testing.assert_allclose(fast.params.data, ref.params.data, rtol=1e-3, atol=1e-4)
    for a, b in zip(fast.history, ref.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert a["test_acc"] == pytest.approx(b["test_acc"], abs=0.01)


@pytest.mark.parametrize("batch_size", [1, 8])
def test_trainer_steps_in_one_call_as_two_calls_would(batch_size):
    # gdfast's MLP and optimizer go through MLP.train_step (fused at batch 1):
    # the same parameters as loss_and_grad + step, the same norms up to rounding
    x, y = blobs(48)
    model, opt = make(seed=2)
    trainer = Trainer(model, opt, (x, y), batch_size=batch_size, shuffle=False, acc_every=0)
    trainer.fit(1)
    twin, twin_opt = make(seed=2)
    norms = []
    for start in range(0, 48, batch_size):
        twin.loss_and_grad(x[start:start + batch_size], y[start:start + batch_size])
        norms.append(twin_opt.step(max_grad_norm=math.inf))
    np.testing.assert_array_equal(model.params.data, twin.params.data)
    assert trainer.history[0]["grad_norm"] == pytest.approx(np.mean(norms), rel=1e-6)


def test_nan_at_batch_1_stops_before_the_update():
    x, y = blobs(20)
    x[13, 2] = np.nan
    model, opt = make()
    trainer = Trainer(model, opt, (x, y), batch_size=1, shuffle=False)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 13 "):
        trainer.fit(1)
    assert np.isfinite(model.params.data).all()
    assert opt.state_dict()["step"] == 13


def test_untracked_grad_norm_is_none_in_strict_json(tmp_path):
    x, y = blobs(40)
    model, opt = make()
    trainer = Trainer(model, opt, (x, y), batch_size=8, track_grad_norm=False, checkpoint_dir=tmp_path)
    trainer.fit(1)
    assert trainer.history[0]["grad_norm"] is None
    json.loads((tmp_path / "history.json").read_text(), parse_constant=lambda c: pytest.fail(c))


def test_default_is_mini_batches_of_128_and_zero_means_full_batch():
    x, y = blobs(300)
    model, opt = make()
    assert Trainer(model, opt, (x, y)).batches.batch_size == 128
    assert len(Trainer(model, opt, (x, y)).fit(1)) == 1
    assert steps_of(Trainer(model, opt, (x, y))) == 3                      # ceil(300 / 128)
    for full in (None, 0):
        assert steps_of(Trainer(model, opt, (x, y), batch_size=full)) == 1


def steps_of(trainer):
    trainer.fit(1)
    return trainer.step


def test_best_checkpoint_written_on_every_improvement_without_early_stopping(tmp_path):
    x, y = blobs(200)
    model, opt = make()
    trainer = Trainer(model, opt, (x, y), batch_size=20, checkpoint_dir=tmp_path)
    for epoch in (1, 2, 3):
        trainer.fit(epoch)
        if trainer.history[-1]["train_loss"] == trainer.best:    # improved: best.npz is this epoch
            np.testing.assert_array_equal(checkpoint.load(tmp_path / "best.npz")["params"]["w1"],
                                          model.params["w1"])
    assert trainer.best == min(r["train_loss"] for r in trainer.history)
    assert trainer.best_params is None                  # nothing extra kept in memory


def test_mlp_documents_its_arguments():
    for word in ("sizes", "activation", "loss", "init", "output_activation", "params"):
        assert word in gdfast.MLP.__doc__


def _activation_trainer(tmp_path, activation, dropout=0.0):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 6)).astype(np.float32)
    y = rng.integers(0, 3, 32).astype(np.int32)
    model = gdfast.MLP([6, 5, 4, 3], activation=activation, dropout=dropout)
    return Trainer(model, gdfast.SGD(model.params, lr=0.1), (x, y), batch_size=16,
                   checkpoint_dir=tmp_path)


def test_resume_accepts_equivalent_per_layer_settings(tmp_path):
    _activation_trainer(tmp_path, "relu", dropout=0.2).fit(1)
    t = _activation_trainer(tmp_path, ["relu", "relu"], dropout=[0.2, 0.2])
    t.load_checkpoint(tmp_path / "last.npz")
    assert t.step == 2


def test_resume_refuses_a_real_activation_difference(tmp_path):
    _activation_trainer(tmp_path, "relu").fit(1)
    t = _activation_trainer(tmp_path, ["relu", "tanh"])
    before = t.params.data.copy()
    with pytest.raises(ValueError, match=r"activation: checkpoint \['relu', 'relu'\], "
                                         r"this model \['relu', 'tanh'\]"):
        t.load_checkpoint(tmp_path / "last.npz")
    np.testing.assert_array_equal(t.params.data, before)
