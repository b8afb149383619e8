"""sgld_tuner.relevance on fitted tuners (issue 25, items 7a-7c): the resolved
granularity is read, a Pipeline's fitted preprocessing names the net's input columns, and
the strengths come back as a pandas Series indexed by feature name."""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from skorch import NeuralNetClassifier
from sklearn.compose import ColumnTransformer
from sklearn.datasets import make_classification
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from sgld_tuner import SGLDHyperTuner
from sgld_tuner.hyperparams import PerWeightL1, WeightDecay
from sgld_tuner import relevance
from sgld_tuner.relevance import feature_relevance, learned_values

COLOURS = np.array(["red", "green", "blue", "grey"])


class TinyMLP(torch.nn.Module):
    def __init__(self, n_in=6):
        super().__init__()
        self.hidden = torch.nn.Linear(n_in, 5)
        self.out = torch.nn.Linear(5, 2)

    def forward(self, X):
        return self.out(torch.tanh(self.hidden(X)))


def tiny_net(n_in):
    return NeuralNetClassifier(TinyMLP, module__n_in=n_in, criterion=torch.nn.CrossEntropyLoss,
                               lr=0.1, max_epochs=10, batch_size=32, train_split=None,
                               verbose=0)


def tiny_tuner(estimator, **kwargs):
    # PerWeightL1() keeps its default granularity="auto" (per feature on an MLP).
    return SGLDHyperTuner(estimator, {"l1": PerWeightL1()}, n_outer=2, cv=2,
                          random_state=0, **kwargs)


def numeric_data(n=60, n_features=6):
    X, y = make_classification(n, n_features, n_informative=3, random_state=0)
    return X.astype(np.float32), y


def mixed_frame(n=60):
    """6 numeric columns and one categorical column of 4 levels: 7 columns in, 10 out."""
    X, y = numeric_data(n)
    frame = pd.DataFrame(X, columns=[f"num{i}" for i in range(X.shape[1])])
    frame.insert(2, "colour", COLOURS[np.arange(n) % len(COLOURS)])
    return frame, y


def one_hot_pipeline(*extra_steps):
    encode = ColumnTransformer([("onehot", OneHotEncoder(), ["colour"])],
                               remainder="passthrough")
    return make_pipeline(encode, *extra_steps, tiny_net(10))


@pytest.fixture(scope="module")
def bare():
    X, y = numeric_data()
    return tiny_tuner(tiny_net(X.shape[1])).fit(X, y)


@pytest.fixture(scope="module")
def piped():
    frame, y = mixed_frame()
    return tiny_tuner(one_hot_pipeline()).fit(frame, y)


def test_auto_granularity_resolved_to_feature_is_found(bare):
    """7a: PerWeightL1() is declared with granularity='auto'; fit resolved it per feature."""
    assert bare.granularities_ == {"l1": "feature"}
    assert learned_values(bare) is bare.hyperparams_["l1"]
    table = feature_relevance(bare)
    (learned,) = bare.hyperparams_["l1"].values()
    assert len(table) == len(learned) == 6
    np.testing.assert_allclose(table["strength"], np.sort(learned))


def test_resolved_granularities_take_precedence_over_the_declared_ones():
    tuner = SimpleNamespace(
        hyperparams={"l1": PerWeightL1(), "wd": WeightDecay(granularity="feature")},
        granularities_={"l1": "feature", "wd": "weight"},
        hyperparams_={"l1": {"w": np.array([0.2, 0.1])}, "wd": {"w": np.ones((3, 2))}})
    assert learned_values(tuner) is tuner.hyperparams_["l1"]
    tuner.granularities_ = {"l1": "weight", "wd": "weight"}
    with pytest.raises(ValueError, match="0 hyperparameters with granularity='feature'"):
        feature_relevance(tuner)


def test_pipeline_names_come_from_the_fitted_preprocessing(piped):
    """7b: 7 raw columns, one-hot encoded to the 10 columns the net takes (as float32)."""
    assert len(piped.feature_names_in_) == 7
    expected = list(piped.best_estimator_[:-1].get_feature_names_out())
    assert len(expected) == 10 and "onehot__colour_red" in expected
    table = feature_relevance(piped, name="l1")   # was: "feature_names has 7 entries for 10"
    assert sorted(table["feature"]) == sorted(expected)
    strengths = relevance.feature_strengths(piped)
    assert list(strengths.index) == expected
    (learned,) = piped.hyperparams_["l1"].values()
    np.testing.assert_array_equal(strengths.to_numpy(), learned)
    assert relevance.feature_names_out(piped.best_estimator_[:-1]) == expected


def test_a_step_that_cannot_name_its_columns_is_named():
    frame, y = mixed_frame()
    # A FunctionTransformer without feature_names_out has no get_feature_names_out.
    tuner = tiny_tuner(one_hot_pipeline(FunctionTransformer(np.asarray))).fit(frame, y)
    with pytest.raises(ValueError, match=r"step 'functiontransformer' \(FunctionTransformer\)"
                                         r" has no get_feature_names_out.*feature_names="):
        feature_relevance(tuner)
    names = [f"c{i}" for i in range(10)]
    assert list(relevance.feature_strengths(tuner, names).index) == names


def test_a_step_whose_names_fail_is_named_with_the_cause():
    frame, _ = mixed_frame()
    # Fitted on a numpy array, so the scaler has no input names; given other names, fails.
    pre = make_pipeline(StandardScaler()).fit(frame.drop(columns="colour").to_numpy())
    with pytest.raises(ValueError, match=r"step 'standardscaler' \(StandardScaler\) cannot "
                                         r"give its output feature names"):
        relevance.feature_names_out(pre, ["a", "b"])


def test_pipeline_without_refit_asks_for_names():
    frame, y = mixed_frame()
    tuner = tiny_tuner(one_hot_pipeline(), refit=False).fit(frame, y)
    with pytest.raises(ValueError, match=r"no best_estimator_ \(refit=False\).*feature_names="):
        relevance.feature_strengths(tuner)
    assert len(relevance.feature_strengths(tuner, [f"c{i}" for i in range(10)])) == 10


def test_feature_strengths_is_a_series_indexed_by_feature_name(bare):
    """7c: a named pandas object, in the net's input order; the table is unchanged."""
    X, y = numeric_data()
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    tuner = tiny_tuner(tiny_net(X.shape[1])).fit(frame, y)
    strengths = relevance.feature_strengths(tuner)
    assert isinstance(strengths, pd.Series)
    assert strengths.name == "l1" and strengths.index.name == "feature"
    assert list(strengths.index) == list(frame.columns)
    (learned,) = tuner.hyperparams_["l1"].values()
    np.testing.assert_array_equal(strengths.to_numpy(), learned)
    assert strengths["f3"] == learned[3]
    table = feature_relevance(tuner)
    assert list(table.columns) == ["feature", "strength", "rank"]
    pd.testing.assert_series_equal(
        table.set_index("feature")["strength"].sort_index(),
        strengths.rename("strength").sort_index())
    # Without names: x0, x1, ...; a bare array has no hyperparameter name.
    assert list(relevance.feature_strengths(bare).index) == [f"x{i}" for i in range(6)]
    assert relevance.feature_strengths(np.array([0.5, 0.1])).name == "strength"


def test_an_unfitted_tuner_and_values_by_name_are_named(bare):
    """Not a TypeError about float() (values by name), nor the tuner itself handed back
    as its values (unfitted)."""
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError, match="not fitted yet"):
        learned_values(tiny_tuner(tiny_net(6)))
    with pytest.raises(NotFittedError, match="not fitted yet"):
        relevance.feature_strengths(tiny_tuner(tiny_net(6)))
    with pytest.raises(ValueError, match=r"by name \(as best_params_ holds them, \['l1', "
                                         r"'lr'\]\): pass name="):
        feature_relevance(bare.best_params_)
    assert len(feature_relevance(bare.best_params_, name="l1")) == 6
    with pytest.raises(ValueError, match=r"no hyperparameter 'zz'; the tuner's: \['l1'\]"):
        learned_values(bare, "zz")
