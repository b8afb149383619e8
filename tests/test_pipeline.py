"""A Pipeline ending in a skorch net as the tuner's estimator (issue 12 #10).

What ``GridSearchCV(Pipeline(...))`` users rely on: the preprocessing is fit per fold on
the fold's training rows only, the refit fits the whole pipeline on all rows, and
``best_estimator_`` is a Pipeline.
"""
import numpy as np
import pandas as pd
import pytest
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from test_tuner import tiny_classifier, tiny_tuner


class RecordingScaler(StandardScaler):
    """A StandardScaler that records the rows and statistics of every fit."""

    fits: list = []

    def fit(self, X, y=None, sample_weight=None):
        super().fit(X, y, sample_weight=sample_weight)
        type(self).fits.append((len(X), self.mean_.copy(), self.scale_.copy()))
        return self


@pytest.fixture(scope="module")
def data():
    from sklearn.datasets import load_digits

    X, y = load_digits(n_class=4, return_X_y=True)
    # Shifted and unscaled, so that scaling on other rows would give other statistics.
    return (X[:120] + 3.0).astype(np.float32), y[:120]


def test_preprocessing_is_fit_per_fold_and_the_refit_on_all_rows(data):
    X, y = data
    RecordingScaler.fits = []
    cv = KFold(3, shuffle=True, random_state=0)
    tuner = tiny_tuner(Pipeline([("scale", RecordingScaler()), ("net", tiny_classifier())]),
                       cv=cv).fit(X, y)
    splits = list(cv.split(X, y))
    # One fit per fold, on that fold's training rows only, then one on all rows (refit).
    assert len(RecordingScaler.fits) == len(splits) + 1
    for (train, _), (n_rows, mean, scale) in zip(splits, RecordingScaler.fits):
        truth = StandardScaler().fit(X[train])
        assert n_rows == len(train)
        np.testing.assert_allclose(mean, truth.mean_, rtol=1e-6)
        np.testing.assert_allclose(scale, truth.scale_, rtol=1e-6)
    best = tuner.best_estimator_
    assert isinstance(best, Pipeline) and [name for name, _ in best.steps] == ["scale", "net"]
    np.testing.assert_allclose(best.named_steps["scale"].mean_, X.mean(axis=0), rtol=1e-5)
    # The refit net has the learned values built in, and the pipeline is scaler -> net.
    net = best.named_steps["net"]
    for key, value in tuner.best_params_["l1"].items():
        np.testing.assert_array_equal(net.learned_values["l1"][key], value)
    scaled = StandardScaler().fit_transform(X).astype(np.float32)
    np.testing.assert_allclose(tuner.predict_proba(X), net.predict_proba(scaled), rtol=1e-5)
    np.testing.assert_array_equal(tuner.predict(X), net.predict(scaled))


def test_chains_run_on_the_transformed_rows(data):
    """A stateless transform in a Pipeline is the same search as on transformed X."""
    X, y = data
    double = FunctionTransformer(lambda Z: 2.0 * Z)
    piped = tiny_tuner(make_pipeline(double, tiny_classifier()), refit=False).fit(X, y)
    plain = tiny_tuner(tiny_classifier(), refit=False).fit(2.0 * X, y)
    np.testing.assert_array_equal(piped.cv_results_["mean_test_score"],
                                  plain.cv_results_["mean_test_score"])
    for key, value in plain.hyperparams_["l1"].items():
        np.testing.assert_array_equal(piped.hyperparams_["l1"][key], value)


def test_an_imputing_pipeline_takes_nan(data):
    """NaN reaches the pipeline's imputer (a bare net refuses it); a float64 DataFrame
    goes to the steps as given (columns kept) and the net gets its own dtype."""
    X, y = data
    X = pd.DataFrame(X.astype(np.float64), columns=[f"f{i}" for i in range(X.shape[1])])
    X.iloc[::7, 3] = np.nan
    pipe = make_pipeline(SimpleImputer(), StandardScaler(), tiny_classifier())
    tuner = tiny_tuner(pipe, return_train_score=True).fit(X, y)
    assert list(tuner.feature_names_in_) == list(X.columns)
    assert list(tuner.best_estimator_[0].feature_names_in_) == list(X.columns)
    assert tuner.predict(X).shape == (len(X),)
    assert np.isfinite(tuner.best_score_) and np.isfinite(tuner.cv_results_["mean_train_score"]).all()


def test_a_pipeline_not_ending_in_a_skorch_net_is_refused_in_one_line(data):
    X, y = data
    tuner = tiny_tuner(Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression())]))
    with pytest.raises(TypeError, match="last step 'clf' is a LogisticRegression") as err:
        tuner.fit(X, y)
    assert len(str(err.value)) < 200 and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="refit='ensemble'"):
        tiny_tuner(make_pipeline(StandardScaler(), tiny_classifier()),
                   refit="ensemble").fit(X, y)
