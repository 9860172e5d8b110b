"""Saving and loading an MLP: state_dict, save, MLP.load (also of a Trainer checkpoint)."""
import json

import numpy as np
import pytest

import gdfast
from gdfast import checkpoint
from gdfast.train import Trainer


def snapshot(model):
    return {name: np.array(arr) for name, arr in model.params.items()}


def assert_same(params, model):
    assert sorted(params) == sorted(model.params.names)
    for name, arr in params.items():
        assert model.params[name].tobytes() == arr.tobytes(), name


def test_save_load_round_trip_is_bitwise(tmp_path):
    model = gdfast.MLP([6, 5, 4, 3], activation="tanh", loss="mse", output_activation="sigmoid",
                       init="xavier", seed=7)
    path = model.save(tmp_path / "m.npz")
    assert path == tmp_path / "m.npz"
    loaded = gdfast.MLP.load(path)
    assert_same(snapshot(model), loaded)
    assert loaded.state_dict()["config"] == {
        "sizes": [6, 5, 4, 3], "activation": "tanh", "output_activation": "sigmoid",
        "loss": "mse", "init": "xavier", "seed": 7, "alpha": 0.0, "dropout": 0.0}
    x = np.random.default_rng(0).random((9, 6), dtype=np.float32)
    assert loaded.forward(x).tobytes() == model.forward(x).tobytes()
    assert (loaded.predict(x) == model.predict(x)).all()


def test_file_is_npz_without_pickle(tmp_path):
    path = gdfast.MLP([4, 3, 2]).save(tmp_path / "m.npz")
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(str(npz["__meta__"]))
        assert all(npz[k].dtype != object for k in npz.files)
    assert meta["format"] == checkpoint.FORMAT


def test_state_dict_copies_and_load_state_dict_writes_in_place():
    a, b = gdfast.MLP([4, 3, 2], seed=1), gdfast.MLP([4, 3, 2], seed=2)
    state = a.state_dict()
    assert state["format"] == "gdfast.mlp" and state["version"] == 1
    state["params"]["w1"][0, 0] += 1.0       # a copy: the model is not changed
    assert a.params["w1"][0, 0] != state["params"]["w1"][0, 0]
    view = b.params["w1"]
    b.load_state_dict(a.state_dict())
    assert_same(snapshot(a), b)
    assert np.shares_memory(view, b.params.data) and (view == a.params["w1"]).all()
    assert b.seed == 1


def test_float64_tensors_are_stored_as_float32():
    a, b = gdfast.MLP([4, 3, 2], seed=1), gdfast.MLP([4, 3, 2], seed=2)
    state = a.state_dict()
    state["params"] = {k: v.astype(np.float64) for k, v in state["params"].items()}
    b.load_state_dict(state)
    assert_same(snapshot(a), b)


def test_load_of_trainer_checkpoint_gives_trained_params(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((64, 8), dtype=np.float32)
    y = rng.integers(0, 3, 64)
    model = gdfast.MLP([8, 6, 3], seed=3)
    start = snapshot(model)
    Trainer(model, gdfast.Adam(model.params, lr=1e-2), (x, y), batch_size=16,
            checkpoint_dir=tmp_path).fit(1)
    assert not np.array_equal(start["w1"], model.params["w1"])
    loaded = gdfast.MLP.load(tmp_path / "last.npz")
    assert loaded.sizes == [8, 6, 3] and loaded.loss == "cross_entropy"
    assert_same(snapshot(model), loaded)
    assert loaded.forward(x).tobytes() == model.forward(x).tobytes()


@pytest.mark.parametrize("kwargs, message", [
    (dict(sizes=[4, 5, 2]), r"sizes: file \[4, 3, 2\], this model \[4, 5, 2\]"),
    (dict(sizes=[4, 3, 2], activation="tanh"), "activation: file 'relu', this model 'tanh'"),
    (dict(sizes=[4, 3, 2], loss="mse"), "loss: file 'cross_entropy', this model 'mse'"),
])
def test_different_architecture_refused_unchanged(tmp_path, kwargs, message):
    state = gdfast.MLP([4, 3, 2]).state_dict()
    other = gdfast.MLP(**kwargs, seed=5)
    before = snapshot(other)
    with pytest.raises(ValueError, match=message):
        other.load_state_dict(state)
    assert_same(before, other)


def bad(change):
    state = gdfast.MLP([4, 3, 2], seed=1).state_dict()
    change(state)
    return state


@pytest.mark.parametrize("state, message", [
    (bad(lambda s: s["params"].update(w1=np.zeros((3, 4), np.float32))),
     r"'w1' has shape \(3, 4\), expected \(4, 3\)"),
    (bad(lambda s: s["params"].update(b2=np.zeros(2, np.int32))), "'b2' must be a float array"),
    (bad(lambda s: s["params"].pop("b1")), "tensors"),
    (bad(lambda s: s["params"].update(w3=np.zeros(2, np.float32))), "tensors"),
    (bad(lambda s: s["params"]["w2"].__setitem__((0, 0), np.nan)), "'w2' has NaN"),
    (bad(lambda s: s["params"].update(b1=np.full(3, 1e300))), "'b1' has NaN or infinite"),
    (bad(lambda s: s.update(format="other")), "format 'other'"),
    (bad(lambda s: s.update(version=2)), "version 2"),
    (bad(lambda s: s["config"].pop("loss")), "lacks"),
    (bad(lambda s: s.update(params=[1, 2])), "'params' dict"),
])
def test_bad_state_refused_unchanged(state, message):
    model = gdfast.MLP([4, 3, 2], seed=2)
    before = snapshot(model)
    with pytest.raises(ValueError, match=message):
        model.load_state_dict(state)
    assert_same(before, model)


def test_optimizer_file_is_not_a_model(tmp_path):
    model = gdfast.MLP([4, 3, 2])
    path = tmp_path / "adam.npz"
    gdfast.Adam(model.params, lr=1e-3).save(path)
    with pytest.raises(checkpoint.CheckpointError, match="adam.npz"):
        gdfast.MLP.load(path)


def test_other_checkpoint_and_random_npz_refused(tmp_path):
    checkpoint.save(tmp_path / "c.npz", {"params": {"w1": np.zeros(3, np.float32)}})
    with pytest.raises(checkpoint.CheckpointError, match="c.npz.*format None"):
        gdfast.MLP.load(tmp_path / "c.npz")
    np.savez(tmp_path / "r.npz", a=np.arange(3))
    with pytest.raises(checkpoint.CheckpointError, match="r.npz"):
        gdfast.MLP.load(tmp_path / "r.npz")


def test_tampered_config_is_a_checkpoint_error(tmp_path):
    state = gdfast.MLP([4, 3, 2]).state_dict()
    for config in ({**state["config"], "sizes": "abc"}, {**state["config"], "sizes": [4, [3], 2]},
                   {**state["config"], "activation": ["relu", "relu"]}, {**state["config"], "seed": 1.5}):
        checkpoint.save(tmp_path / "t.npz", {**state, "config": config})
        with pytest.raises(checkpoint.CheckpointError, match="t.npz"):
            gdfast.MLP.load(tmp_path / "t.npz")
    # tensors whose shapes disagree with the config: refused before building the model
    checkpoint.save(tmp_path / "t.npz", {**state, "config": {**state["config"],
                                                             "sizes": [10**6, 10**6]}})
    with pytest.raises(checkpoint.CheckpointError, match="t.npz.*tensors"):
        gdfast.MLP.load(tmp_path / "t.npz")


def test_trainer_checkpoint_of_another_class_refused(tmp_path):
    state = {"params": {}, "layout": [], "model": {"class": "Other"}}
    checkpoint.save(tmp_path / "o.npz", state)
    with pytest.raises(checkpoint.CheckpointError, match="o.npz.*'Other'"):
        gdfast.MLP.load(tmp_path / "o.npz")


def test_truncated_file_is_a_checkpoint_error(tmp_path):
    path = gdfast.MLP([4, 3, 2]).save(tmp_path / "m.npz")
    data = path.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 5):
        path.write_bytes(data[:cut])
        with pytest.raises(checkpoint.CheckpointError, match="m.npz"):
            gdfast.MLP.load(path)
