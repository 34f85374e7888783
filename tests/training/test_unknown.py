"""The unknown-photo detector: fitting, threshold, scores, and its plain-data form."""

from __future__ import annotations

import numpy as np
import pytest

from flowerid.errors import CheckpointError, UsageError
from flowerid.model.unknown import UnknownDetector, gen_score
from flowerid.training.unknown import class_means, fit_unknown, prototypes, threshold_at

C, D = 4, 16


def _blobs(rng: np.random.Generator, n: int, centres: np.ndarray, spread: float = 0.3):
    labels = rng.integers(0, len(centres), n)
    return centres[labels] + spread * rng.standard_normal((n, centres.shape[1])), labels


@pytest.fixture
def world():
    rng = np.random.default_rng(0)
    centres = 3.0 * rng.standard_normal((C, D))
    x_tr, y_tr = _blobs(rng, 400, centres)
    x_va, y_va = _blobs(rng, 200, centres)
    w = centres.T / 3.0  # a head that points at each centre: logits favour the right class
    head = lambda x: x @ w  # noqa: E731
    others = 3.0 * rng.standard_normal((100, D))  # "not one of my categories": elsewhere in feature space
    return x_tr, y_tr, x_va, y_va, head, others


def test_threshold_accepts_the_asked_share_of_valid(world):
    x_tr, y_tr, x_va, _, head, _ = world
    for rate in (0.9, 0.95, 0.99):
        det = fit_unknown(x_tr, y_tr, x_va, head(x_va), C, accept_rate=rate)
        accepted = det.known(det.score(x_va, head(x_va))).mean()
        assert accepted == pytest.approx(rate, abs=0.01)
        assert det.accept_rate == rate


def test_photos_of_other_things_score_higher_and_are_rejected(world):
    x_tr, y_tr, x_va, _, head, others = world
    det = fit_unknown(x_tr, y_tr, x_va, head(x_va), C)
    s_known, s_other = det.score(x_va, head(x_va)), det.score(others, head(others))
    assert np.median(s_other) > np.quantile(s_known, 0.99)
    assert det.known(s_other).mean() < 0.1


def test_far_counts_only_beyond_its_knee(world):
    """On valid photos far rarely passes its knee, so the ranking there is near's."""
    x_tr, y_tr, x_va, _, head, _ = world
    det = fit_unknown(x_tr, y_tr, x_va, head(x_va), C)
    z_near = (det.near(head(x_va)) - det.near_mean) / det.near_std
    same = np.isclose(det.score(x_va, head(x_va)), z_near)
    assert 0.97 <= same.mean() < 1.0


def test_gen_is_high_when_no_class_stands_out():
    peaked = np.array([[10.0, 0, 0, 0]])
    flat = np.zeros((1, 4))
    assert gen_score(flat)[0] > gen_score(peaked)[0]
    # top-M: with more classes than GEN_TOP only the largest probabilities count
    many = np.zeros((1, 50))
    assert np.isfinite(gen_score(many)).all()


def test_round_trip_through_plain_state_scores_the_same(world):
    x_tr, y_tr, x_va, _, head, others = world
    det = fit_unknown(x_tr, y_tr, x_va, head(x_va), C, negatives=others[:50])
    state = det.to_state()
    assert all(isinstance(v, np.ndarray | float | str) for v in state.values())
    again = UnknownDetector.from_state(state, C, D)
    np.testing.assert_allclose(again.score(others, head(others)), det.score(others, head(others)), rtol=1e-6)
    assert again.threshold == det.threshold


def test_torch_tensors_load_too(world):
    torch = pytest.importorskip("torch")
    x_tr, y_tr, x_va, _, head, _ = world
    det = fit_unknown(x_tr, y_tr, x_va, head(x_va), C)
    state = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in det.to_state().items()}
    assert UnknownDetector.from_state(state, C, D).threshold == det.threshold


@pytest.mark.parametrize(
    "damage",
    [
        lambda s: s.pop("means"),
        lambda s: s.update(means=s["means"][:, :3]),
        lambda s: s.update(near_std=0.0),
        lambda s: s.update(threshold=float("nan")),
        lambda s: s.update(negatives=np.zeros((2, 3), np.float32)),
    ],
)
def test_damaged_state_is_a_checkpoint_error(world, damage):
    x_tr, y_tr, x_va, _, head, _ = world
    state = fit_unknown(x_tr, y_tr, x_va, head(x_va), C).to_state()
    damage(state)
    with pytest.raises(CheckpointError, match="unknown-photo"):
        UnknownDetector.from_state(state, C, D)


def test_a_method_from_a_newer_flowerid_is_named(world):
    x_tr, y_tr, x_va, _, head, _ = world
    state = {**fit_unknown(x_tr, y_tr, x_va, head(x_va), C).to_state(), "method": "something-new"}
    with pytest.raises(CheckpointError, match="something-new"):
        UnknownDetector.from_state(state, C, D)


def test_negatives_sharpen_the_score_near_them(world):
    x_tr, y_tr, x_va, _, head, others = world
    plain = fit_unknown(x_tr, y_tr, x_va, head(x_va), C)
    sharp = fit_unknown(x_tr, y_tr, x_va, head(x_va), C, negatives=others[:50])
    near_negatives = others[:50] + 0.05
    assert (
        sharp.score(near_negatives, head(near_negatives)) >= plain.score(near_negatives, head(near_negatives))
    ).all()
    assert len(sharp.negatives) == 50 and len(plain.negatives) == 0


def test_prototypes_are_few_unit_vectors():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, D))
    p = prototypes(x, k=8)
    assert p.shape == (8, D)
    np.testing.assert_allclose(np.linalg.norm(p, axis=1), 1.0, rtol=1e-5)


def test_class_means_need_every_class():
    x = np.ones((3, D))
    with pytest.raises(UsageError, match="every category"):
        class_means(x, np.array([0, 0, 1]), 3)


@pytest.mark.parametrize("rate", [0.2, 1.5, float("nan")])
def test_accept_rate_out_of_range_says_how_to_fix(rate):
    with pytest.raises(UsageError, match="accept-rate"):
        threshold_at(np.zeros(5), rate)


def test_threshold_needs_valid_photos():
    with pytest.raises(UsageError):
        threshold_at(np.zeros(0), 0.95)
