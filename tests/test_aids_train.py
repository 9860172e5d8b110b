"""Training aids in the Trainer and `gdfast train`: gradient accumulation,
evaluation with the weights' moving average, per-layer monitoring."""
import csv
import json

import numpy as np
import pytest

import gdfast
from gdfast import cli, schedules
from gdfast.reference.train import ReferenceMLP
from gdfast.train import Trainer
from test_cli import captured_figures, data_dir, refused  # noqa: F401 (fixture)

SIZES = [20, 16, 8, 5]


@pytest.fixture
def threads():
    before = gdfast.get_num_threads()
    yield gdfast.set_num_threads
    gdfast.set_num_threads(before)


def _data(n=230, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, SIZES[0]), dtype=np.float32)
    return x, (x[:, :5].argmax(axis=1)).astype(np.int64)


def _trainer(batch_size, accumulate=1, ema=None, agc=0.0, ckpt=None, **kw):
    x, y = _data()
    model = gdfast.MLP(SIZES, seed=3)
    opt = gdfast.Adam(model.params, lr=1e-2, ema=ema,
                      groups=[{"params": model.params.names[:-2], "agc": agc}])
    schedule = schedules.Cosine(1e-2, 100)
    return Trainer(model, opt, (x, y), batch_size=batch_size, accumulate=accumulate,
                   schedule=schedule, shuffle=False, test=(x, y), checkpoint_dir=ckpt,
                   **kw)


def test_loss_and_grad_accumulates_to_the_big_batch():
    x, y = _data(96)
    for loss in ("cross_entropy", "mse"):
        m = gdfast.MLP(SIZES, loss=loss, seed=1)
        big_loss = m.loss_and_grad(x, y)
        big = m.params.grad.copy()
        m.params.grad[...] = np.nan          # overwritten by the first micro-batch
        losses = [m.loss_and_grad(x[i:i + 40], y[i:i + 40], accumulate=i > 0, mean_over=96)
                  for i in range(0, 96, 40)]  # 40 + 40 + 16
        np.testing.assert_allclose(m.params.grad, big, rtol=1e-5, atol=1e-8)
        assert np.average(losses, weights=[40, 40, 16]) == pytest.approx(big_loss, rel=1e-6)
    with pytest.raises(ValueError, match="mean_over"):
        m.loss_and_grad(x, y, mean_over=10)
    with pytest.raises(ValueError, match="mean_over"):
        m.loss_and_grad(x, y, mean_over=0)


def test_accumulated_steps_are_the_big_batch_steps():
    """230 examples: batches of 25 in groups of 4 (100, 100, 30) step as batches of 100."""
    big, acc = _trainer(100), _trainer(25, accumulate=4)
    h_big, h_acc = big.fit(2), acc.fit(2)
    assert [r["step"] for r in h_acc] == [r["step"] for r in h_big] == [3, 6]
    assert [r["lr"] for r in h_acc] == [r["lr"] for r in h_big]
    np.testing.assert_allclose(acc.params.data, big.params.data, rtol=2e-5, atol=2e-6)
    assert h_acc[-1]["train_loss"] == pytest.approx(h_big[-1]["train_loss"], rel=1e-5)


def test_accumulation_is_thread_independent(threads):
    out = []
    for nt in (1, 2):
        threads(nt)
        t = _trainer(25, accumulate=3, ema=0.9, agc=0.02)
        t.fit(2)
        out.append((t.params.data.copy(), t.optimizer.ema_state()))
    np.testing.assert_array_equal(out[0][0], out[1][0])
    for k, v in out[0][1].items():
        np.testing.assert_array_equal(v, out[1][1][k])


def test_resume_with_every_aid_is_bit_exact(tmp_path):
    kw = dict(accumulate=3, ema=0.9, agc=0.02, eval_ema=True, monitor_layers=True)
    straight = _trainer(25, **kw)
    h1 = straight.fit(4)
    first = _trainer(25, ckpt=tmp_path, **kw)
    first.fit(2)
    second = _trainer(25, ckpt=tmp_path, **kw)
    h2 = second.fit(4, resume=True)
    np.testing.assert_array_equal(second.params.data, straight.params.data)
    for k, v in straight.optimizer.ema_state().items():
        np.testing.assert_array_equal(second.optimizer.ema_state()[k], v)
    timing = ("samples_per_s", "train_time", "eval_time")
    assert [{k: v for k, v in r.items() if k not in timing} for r in h2] == \
           [{k: v for k, v in r.items() if k not in timing} for r in h1]


def test_eval_ema_evaluates_the_average_and_trains_the_weights():
    plain, ema = _trainer(25, ema=0.8), _trainer(25, ema=0.8, eval_ema=True)
    h_plain, h_ema = plain.fit(2), ema.fit(2)
    np.testing.assert_array_equal(ema.params.data, plain.params.data)   # training untouched
    model = gdfast.MLP(SIZES)
    for k, v in ema.optimizer.ema_state().items():
        model.params[k] = v
    x, y = _data()
    loss, acc = model.evaluate(x, y, batch_size=2000)
    assert h_ema[-1]["test_loss"] == loss and h_ema[-1]["test_acc"] == acc
    assert h_ema[-1]["test_loss"] != h_plain[-1]["test_loss"]


def test_monitor_layers_records_and_changes_nothing(tmp_path):
    plain, mon = _trainer(25), _trainer(25, monitor_layers=True, ckpt=tmp_path)
    assert not any("/" in k for r in plain.fit(2) for k in r)     # off by default
    hist = mon.fit(2)
    np.testing.assert_array_equal(mon.params.data, plain.params.data)
    r = hist[-1]
    for name in ("w1", "b1", "w2", "b2", "w3", "b3"):
        assert r[f"grad_norm/{name}"] > 0 and r[f"weight_norm/{name}"] > 0
        assert 0 < r[f"update_ratio/{name}"] < 1
    assert set(k for k in r if k.startswith("dead/")) == {"dead/1", "dead/2"}
    assert 0 <= r["dead/1"] <= 1
    with open(tmp_path / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["update_ratio/w1"]) == pytest.approx(r["update_ratio/w1"])


def test_monitor_layers_figures():
    """The recorded figures against a direct computation of the epoch's last step."""
    x, y = _data(50)
    model = gdfast.MLP(SIZES, seed=3)
    model.params["b1"][:3] = -1e3                  # three units of layer 1 never fire
    opt = gdfast.SGD(model.params, lr=0.1)
    twin = gdfast.MLP(SIZES, seed=3)
    twin.params.data[...] = model.params.data
    r = Trainer(model, opt, (x, y), batch_size=None, monitor_layers=True).fit(1)[-1]
    before = twin.params["w1"].copy()
    twin.loss_and_grad(x, y)
    g = twin.params.grad_of("w1")
    assert r["grad_norm/w1"] == pytest.approx(np.linalg.norm(g.astype(np.float64)), rel=1e-6)
    assert r["weight_norm/w1"] == pytest.approx(np.linalg.norm(before.astype(np.float64)))
    assert r["update_ratio/w1"] == pytest.approx(0.1 * np.linalg.norm(g) / np.linalg.norm(before),
                                                 rel=1e-4)
    assert r["dead/1"] >= 3 / 16


def test_bad_trainer_options():
    x, y = _data()
    model = gdfast.MLP(SIZES)
    opt = gdfast.Adam(model.params)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="accumulate"):
            Trainer(model, opt, (x, y), accumulate=bad)
    with pytest.raises(ValueError, match="eval_ema"):
        Trainer(model, opt, (x, y), eval_ema=True)
    ref = ReferenceMLP(SIZES)
    with pytest.raises(TypeError, match="accumulate"):
        Trainer(ref, opt, (x, y), accumulate=2)


def test_train_command_with_the_aids(data_dir, tmp_path, capsys, monkeypatch):  # noqa: F811
    figures = captured_figures(monkeypatch)
    ck = tmp_path / "ck"
    assert cli.main(["train", "--data", str(data_dir), "--hidden", "16", "--epochs", "2",
                     "--batch-size", "32", "--accumulate", "2", "--agc", "0.01", "--ema", "0.9",
                     "--monitor-layers", "--checkpoint-dir", str(ck), "--plot",
                     str(tmp_path / "c.png"), "--no-progress", "--threads", "1"]) == 0
    history = json.loads((ck / "history.json").read_text())
    assert [r["step"] for r in history] == [5, 10]    # 300 examples: 10 batches of 32, 2 per step
    assert "update_ratio/w1" in history[-1] and "dead/1" in history[-1]
    fig, = figures
    assert [ax.get_title() for ax in fig.axes[3:]] == [
        "gradient norm (last step)", "update / weight norm", "dead ReLU units (fraction)"]
    sd = gdfast.checkpoint.load(ck / "last.npz")["optimizer"]
    groups = sd["param_groups"]
    assert groups[0]["agc"] == 0.01 and groups[0]["params"] == ["w1", "b1"]
    assert groups[1]["agc"] == 0.0 and groups[1]["ema"] == 0.9 and "ema" in sd["state"]["w2"]


@pytest.mark.parametrize("flags, message", [
    (["--accumulate", "0"], "--accumulate: expected an integer >= 1"),
    (["--agc", "0"], "--agc: expected a number > 0"),
    (["--ema", "1"], "--ema: expected a number > 0 and < 1"),
    (["--agc", "0.01", "--hidden", ""], "--agc clips the hidden layers"),
])
def test_bad_aid_flags(capsys, flags, message):
    refused(capsys, ["train", *flags], message)


def test_accumulation_keeps_the_l2_term_once():
    """With L2 (alpha), the accumulated gradients and mean loss are the big batch's."""
    x, y = _data(96)
    m = gdfast.MLP(SIZES, seed=1, alpha=0.5)
    big_loss = m.loss_and_grad(x, y)
    big = m.params.grad.copy()
    losses = [m.loss_and_grad(x[i:i + 32], y[i:i + 32], accumulate=i > 0, mean_over=96)
              for i in range(0, 96, 32)]
    np.testing.assert_allclose(m.params.grad, big, rtol=1e-5, atol=1e-8)
    assert np.mean(losses) == pytest.approx(big_loss, rel=1e-6)
