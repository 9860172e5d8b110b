"""gdfast.sklearn: scikit-learn's MLP estimators trained by gdfast."""
import pickle
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn import neural_network as sk  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.datasets import make_classification, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import gdfast  # noqa: E402
from gdfast.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

# Checks of check_estimator that cannot pass, with the reason (README.md lists them too).
EXPECTED_FAILED_CHECKS = {"MLPClassifier": {}, "MLPRegressor": {}}


@parametrize_with_checks([MLPClassifier(), MLPRegressor()],
                         expected_failed_checks=lambda e: EXPECTED_FAILED_CHECKS[type(e).__name__])
def test_check_estimator(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


def classification(n_classes=3, n=600, seed=0):
    X, y = make_classification(n, 12, n_informative=8, n_classes=n_classes, random_state=seed)
    return StandardScaler().fit_transform(X), y


def fit_both(ours, X, y):
    """ours fitted, and scikit-learn's estimator with the same parameters."""
    params = {k: v for k, v in ours.get_params().items() if k not in ("dropout", "n_threads")}
    theirs = getattr(sk, type(ours).__name__)(**params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return ours.fit(X, y), theirs.fit(X, y)


def assert_same_fit(ours, theirs, rtol=1e-3):
    """The same training run up to float32 rounding: same init and batches."""
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=rtol)
    assert ours.n_iter_ == theirs.n_iter_ and ours.t_ == theirs.t_
    for attr in ("n_layers_", "n_outputs_", "out_activation_", "n_features_in_"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        assert a.shape == b.shape and a.dtype == np.float32
        np.testing.assert_allclose(a, b, atol=1e-2)


@pytest.mark.parametrize("solver", ["adam", "sgd"])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_classifier_follows_sklearn(solver, n_classes):
    X, y = classification(n_classes)
    ours, theirs = fit_both(MLPClassifier((16, 8), solver=solver, alpha=1e-3, max_iter=15,
                                          batch_size=64, random_state=1), X, y)
    assert_same_fit(ours, theirs)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=2e-3)
    assert ours.score(X, y) == pytest.approx(theirs.score(X, y), abs=0.01)
    np.testing.assert_array_equal(ours.classes_, theirs.classes_)


def test_multilabel_is_logistic_with_binary_cross_entropy():
    X, y = classification(4)
    Y = np.stack([y == 0, y >= 2, X[:, 0] > 0], axis=1).astype(int)
    ours, theirs = fit_both(MLPClassifier((16,), max_iter=10, random_state=0), X, Y)
    assert ours.out_activation_ == "logistic" and ours.n_outputs_ == 3
    assert_same_fit(ours, theirs)
    proba = ours.predict_proba(X)
    assert proba.shape == (len(X), 3) and not np.allclose(proba.sum(axis=1), 1)
    np.testing.assert_array_equal(ours.predict(X), (proba > 0.5).astype(int))


@pytest.mark.parametrize("n_targets", [1, 3])
def test_regressor_follows_sklearn(n_targets):
    X, y = make_regression(500, 10, n_targets=n_targets, noise=0.1, random_state=0)
    ours, theirs = fit_both(MLPRegressor(hidden_layer_sizes=(16,), solver="adam",
                                         learning_rate_init=1e-2, max_iter=10, random_state=0),
                            X, y / 100)
    assert_same_fit(ours, theirs)
    assert ours.predict(X).shape == y.shape and ours.predict(X).dtype == np.float64


@pytest.mark.parametrize("learning_rate", ["invscaling", "adaptive"])
def test_sgd_learning_rate_schedules_follow_sklearn(learning_rate):
    X, y = classification()
    ours, theirs = fit_both(MLPClassifier((8,), solver="sgd", learning_rate=learning_rate,
                                          learning_rate_init=0.2, momentum=0.0, tol=0.1,
                                          n_iter_no_change=2, max_iter=25, random_state=0),
                            X, y)
    assert_same_fit(ours, theirs)


def test_early_stopping_follows_sklearn_and_keeps_the_best_weights():
    X, y = classification(n=800)
    ours, theirs = fit_both(MLPClassifier((16,), early_stopping=True, n_iter_no_change=3,
                                          learning_rate_init=0.05, max_iter=40,
                                          random_state=0), X, y)
    np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_, atol=0.01)
    assert ours.best_loss_ is None and ours.n_iter_ < 40
    assert ours.best_validation_score_ == max(ours.validation_scores_)


def test_tol_stops_on_the_training_loss():
    X, y = classification()
    clf = MLPClassifier((8,), tol=10.0, n_iter_no_change=2, random_state=0).fit(X, y)
    # the first epoch improves on inf, the next n_iter_no_change + 1 do not by tol
    assert clf.n_iter_ == 4 and clf.best_loss_ == min(clf.loss_curve_)


def test_float64_is_converted_once_to_float32():
    X, y = classification()
    a = MLPClassifier((8,), max_iter=5, random_state=0).fit(X, y)
    b = MLPClassifier((8,), max_iter=5, random_state=0).fit(X.astype(np.float32), y)
    for u, v in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        np.testing.assert_array_equal(u, v)
    assert a.predict_proba(X).dtype == np.float64
    assert a.predict_proba(X.astype(np.float32)).dtype == np.float32


def test_partial_fit():
    X, y = classification()
    clf = MLPClassifier((8,), random_state=0)
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(X, y)
    bad = clone(clf).set_params(alpha=-1)
    with pytest.raises(ValueError, match="alpha"):
        bad.partial_fit(X, y, classes=[0, 1, 2])
    assert not hasattr(bad, "classes_") and not hasattr(clf, "coefs_")
    clf.partial_fit(X[:300], y[:300], classes=[0, 1, 2])
    clf.partial_fit(X[300:], y[300:])
    assert clf.n_iter_ == 1 and clf.t_ == len(X) and len(clf.loss_curve_) == 2
    with pytest.raises(ValueError, match="classes not in"):
        clf.partial_fit(X[:5], np.full(5, 7))
    with pytest.raises(ValueError, match="early_stopping"):
        clf.set_params(early_stopping=True).partial_fit(X, y)


def test_pickle_keeps_training_state():
    X, y = classification()
    clf = MLPClassifier((8,), random_state=0).partial_fit(X, y, classes=[0, 1, 2])
    copy = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(copy.predict_proba(X), clf.predict_proba(X))
    clf.partial_fit(X, y)
    copy.partial_fit(X, y)  # Adam's moments came along
    np.testing.assert_array_equal(copy.coefs_[0], clf.coefs_[0])
    clf.set_params(warm_start=True, max_iter=2)
    copy = pickle.loads(pickle.dumps(clf))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
        copy.fit(X, y)  # fit starts a fresh optimizer, pickled or not
    np.testing.assert_array_equal(copy.coefs_[0], clf.coefs_[0])


def test_warm_start_continues_and_refuses_other_layer_sizes():
    X, y = classification()
    clf = MLPClassifier((8,), max_iter=3, warm_start=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
        first = clf.loss_curve_[-1]
        clf.fit(X, y)
    assert len(clf.loss_curve_) == 6 and clf.loss_curve_[-1] < first
    before = [w.copy() for w in clf.coefs_]
    with pytest.raises(ValueError, match="layer sizes"):
        clf.set_params(hidden_layer_sizes=(9,)).fit(X, y)
    for a, b in zip(before, clf.coefs_):
        np.testing.assert_array_equal(a, b)


def test_bad_parameters_are_refused_and_change_nothing():
    X, y = classification()
    clf = MLPClassifier((8,), max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    before, good = clf.coefs_[0].copy(), clf.get_params()
    for bad in [dict(alpha=-1), dict(solver="newton"), dict(n_threads=0), dict(dropout=1.0),
                dict(hidden_layer_sizes=(8, 0))]:
        with pytest.raises(ValueError, match=next(iter(bad))):
            clf.set_params(**bad).fit(X, y)
        clf.set_params(**good)
        np.testing.assert_array_equal(clf.coefs_[0], before)
    with pytest.raises(ValueError, match="poisson"):
        MLPRegressor(loss="poisson").fit(X, y)
    sparse = pytest.importorskip("scipy.sparse")
    with pytest.raises(TypeError, match="[Ss]parse"):
        clf.fit(sparse.csr_matrix(X), y)


def test_pipeline_grid_search_with_two_jobs_and_clone():
    X, y = classification()
    pipe = make_pipeline(StandardScaler(), MLPClassifier((8,), learning_rate_init=0.01, max_iter=50,
                                                         random_state=0))
    search = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1e-2]}, cv=2, n_jobs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(X, y)
    assert search.score(X, y) > 0.8
    best = search.best_estimator_[-1]
    cloned = clone(best)
    assert cloned.get_params() == best.get_params() and not hasattr(cloned, "coefs_")


def test_pandas_dataframes():
    pd = pytest.importorskip("pandas")
    X, y = classification()
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    clf = MLPClassifier((8,), max_iter=5, random_state=0).fit(frame, pd.Series(y))
    assert list(clf.feature_names_in_) == list(frame.columns)
    np.testing.assert_array_equal(clf.predict(frame), clf.predict(X))
    with pytest.raises(ValueError, match="feature names"):
        clf.predict(frame.rename(columns={"f0": "other"}))


def _worker_threads():
    return gdfast.get_num_threads()


def test_joblib_workers_get_a_share_of_the_cores():
    joblib = pytest.importorskip("joblib")
    got = joblib.Parallel(n_jobs=2)(joblib.delayed(_worker_threads)() for _ in range(2))
    assert got == [max(joblib.cpu_count() // 2, 1)] * 2


def test_n_threads_applies_during_fit_only():
    X, y = classification()
    old = gdfast.get_num_threads()
    seen = []

    class Spy(MLPClassifier):
        def _fit_stochastic(self, *args):
            seen.append(gdfast.get_num_threads())
            return super()._fit_stochastic(*args)

    Spy((8,), max_iter=1, n_threads=1).fit(X, y)
    assert seen == [1] and gdfast.get_num_threads() == old


def test_bench_section_fits_both_estimators(monkeypatch):
    from types import SimpleNamespace
    from gdfast import bench, datasets
    X, y = classification(n_classes=10, n=400)
    X = (X - X.min()).astype(np.float32)
    data = SimpleNamespace(x_train=X[:300], y_train=y[:300], x_test=X[300:], y_test=y[300:])
    monkeypatch.setattr(datasets, "load", lambda name, progress=True: data)
    monkeypatch.setattr(bench, "SETTLE_SECONDS", 0)
    rows = bench.bench_sklearn(1, True, 10.0, log=print)
    assert [r.case for r in rows] == ["float64 input", "float32 input"]
    for r in rows:
        assert r.gdfast_s > 0 and r.extra["scikit-learn"] > 0
        assert r.extra["test acc gdfast"].endswith("%")
    assert "vs scikit-learn" in bench.table(rows, markdown=True)


@pytest.mark.parametrize("Estimator", [MLPClassifier, MLPRegressor])
def test_lbfgs_follows_sklearn(Estimator):
    if Estimator is MLPClassifier:
        X, y = classification()
    else:
        X, y = make_regression(300, 8, noise=1.0, random_state=0)
        y = y / 100
    ours, theirs = fit_both(Estimator(hidden_layer_sizes=(16,), solver="lbfgs", alpha=1e-3,
                                      max_iter=60, random_state=0), X, y)
    assert not hasattr(ours, "partial_fit") and not hasattr(ours, "loss_curve_")
    assert 1 <= ours.n_iter_ <= 60 and ours.t_ == 0
    # different line searches and float32: the same kind of minimum, not the same path
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=0.5, abs=0.02)
    assert ours.score(X, y) == pytest.approx(theirs.score(X, y), abs=0.05)


def test_lbfgs_loss_is_the_final_full_batch_loss():
    X, y = classification()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier((8,), solver="lbfgs", alpha=1e-2, max_iter=30, random_state=0)
        clf.fit(X, y)
    model = gdfast.MLP([12, 8, 3], activation="relu", alpha=1e-2)
    for l, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_), 1):
        model.params[f"w{l}"], model.params[f"b{l}"] = w, b
    labels = np.searchsorted(clf.classes_, y)
    assert clf.loss_ == pytest.approx(model.loss_and_grad(X.astype(np.float32), labels), rel=1e-6)
    with pytest.warns(ConvergenceWarning, match="lbfgs"):
        clone(clf).set_params(max_iter=2).fit(X, y)


def test_dropout_trains_and_predicts_deterministically():
    X, y = classification()
    plain = MLPClassifier((32,), learning_rate_init=0.01, max_iter=20, random_state=0)
    drop = clone(plain).set_params(dropout=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        plain.fit(X, y)
        drop.fit(X, y)
    assert drop.score(X, y) > 0.8
    assert drop.loss_ > plain.loss_  # the training loss is measured with units dropped
    np.testing.assert_array_equal(drop.predict_proba(X), drop.predict_proba(X))
    with pytest.raises(ValueError, match="dropout"):
        clone(drop).set_params(solver="lbfgs").fit(X, y)


def test_changing_alpha_between_partial_fits_keeps_the_optimizer_state():
    X, y = classification()
    clf = MLPClassifier((8,), random_state=0).partial_fit(X, y, classes=[0, 1, 2])
    steps = clf._optimizer.state_dict()["step"]
    before = clf.coefs_[0].copy()
    clf.set_params(alpha=0.5).partial_fit(X, y)
    assert clf._net().alpha == 0.5 and not np.array_equal(clf.coefs_[0], before)
    assert clf._optimizer.state_dict()["step"] == 2 * steps  # Adam continued, not restarted
