"""Blend methods on constructed OOF data where the right answer is known."""

import numpy as np
import pytest

from ensemble import blenders


def _dirichlet(rng, n, c, alpha=0.5):
    return rng.dirichlet(np.full(c, alpha), size=n)


@pytest.fixture(scope="module")
def mixture():
    # Labels are drawn from 0.75 * A + 0.25 * B; a proper scoring rule (log-loss) is minimised by
    # exactly that mixture, so a weight-fitting method must find weights near (0.75, 0.25, 0).
    rng = np.random.default_rng(0)
    n, c = 20000, 5
    a, b, noise = _dirichlet(rng, n, c), _dirichlet(rng, n, c), _dirichlet(rng, n, c)
    truth = 0.75 * a + 0.25 * b
    y = (truth.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return np.stack([a, b, noise]), y


def test_caruana_recovers_the_generating_mixture(mixture):
    oof, y = mixture
    w = blenders.caruana_weights(oof, y, iterations=40)
    assert w.sum() == pytest.approx(1.0)
    assert w[0] == pytest.approx(0.75, abs=0.06) and w[1] == pytest.approx(0.25, abs=0.06) and w[2] <= 0.03


def test_optimized_weights_recover_the_generating_mixture(mixture):
    oof, y = mixture
    w = blenders.optimized_weights(oof, y)
    assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
    np.testing.assert_allclose(w, [0.75, 0.25, 0.0], atol=0.03)


def test_bagged_caruana_drops_the_noise_member_and_is_seeded(mixture):
    oof, y = mixture
    w = blenders.bagged_caruana_weights(oof, y, iterations=20, bags=10, bag_fraction=0.67, seed=3)
    assert w.sum() == pytest.approx(1.0) and w[2] < 0.1 and w[0] > w[1] > w[2]
    np.testing.assert_array_equal(w, blenders.bagged_caruana_weights(oof, y, iterations=20, bags=10, bag_fraction=0.67, seed=3))


@pytest.fixture(scope="module")
def complementary():
    # Three members, each sees the truth through its own independent noise: any sensible blend
    # is more accurate than every member alone.
    rng = np.random.default_rng(1)
    n, c = 3000, 4
    y = rng.integers(0, c, n)
    onehot = np.eye(c)[y]
    members = [blenders._normalise(np.exp(1.2 * onehot + rng.normal(0, 1.0, (n, c)))) for _ in range(3)]
    return np.stack(members), y, np.arange(n) % 5


@pytest.mark.parametrize("method", blenders.METHODS)
def test_every_method_beats_its_best_input_cross_validated(complementary, method):
    oof, y, folds = complementary
    best_member = max((m.argmax(1) == y).mean() for m in oof)
    cv = blenders.cross_validate(method, oof, y, folds, iterations=20, bags=5)
    assert cv.shape == oof.shape[1:] and np.allclose(cv.sum(axis=1), 1.0) and (cv >= 0).all()
    assert (cv.argmax(1) == y).mean() > best_member + 0.03


LABEL_FITTED = ("caruana", "optimize", "stacking")
LABEL_FREE = tuple(m for m in blenders.METHODS if m not in LABEL_FITTED)


def test_every_method_is_either_fitted_on_labels_or_label_free():
    assert LABEL_FREE == ("mean", "rank", "geometric") and set(LABEL_FITTED) <= set(blenders.METHODS)


@pytest.mark.parametrize("method", LABEL_FITTED)
def test_cross_validation_never_sees_the_labels_of_the_fold_it_predicts(complementary, method):
    oof, y, folds = complementary
    scrambled = y.copy()
    held = folds == 2
    scrambled[held] = oof[0, held].argmax(axis=1)  # fold 2 relabelled as member 0 predicts it: a fit that read them would favour member 0
    a = blenders.cross_validate(method, oof, y, folds, iterations=10, bags=3)
    b = blenders.cross_validate(method, oof, scrambled, folds, iterations=10, bags=3)
    np.testing.assert_array_equal(a[held], b[held])  # fold 2's predictions ignore fold 2's labels
    # not vacuous: the other folds' blends, fitted on fold 2's rows, move; and so would fold 2's own
    # predictions had its blend been fitted on all rows
    assert not np.array_equal(a[~held], b[~held])
    leaked = [blenders.fit(method, oof, labels, iterations=10, bags=3).combine(oof[:, held]) for labels in (y, scrambled)]
    assert not np.array_equal(*leaked)


@pytest.mark.parametrize("method", LABEL_FREE)
def test_label_free_methods_do_not_depend_on_labels_at_all(complementary, method):
    # mean, rank and geometric read no labels, so fold-wise label corruption cannot test them: their
    # blends and cross-validated predictions must be the same for any labels, here every label permuted
    oof, y, folds = complementary
    permuted = np.random.default_rng(5).permutation(y)
    assert (permuted != y).mean() > 0.5
    a, b = blenders.fit(method, oof, y), blenders.fit(method, oof, permuted)
    np.testing.assert_array_equal(a.combine(oof), b.combine(oof))
    assert a.weights is None and b.weights is None or np.array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(blenders.cross_validate(method, oof, y, folds), blenders.cross_validate(method, oof, permuted, folds))


def test_rank_and_geometric_means_by_hand():
    p = np.array([[[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], [[0.2, 0.2, 0.6], [0.5, 0.4, 0.1]]])  # (members 2, rows 2, classes 3)
    geo = blenders.fit("geometric", p, np.array([0, 2])).combine(p)
    by_hand = np.sqrt(p[0] * p[1])
    np.testing.assert_allclose(geo, by_hand / by_hand.sum(axis=1, keepdims=True))
    rank = blenders.fit("rank", p, np.array([0, 2])).combine(p)
    # column ranks over the 2 rows, / 2: member 0 -> [[1, .5, .5], [.5, 1, 1]], member 1 -> [[.5, .5, 1], [1, 1, .5]]
    mean_rank = np.array([[0.75, 0.5, 0.75], [0.75, 1.0, 0.75]])
    np.testing.assert_allclose(rank, mean_rank / mean_rank.sum(axis=1, keepdims=True))
    cubed = blenders._normalise(p**3)  # rank averaging ignores any monotone recalibration
    np.testing.assert_allclose(blenders.fit("rank", cubed, np.array([0, 2])).combine(cubed), rank)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown blend method 'median'"):
        blenders.fit("median", np.ones((1, 2, 2)) / 2, np.array([0, 1]))


def test_bagged_caruana_with_two_members_selects_by_the_data():
    """A bag of one member selects it whatever the data say: with two members and bag_fraction 0.5
    the bags hold both, so the informative member wins over a noise member (each bag drawing one
    member gave weights that only counted the draws)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=400)
    good = np.full((400, 4), 0.1)
    good[np.arange(400), y] = 0.7
    noise = rng.dirichlet(np.ones(4), size=400)
    for order in ([good, noise], [noise, good]):
        w = blenders.bagged_caruana_weights(np.stack(order), y, iterations=20, bags=20, bag_fraction=0.5, seed=0)
        assert w[0 if order[0] is good else 1] > 0.9, w
