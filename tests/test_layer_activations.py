"""Per-layer activations: MLP(sizes, activation=[one name per hidden layer])."""
import json

import numpy as np
import pytest

import gdfast
from gdfast.reference import optim as ref_optim
from test_mlp import LOSSES, assert_matches_reference, batch, reference_of
# 2 to 4 hidden layers; together every activation appears at every depth
ACT_LISTS = [["relu", "tanh"], ["sigmoid", "identity"], ["tanh", "relu", "sigmoid"],
             ["identity", "sigmoid", "relu", "tanh"], ["relu", "identity", "tanh", "sigmoid"]]


def sizes_for(acts):
    return [13] + [11 - i for i in range(len(acts))] + [5]


@pytest.mark.parametrize("n", [1, 2, 29])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("acts", ACT_LISTS, ids="-".join)
def test_forward_and_gradients_match_the_reference(acts, loss, n):
    rng = np.random.default_rng(1)
    net = gdfast.MLP(sizes_for(acts), activation=acts, loss=loss, init="xavier", seed=2)
    x, y = batch(rng, n, net.sizes)
    assert_matches_reference(net, x, y)


def test_layers_really_differ():
    """A list gives other outputs than either name alone (each layer reads its own)."""
    rng = np.random.default_rng(0)
    x, _ = batch(rng, 4, [6, 5, 4, 3])
    outs = [gdfast.MLP([6, 5, 4, 3], activation=a, seed=1).forward(x)
            for a in (["relu", "tanh"], ["tanh", "relu"], "relu", "tanh")]
    for i in range(len(outs)):
        for j in range(i):
            assert not np.allclose(outs[i], outs[j])


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("acts", ACT_LISTS, ids="-".join)
def test_train_step_equals_reference_mlp_and_optimizer(acts, loss):
    rng = np.random.default_rng(7)
    net = gdfast.MLP(sizes_for(acts), activation=acts, loss=loss, seed=8)
    ref = reference_of(net, np.float32)
    names = list(net.params)
    optimizer = gdfast.Adam(net.params, lr=0.01)
    ref_opt = ref_optim.Adam([ref.params[k] for k in names], lr=0.01)
    for step in range(4):
        x, y = batch(rng, 1 + 7 * step, net.sizes)  # n = 1 takes the fused path
        loss_c = net.train_step(x, y, optimizer)
        loss_r, grads = ref.loss_and_grad(x, y)
        ref_opt.step([grads[k].astype(np.float32) for k in names])
        assert loss_c == pytest.approx(loss_r, rel=1e-4)
    for name in names:
        np.testing.assert_allclose(net.params[name], ref.params[name], rtol=1e-4, atol=1e-5,
                                   err_msg=name)


def test_mse_output_activation_defaults_and_identity_regression():
    assert gdfast.MLP([3, 4, 5, 2], activation=["relu", "tanh"],
                      loss="mse").output_activation == "tanh"
    assert gdfast.MLP([3, 2], activation=[], loss="mse").output_activation == "identity"
    net = gdfast.MLP([3, 8, 1], activation="tanh", loss="mse", output_activation="identity")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 3)).astype(np.float32)
    t = (x @ np.array([[1.0], [-2.0], [0.5]]) + 3.0).astype(np.float32)  # beyond tanh's range
    ref = reference_of(net)
    np.testing.assert_allclose(net.forward(x), ref.forward(x), rtol=1e-4, atol=1e-6)
    assert net.loss_and_grad(x, t) == pytest.approx(ref.loss_and_grad(x, t)[0], rel=1e-5)
    opt = gdfast.Adam(net.params, lr=0.05)
    first = net.train_step(x, t, opt)
    for _ in range(300):
        last = net.train_step(x, t, opt)
    assert last < 0.05 * first


def test_activation_keeps_what_was_passed():
    assert gdfast.MLP([3, 4, 2], activation="tanh").activation == "tanh"
    assert gdfast.MLP([3, 4, 4, 2], activation=("relu", "tanh")).activation == ["relu", "tanh"]


@pytest.mark.parametrize("loss", LOSSES)
def test_save_load_round_trip(tmp_path, loss):
    net = gdfast.MLP([6, 5, 4, 3], activation=["sigmoid", "relu"], loss=loss, seed=3)
    x, _ = batch(np.random.default_rng(2), 7, net.sizes)
    back = gdfast.MLP.load(net.save(tmp_path / "m.npz"))
    assert back.activation == ["sigmoid", "relu"]
    assert back.output_activation == net.output_activation
    np.testing.assert_array_equal(back.forward(x), net.forward(x))
    # one name for every layer is the same architecture as the list spelling it out
    gdfast.MLP([6, 5, 4, 3], activation=["tanh", "tanh"], loss=loss).load_state_dict(
        gdfast.MLP([6, 5, 4, 3], activation="tanh", loss=loss).state_dict())
    with pytest.raises(ValueError, match="activation"):
        gdfast.MLP([6, 5, 4, 3], activation=["relu", "sigmoid"], loss=loss).load_state_dict(
            net.state_dict())
    assert json.loads(json.dumps(net.state_dict()["config"]))["activation"] == ["sigmoid", "relu"]


def test_trainer_checkpoint_of_a_list_model_loads(tmp_path):
    net = gdfast.MLP([6, 5, 4, 3], activation=["tanh", "relu"], seed=3)
    rng = np.random.default_rng(4)
    x, y = batch(rng, 20, net.sizes)
    trainer = gdfast.Trainer(net, gdfast.SGD(net.params, lr=0.1), (x, y), batch_size=10,
                             checkpoint_dir=tmp_path)
    trainer.fit(1)
    back = gdfast.MLP.load(tmp_path / "last.npz")
    assert back.activation == ["tanh", "relu"]
    np.testing.assert_array_equal(back.forward(x), net.forward(x))


@pytest.mark.parametrize("activation,match", [
    (["relu"], r"activation must be one name or a list of 2 .*got 1"),
    (["relu", "tanh", "relu"], r"activation must be one name or a list of 2 .*got 3"),
    ([], r"activation must be one name or a list of 2 .*got 0"),
    (["relu", "gelu"], r"activation\[1\] must be one of .*'gelu'"),
    (["relu", None], r"activation\[1\] must be one of .*None"),
    ("gelu", r"activation must be one of .*'gelu'"),
    (None, r"activation must be one of .*None"),
])
def test_bad_activation_lists_are_refused(activation, match):
    with pytest.raises(ValueError, match=match):
        gdfast.MLP([3, 4, 4, 2], activation=activation)


def test_bad_activation_in_a_file_is_refused(tmp_path):
    from gdfast import checkpoint as ckpt
    state = gdfast.MLP([3, 4, 4, 2], activation=["relu", "tanh"]).state_dict()
    state["config"]["activation"] = ["relu"]
    path = ckpt.save(tmp_path / "bad.npz", state)
    with pytest.raises(ckpt.CheckpointError, match=r"config 'activation' must be one name"):
        gdfast.MLP.load(path)
