"""Blend methods on constructed OOF data where the right answer is known."""

import numpy as np
import pytest

from ensemble.blending import blenders


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


# ---- Caruana pinned exactly (issue 29: an iteration count halved or off by one went unseen) ----

TRUTH = {  # two rows, classes 0 and 1, labels y = [0, 1]; per member, its probability of each row's truth
    "A": ("0.9", "0.3"),  # right and sure on row 0, wrong on row 1
    "B": ("0.3", "0.9"),  # A mirrored: every choice between A and B after an equal number of each is an exact tie
    "C": ("0.5", "0.5"),  # uninformative: never the best addition
}
Y2 = np.array([0, 1])


def _two_row_oof(truth: dict[str, tuple[str, str]]) -> np.ndarray:
    """``(members, 2, 2)`` OOF of ``truth`` (labels :data:`Y2`): each row's other class takes the rest."""
    rows = []
    for p0, p1 in truth.values():
        rows.append([[float(p0), 1 - float(p0)], [1 - float(p1), float(p1)]])
    return np.array(rows)


def _greedy_by_hand(truth: dict[str, tuple[str, str]], picks: int) -> list[int]:
    """Pick counts of greedy selection with replacement, in exact rational arithmetic: each pick adds the
    member whose running average gives the truth the largest product of probabilities over the rows
    (the lowest mean log-loss); an exact tie goes to the earlier member. ``picks`` picks in all."""
    from fractions import Fraction

    members = [tuple(Fraction(p) for p in row) for row in truth.values()]
    counts, total = [0] * len(members), [Fraction(0)] * 2
    for step in range(picks):
        products = [(total[0] + p0) * (total[1] + p1) / (step + 1) ** 2 for p0, p1 in members]
        best = 0
        for m in range(1, len(members)):
            if products[m] > products[best]:  # strictly better only: a tie keeps the earlier member
                best = m
        counts[best] += 1
        total = [t + p for t, p in zip(total, members[best])]
    return counts


def test_caruana_weights_are_the_exact_greedy_selection_with_its_iteration_count_and_tie_rule():
    oof = _two_row_oof(TRUTH)
    # by hand: A and B tie first (A, the earlier), then B (0.6 and 0.6 beat A alone), then a tie again
    # (A), then B, ...: A, B, A, B, A for 4 iterations, i.e. 5 picks (the best single member + 4 additions)
    assert _greedy_by_hand(TRUTH, 5) == [3, 2, 0]
    np.testing.assert_array_equal(blenders.caruana_weights(oof, Y2, iterations=4), [3 / 5, 2 / 5, 0.0])
    np.testing.assert_array_equal(blenders.caruana_weights(oof, Y2, iterations=5), [3 / 6, 3 / 6, 0.0])
    np.testing.assert_array_equal(blenders.caruana_weights(oof, Y2, iterations=0), [1.0, 0.0, 0.0])  # the single best; the tie to A
    # unbagged through fit, as `ens blend --method caruana` with [blend] bags = 0 calls it
    fitted = blenders.fit("caruana", oof, Y2, iterations=4, bags=0)
    np.testing.assert_array_equal(fitted.weights, [3 / 5, 2 / 5, 0.0])
    np.testing.assert_allclose(fitted.combine(oof), (3 * oof[0] + 2 * oof[1]) / 5, atol=1e-15)
    # an uneven problem too: every iteration count agrees with the hand computation
    uneven = {"A": ("0.85", "0.2"), "B": ("0.25", "0.75"), "C": ("0.5", "0.45")}  # C first, then B and A by turns
    oof = _two_row_oof(uneven)
    seen = set()
    for iterations in range(13):
        expected = _greedy_by_hand(uneven, iterations + 1)
        seen.add(tuple(expected))
        np.testing.assert_array_equal(blenders.caruana_weights(oof, Y2, iterations=iterations), np.array(expected) / (iterations + 1), err_msg=f"{iterations=}")
    assert len({tuple(np.array(c) / sum(c)) for c in seen}) > 5  # not one member picked every time: the counts tell iteration counts apart


def test_bagged_caruana_is_the_mean_over_bags_of_exact_selections_on_seeded_subsets():
    uneven = {"A": ("0.85", "0.2"), "B": ("0.25", "0.75"), "C": ("0.5", "0.45"), "D": ("0.6", "0.5")}
    oof = _two_row_oof(uneven)
    names = list(uneven)
    rng = np.random.default_rng(4)
    expected = np.zeros(4)
    for _ in range(6):  # bags of ceil(0.5 * 4) = 2 members drawn as the blender draws them
        subset = np.sort(rng.choice(4, size=2, replace=False))
        counts = _greedy_by_hand({names[k]: uneven[names[k]] for k in subset}, 7 + 1)
        expected[subset] += np.array(counts) / 8
    assert np.count_nonzero(expected) >= 3 and (expected % 1 != 0).any()  # the bags differ, and some mix their members
    np.testing.assert_allclose(blenders.bagged_caruana_weights(oof, Y2, iterations=7, bags=6, bag_fraction=0.5, seed=4), expected / 6, atol=1e-15)
