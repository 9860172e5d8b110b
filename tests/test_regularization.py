"""L2 penalty (alpha) and inverted dropout of gdfast.MLP: against the NumPy
reference, scikit-learn's definition, finite differences, mask statistics,
thread counts, resume, inference and bad input."""
import math

import numpy as np
import pytest

import gdfast
from conftest import assert_same_state
from gdfast.reference.mlp import MLP as RefMLP, dropout_mask
from gdfast.train import Trainer
from test_mlp import ACTS, batch

SIZES = [30, 23, 17, 7]
REGS = {"alpha": dict(alpha=0.7), "dropout": dict(dropout=0.3),
        "both": dict(alpha=0.2, dropout=0.5), "per layer": dict(dropout=[0.0, 0.6], alpha=1e-3)}


def reference_of(net, dtype=np.float64):
    params = {name: net.params[name] for name in net.params}
    return RefMLP(net.sizes, net.activation, net.loss, net.output_activation, params, dtype,
                  alpha=net.alpha, dropout=net.dropout, seed=net.seed)


def assert_step_matches_reference(net, x, y):
    """The loss and gradients of net's next training call against the reference's."""
    ref = reference_of(net)
    loss_r, grads = ref.loss_and_grad(x, y, step=net.step)
    loss_c = net.loss_and_grad(x, y)
    assert loss_c == pytest.approx(loss_r, rel=1e-5)
    for name in net.params:
        scale = np.abs(grads[name]).max() + 1e-12
        np.testing.assert_allclose(net.params.grad_of(name) / scale, grads[name] / scale,
                                   atol=1e-5, err_msg=name)


@pytest.mark.parametrize("n", [1, 2, 37])  # GEMM's dot-product, few-row and tiled paths
@pytest.mark.parametrize("reg", list(REGS))
@pytest.mark.parametrize("act", ACTS + [["tanh", "sigmoid"]], ids=str)
def test_c_mlp_matches_reference_with_regularization(simd, act, reg, n):
    rng = np.random.default_rng(1)
    for loss in ("cross_entropy", "mse"):
        net = gdfast.MLP(SIZES, activation=act, loss=loss, init="xavier", seed=2, **REGS[reg])
        for step in range(3):  # a new mask each call
            assert net.step == step
            assert_step_matches_reference(net, *batch(rng, n, SIZES))


def test_dropout_changes_the_gradients_and_every_call_draws_a_new_mask():
    rng = np.random.default_rng(2)
    x, y = batch(rng, 64, SIZES)
    plain, dropped = gdfast.MLP(SIZES, seed=1), gdfast.MLP(SIZES, seed=1, dropout=0.5)
    loss_plain = plain.loss_and_grad(x, y)
    losses = [dropped.loss_and_grad(x, y) for _ in range(3)]
    assert len(set(losses + [loss_plain])) == 4
    dropped.step = 1  # the counter alone picks the mask
    assert dropped.loss_and_grad(x, y) == losses[1]


def test_reference_gradients_with_alpha_and_dropout_match_finite_differences():
    rng = np.random.default_rng(0)
    for act in ("tanh", "sigmoid", ["relu", "tanh"]):
        ref = RefMLP([5, 6, 4, 3], act, alpha=0.9, dropout=[0.4, 0.3], seed=7)
        for p in ref.params.values():
            p[...] = rng.standard_normal(p.shape)
        x, y = batch(rng, 6, ref.sizes)
        x = x.astype(np.float64) + 0.1
        _, grads = ref.loss_and_grad(x, y, step=3)
        h = 1e-6
        for name, p in ref.params.items():
            numeric = np.zeros_like(p)
            for idx in np.ndindex(p.shape):
                old = p[idx]
                p[idx] = old + h
                up, _ = ref.loss_and_grad(x, y, step=3)
                p[idx] = old - h
                down, _ = ref.loss_and_grad(x, y, step=3)
                p[idx] = old
                numeric[idx] = (up - down) / (2 * h)
            np.testing.assert_allclose(grads[name], numeric, rtol=1e-5, atol=1e-7,
                                       err_msg=f"{act} {name}")


def test_alpha_is_scikit_learns_penalty():
    nn = pytest.importorskip("sklearn.neural_network")
    rng = np.random.default_rng(4)
    net = gdfast.MLP([6, 8, 4], activation="tanh", alpha=0.7, seed=1)
    x, y = batch(rng, 13, net.sizes)
    clf = nn.MLPClassifier(hidden_layer_sizes=(8,), activation="tanh", alpha=0.7)
    clf.partial_fit(x.astype(np.float64), y, classes=np.arange(4))  # sets it up
    clf.coefs_ = [net.params["w1"].astype(np.float64), net.params["w2"].astype(np.float64)]
    clf.intercepts_ = [net.params["b1"].astype(np.float64), net.params["b2"].astype(np.float64)]
    x64 = x.astype(np.float64)
    activations = [x64, None, None]
    loss_sk, coef_grads, intercept_grads = clf._backprop(
        x64, clf._label_binarizer.transform(y), None, activations, [None, None],
        [np.empty_like(c) for c in clf.coefs_], [np.empty_like(b) for b in clf.intercepts_])
    assert net.loss_and_grad(x, y) == pytest.approx(loss_sk, rel=1e-5)
    for l in (1, 2):
        np.testing.assert_allclose(net.params.grad_of(f"w{l}"), coef_grads[l - 1], rtol=1e-4,
                                   atol=1e-6)
        np.testing.assert_allclose(net.params.grad_of(f"b{l}"), intercept_grads[l - 1],
                                   rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_mask_drops_at_the_rate_and_masks_are_independent(p):
    n, width = 400, 256
    m = dropout_mask(3, 10, 1, n, width, p)
    sigma = math.sqrt(p * (1 - p) / m.size)
    assert abs((m == 0).mean() - p) < 5 * sigma
    assert set(np.unique(m)) == {0.0, np.float32(1 / (1 - p))}
    assert abs(m.mean() - 1.0) < 5 * sigma / (1 - p)  # inverted: the expected value stays
    # another step, layer or seed: independent masks, both drop with probability p^2
    for other in (dropout_mask(3, 11, 1, n, width, p), dropout_mask(3, 10, 2, n, width, p),
                  dropout_mask(4, 10, 1, n, width, p)):
        assert abs(((m == 0) & (other == 0)).mean() - p * p) < 5 * math.sqrt(p * p / m.size)
    # no pattern along rows or columns
    assert np.abs((m == 0).mean(axis=0) - p).max() < 6 * math.sqrt(p * (1 - p) / n)
    assert np.abs((m == 0).mean(axis=1) - p).max() < 6 * math.sqrt(p * (1 - p) / width)


def test_c_mask_drops_exactly_the_reference_units():
    # x = I and W1 = 1, identity hidden layer: dW1 = x^T dZ1 = dZ1, zero exactly
    # where a unit is dropped ((dZ2 W2^T) * mask)
    net = gdfast.MLP([4, 300, 3], activation="identity", dropout=0.25, seed=9)
    net.params["w1"][...] = 1.0
    net.step = 5
    net.loss_and_grad(np.eye(4, dtype=np.float32), np.zeros(4, np.int64))
    dz1 = net.params.grad_of("w1")
    mask = dropout_mask(9, 5, 1, 4, 300, 0.25)
    np.testing.assert_array_equal(dz1 == 0, mask == 0)
    np.testing.assert_allclose(dz1.sum(axis=0), net.params.grad_of("b1"), rtol=1e-6)


def test_a_part_of_a_batch_draws_the_masks_of_its_rows_in_the_whole_batch():
    net = gdfast.MLP([4, 300, 3], activation="identity", dropout=0.25, seed=9)
    net.params["w1"][...] = 1.0
    net.step = 5
    net.loss_and_grad(np.eye(4, dtype=np.float32), np.zeros(4, np.int64), first_row=7)
    assert net.step == 6
    np.testing.assert_array_equal(net.params.grad_of("w1") == 0,
                                  dropout_mask(9, 5, 1, 11, 300, 0.25)[7:] == 0)
    with pytest.raises(ValueError, match="first_row must be an integer >= 0"):
        net.loss_and_grad(np.eye(4, dtype=np.float32), np.zeros(4, np.int64), first_row=-1)


def test_parts_with_their_first_rows_sum_to_the_whole_batch_gradient():
    rng = np.random.default_rng(3)
    net = gdfast.MLP([20, 64, 32, 5], dropout=[0.3, 0.2], seed=4)
    x = rng.standard_normal((50, 20)).astype(np.float32)
    y = rng.integers(0, 5, 50)
    net.step = 12
    whole_loss = net.loss_and_grad(x, y)
    whole = net.params.grad.copy()
    assert whole_loss == pytest.approx(reference_of(net).loss_and_grad(x, y, step=12)[0],
                                       rel=1e-5)
    for first_rows in (True, False):
        total, loss = np.zeros_like(whole), 0.0
        for lo, hi in ((0, 17), (17, 50)):
            net.step = 12
            loss += net.loss_and_grad(x[lo:hi], y[lo:hi], mean_over=50,
                                      first_row=lo if first_rows else 0) * (hi - lo) / 50
            total += net.params.grad
        if first_rows:
            np.testing.assert_allclose(total, whole, rtol=1e-5, atol=1e-7)
            assert loss == pytest.approx(whole_loss, rel=1e-6)
        else:           # every part draws the first rows' masks: another gradient
            assert np.abs(total - whole).max() > 1e-3
    net.step = 12       # one part alone against the NumPy twin's masks of those rows
    part_loss = net.loss_and_grad(x[17:], y[17:], first_row=17)
    ref_loss, ref = reference_of(net).loss_and_grad(x[17:], y[17:], step=12, first_row=17)
    assert part_loss == pytest.approx(ref_loss, rel=1e-5)
    for name in net.params:
        np.testing.assert_allclose(net.params.grad_of(name), ref[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("reg", list(REGS))
def test_one_and_two_threads_agree_bitwise(reg):
    rng = np.random.default_rng(5)
    sizes = [784, 256, 128, 10]
    x, y = batch(rng, 96, sizes)
    before = gdfast.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            gdfast.set_num_threads(threads)
            net = gdfast.MLP(sizes, seed=6, **REGS[reg])
            results.append((net.loss_and_grad(x, y), net.params.grad.copy()))
    finally:
        gdfast.set_num_threads(before)
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", [1, 7])
@pytest.mark.parametrize("reg", ["alpha", "both"])
@pytest.mark.parametrize("opt", ["Adam", "SGD"])
def test_fused_train_step_equals_loss_and_grad_then_step(simd, opt, reg, n, threads):
    """With alpha the one-example step forms in_i * dZ + (alpha / n) W_i itself
    (never stored); same bits as the epilogue's, any thread count, and the
    norm it measures is the stored gradients' up to rounding."""
    before = gdfast.get_num_threads()
    gdfast.set_num_threads(threads)
    try:
        rng = np.random.default_rng(n)
        sizes = [450, 70, 333, 10]  # rows wider than the fused step's chunk of 256
        fused = gdfast.MLP(sizes, seed=3, **REGS[reg])
        split = gdfast.MLP(sizes, seed=3, **REGS[reg])
        opt_f = getattr(gdfast, opt)(fused.params, lr=1e-2)
        opt_s = getattr(gdfast, opt)(split.params, lr=1e-2)
        for max_norm in (None, math.inf, None):
            x, y = batch(rng, n, sizes)
            out = fused.train_step(x, y, opt_f, max_grad_norm=max_norm)
            loss_s = split.loss_and_grad(x, y)
            norm_s = opt_s.step(max_grad_norm=max_norm)
            if max_norm is None:
                assert out == loss_s
            else:
                assert out[0] == loss_s
                assert out[1] == pytest.approx(norm_s, rel=1e-6)
        np.testing.assert_array_equal(fused.params.data, split.params.data)
        assert_same_state(opt_f, opt_s)
    finally:
        gdfast.set_num_threads(before)


def test_train_step_with_alpha_matches_the_reference_update():
    rng = np.random.default_rng(8)
    net = gdfast.MLP([20, 9, 4], seed=1, alpha=2.0)
    ref = reference_of(net)
    x, y = batch(rng, 1, net.sizes)
    _, grads = ref.loss_and_grad(x, y)
    before = {name: np.array(net.params[name], np.float64) for name in net.params}
    net.train_step(x, y, gdfast.SGD(net.params, lr=0.1))
    for name in net.params:
        np.testing.assert_allclose(net.params[name], before[name] - 0.1 * grads[name],
                                   rtol=1e-5, atol=1e-6, err_msg=name)


def test_evaluate_forward_predict_never_drop_and_report_the_data_loss():
    rng = np.random.default_rng(3)
    x, y = batch(rng, 300, SIZES)
    plain = gdfast.MLP(SIZES, seed=4)
    reg = gdfast.MLP(SIZES, seed=4, dropout=[0.5, 0.7], alpha=5.0)
    for _ in range(2):
        assert reg.evaluate(x, y) == plain.evaluate(x, y)
        np.testing.assert_array_equal(reg.forward(x), plain.forward(x))
        np.testing.assert_array_equal(reg.predict(x), plain.predict(x))
    assert reg.step == 0  # inference does not move the mask counter


def test_resume_is_bit_exact_with_dropout(tmp_path):
    rng = np.random.default_rng(6)
    x, y = batch(rng, 200, SIZES)

    def trainer(directory):
        net = gdfast.MLP(SIZES, seed=5, dropout=[0.3, 0.2], alpha=0.01)
        return Trainer(net, gdfast.Adam(net.params, lr=1e-2), (x, y), batch_size=16, seed=1,
                       checkpoint_dir=directory)
    whole = trainer(tmp_path / "a")
    whole.fit(3)
    first = trainer(tmp_path / "b")
    first.fit(1)
    resumed = trainer(tmp_path / "b")
    resumed.fit(3, resume=True)
    assert resumed.model.step == whole.model.step == 3 * 13
    np.testing.assert_array_equal(resumed.params.data, whole.params.data)
    # the checkpoint is a model file too, with its regularization and step
    model = gdfast.MLP.load(tmp_path / "b" / "last.npz")
    assert (model.alpha, model.dropout, model.step) == (0.01, [0.3, 0.2], 39)


def test_save_and_load_keep_alpha_dropout_and_step(tmp_path):
    net = gdfast.MLP(SIZES, seed=5, dropout=0.25, alpha=0.5)
    rng = np.random.default_rng(0)
    net.loss_and_grad(*batch(rng, 8, SIZES))
    net.save(tmp_path / "m.npz")
    back = gdfast.MLP.load(tmp_path / "m.npz")
    assert (back.alpha, back.dropout, back.step) == (0.5, 0.25, 1)
    x, y = batch(rng, 8, SIZES)
    assert back.loss_and_grad(x, y) == net.loss_and_grad(x, y)
    # [0.25, 0.25] is the same model as 0.25; other rates or alphas are not
    gdfast.MLP(SIZES, dropout=[0.25, 0.25], alpha=0.5).load_state_dict(net.state_dict())
    for other, what in ((dict(dropout=0.25), "alpha: file 0.5, this model 0.0"),
                        (dict(alpha=0.5, dropout=[0.25, 0.0]), "dropout: file 0.25")):
        model = gdfast.MLP(SIZES, **other)
        before = model.params.data.copy()
        with pytest.raises(ValueError, match=what):
            model.load_state_dict(net.state_dict())
        np.testing.assert_array_equal(model.params.data, before)
    # a state from before regularization existed loads as none
    old = net.state_dict()
    for key in ("alpha", "dropout"):
        del old["config"][key]
    del old["step"]
    plain = gdfast.MLP(SIZES)
    plain.load_state_dict(old)
    assert plain.step == 0


@pytest.mark.parametrize("kwargs,match", [
    (dict(alpha=-0.1), "alpha must be a finite number >= 0, got -0.1"),
    (dict(alpha=math.nan), "alpha must be a finite number >= 0"),
    (dict(alpha="0.1"), "alpha must be a finite number >= 0"),
    (dict(alpha=True), "alpha must be a finite number >= 0"),
    (dict(dropout=1.0), r"dropout must be a number in \[0, 1\), got 1.0"),
    (dict(dropout=-0.2), r"dropout must be a number in \[0, 1\)"),
    (dict(dropout=math.nan), r"dropout must be a number in \[0, 1\)"),
    (dict(dropout=[0.1]), r"dropout must be one rate or a list of 2 \(one per hidden layer\), "
                          "got 1 rates"),
    (dict(dropout=[0.1, 0.2, 0.3]), "a list of 2"),
    (dict(dropout=[0.1, 1.5]), r"dropout\[1\] must be a number in \[0, 1\), got 1.5"),
    (dict(dropout="0.2"), r"dropout must be a number in \[0, 1\)"),
])
def test_bad_regularization_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gdfast.MLP(SIZES, **kwargs)


def test_bad_step_is_refused_and_changes_nothing():
    net = gdfast.MLP(SIZES, dropout=0.1)
    for bad in (-1, 1.5, True, 2 ** 64):
        with pytest.raises(ValueError, match="step must be an integer >= 0"):
            net.step = bad
    state = net.state_dict()
    state["step"] = -3
    before = net.params.data.copy()
    with pytest.raises(ValueError, match="state 'step' must be an integer >= 0"):
        gdfast.MLP(SIZES, dropout=0.1, seed=7).load_state_dict(state)
    assert net.step == 0
    np.testing.assert_array_equal(net.params.data, before)


def test_cli_alpha_and_dropout_reach_the_model(tmp_path, capsys):
    from gdfast import cli
    from test_userdata import separable_csv
    train, model_path = separable_csv(tmp_path / "train.csv"), tmp_path / "m.npz"
    argv = ["train", "--hidden", "8,6", "--epochs", "2", "--batch-size", "16", "--no-progress",
            "--train", str(train), "--save-model", str(model_path)]
    assert cli.main(argv + ["--dropout", "0.2,0.1", "--alpha", "1e-3"]) == 0
    assert "4-8-6-3 relu cross_entropy, dropout 0.2,0.1, alpha 0.001, adam" in capsys.readouterr().out
    model = gdfast.MLP.load(model_path)
    assert (model.alpha, model.dropout, model.step) == (1e-3, [0.2, 0.1], 2 * 13)
    for bad, what in ((["--dropout", "1"], "--dropout: dropout rates must be numbers in [0, 1)"),
                      (["--dropout", "0.1,x"], "--dropout: dropout rates must be numbers"),
                      (["--alpha", "-1"], "--alpha: expected a number >= 0"),
                      (["--dropout", "0.1,0.2,0.3"], "--dropout has 3 rates but --hidden has 2")):
        with pytest.raises(SystemExit) as e:
            cli.main(argv + bad)
        assert e.value.code == 2 and what in capsys.readouterr().err


def test_fashion_mnist_defaults_to_its_preset_and_flags_win():
    from gdfast import cli
    parser = cli.build_parser()
    for argv, preset, epochs, dropout in (
            (["train", "--dataset", "fashion-mnist"], "fashion-mnist", 40, 0.25),
            (["train", "--dataset", "fashion-mnist", "--epochs", "3", "--dropout", "0"],
             "fashion-mnist", 3, 0.0),
            (["train"], None, 15, 0.0),
            (["train", "--dataset", "fashion-mnist", "--preset", "nielsen"], "nielsen", 30, 0.0)):
        args = parser.parse_args(argv)
        cli._apply_preset(args, argv)
        assert (args.preset, args.epochs, args.dropout) == (preset, epochs, dropout), argv
    assert args.hidden == [30]
    args = parser.parse_args(["train", "--dataset", "fashion-mnist"])
    cli._apply_preset(args, [])
    assert (args.hidden, args.shift, args.batch_size) == ([256, 128], 0, 256)


def test_penalty_false_leaves_the_l2_term_out_and_last_penalty_reports_it():
    rng = np.random.default_rng(6)
    net = gdfast.MLP([7, 9, 4], alpha=0.3, seed=2)
    x, y = batch(rng, 11, net.sizes)
    with_l2 = net.loss_and_grad(x, y, mean_over=20)
    grads, pen = {name: net.params.grad_of(name).copy() for name in net.params}, net.last_penalty
    squares = sum(float(np.sum(net.params[f"w{l}"].astype(np.float64) ** 2)) for l in (1, 2))
    assert pen == pytest.approx(0.5 * 0.3 / 20 * squares, rel=1e-6)
    without = net.loss_and_grad(x, y, mean_over=20, penalty=False)
    assert net.last_penalty == 0.0
    assert without == pytest.approx(with_l2 - pen, rel=1e-12)
    for l in (1, 2):        # the L2 gradient term, on the weights only
        np.testing.assert_allclose(grads[f"w{l}"] - net.params.grad_of(f"w{l}"),
                                   0.3 / 20 * net.params[f"w{l}"], rtol=1e-4, atol=1e-7)
        np.testing.assert_array_equal(grads[f"b{l}"], net.params.grad_of(f"b{l}"))
    assert net.alpha == 0.3             # the call left the model's alpha alone
    assert net.loss_and_grad(x, y, mean_over=20) == with_l2


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("sizes", [[450, 70, 333, 10], [2, 37, 1, 5]])  # tiles; 1-2 rows
def test_penalty_is_the_rows_sums_of_squares_in_the_kernels_order(simd, threads, accumulate,
                                                                   sizes):
    """The weight-gradient GEMMs' epilogue adds up each row's ||w||^2 in
    gd_optim_k.sumsq's order (reference.optim.sumsq), so the penalty has
    those bits on every path: tiles, part tiles, any thread count, and the
    separate pass an accumulating call makes."""
    from gdfast.reference.optim import sumsq
    before = gdfast.get_num_threads()
    gdfast.set_num_threads(threads)
    try:
        rng = np.random.default_rng(9)
        net = gdfast.MLP(sizes, alpha=0.3, seed=4)
        x, y = batch(rng, 7, net.sizes)
        net.loss_and_grad(x, y, accumulate=accumulate, mean_over=9)
        rows = [sumsq(w_row) for l in (1, 2, 3) for w_row in net.params[f"w{l}"]]
        assert len(rows) == sum(sizes[:-1])
        assert net.last_penalty == 0.5 * 0.3 / 9 * _in_order(rows)
    finally:
        gdfast.set_num_threads(before)


def _in_order(values):
    """Rows added one after the other, as src/mlp.c adds them (the builtin
    sum compensates its rounding from Python 3.12 on)."""
    total = 0.0
    for v in values:
        total += v
    return total
