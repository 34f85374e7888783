"""Setting a head's rows for new categories (numpy, synthetic Gaussians): old rows kept, new ones learnt, honest."""

from __future__ import annotations

import numpy as np
import pytest

from flowerid._numeric import softmax
from flowerid.errors import UsageError
from flowerid.model import teach
from flowerid.model.class_stats import ClassStats
from flowerid.model.teach import METHODS, fit_rows, known_offsets, old_widen

D, C = 12, 4


def _world(seed: int = 0):
    """C old categories and one new one, as Gaussians around well-separated means with one shared covariance."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(C + 1, D)) * 3
    mix = rng.normal(size=(D, D)) * 0.4

    def draw(c: int, n: int) -> np.ndarray:
        return means[c] + rng.normal(size=(n, D)) @ mix

    x = np.vstack([draw(c, 200) for c in range(C)])
    y = np.repeat(np.arange(C), 200)
    # An old head: least squares onto one-hot targets, scaled: a plain linear classifier of the old categories.
    xb = np.hstack([x, np.ones((len(x), 1))])
    sol = np.linalg.lstsq(xb, np.eye(C)[y] * 8, rcond=None)[0]
    return draw, ClassStats.fit(x, y, C, x, rank=6), sol[:-1].T, sol[-1]


def _taught(k: int, method: str = "refit", seed: int = 0):
    draw, stats, w, b = _world(seed)
    photos = draw(C, k)
    stats, _ = stats.with_photos(C, photos, photos, None)
    rows = fit_rows(w, b, stats, [C], method, photos={C: photos})
    return draw, w, b, rows


@pytest.mark.parametrize("method", METHODS)
def test_old_rows_are_kept_and_the_new_category_is_learnt(method):
    draw, w, b, rows = _taught(10, method)
    np.testing.assert_array_equal(rows.weight[:C], w)
    np.testing.assert_array_equal(rows.bias[:C], b)
    new = draw(C, 300)
    assert ((new @ rows.weight.T + rows.bias).argmax(1) == C).mean() > 0.9
    old = np.vstack([draw(c, 100) for c in range(C)])
    y = np.repeat(np.arange(C), 100)
    before = ((old @ w.T + b).argmax(1) == y).mean()
    after = ((old @ rows.weight.T + rows.bias).argmax(1) == y).mean()
    if method != "imprint":  # imprinting's row is not scaled against the old ones: it wins old photos too
        assert before - after < 0.05


def test_old_categories_are_drawn_wider_only_when_the_new_ones_bring_many_photos():
    """x1 up to WIDEN_FROM photos, WIDEN_MAX from WIDEN_TO, growing between; the draws use it."""
    assert old_widen(1) == old_widen(teach.WIDEN_FROM) == 1.0
    assert old_widen(teach.WIDEN_TO) == old_widen(1000) == teach.WIDEN_MAX
    between = [old_widen(k) for k in range(teach.WIDEN_FROM, teach.WIDEN_TO + 1)]
    assert all(a < b for a, b in zip(between, between[1:], strict=False))
    draw, stats, _, _ = _world()
    q = teach._span(stats)
    for k in (5, 30, 200):
        photos = draw(C, k)
        grown, _ = stats.with_photos(C, photos, photos, None)
        _, y, _, spread = teach._draws(grown, q, {C}, np.random.default_rng(0), {C: photos})
        old = y < C
        np.testing.assert_allclose(spread[old], old_widen(k) * np.sqrt(1 + 1 / grown.counts[y[old]]))


def test_one_photo_gives_humbler_answers_than_fifty():
    """The spread a mean from few photos deserves: no near-certain answers from one photo."""
    conf = {}
    for k in (1, 50):
        draw, _, _, rows = _taught(k)
        new = draw(C, 300)
        conf[k] = softmax(new @ rows.weight.T + rows.bias)[:, C].mean()
    assert conf[1] < conf[50]


def test_an_added_category_gets_back_the_humility_few_photos_cost_and_old_offsets_stay():
    """known_offsets: the median gap between the new category's draws' score and the others', never below 0;
    earlier offsets are kept (and taken out of the others' medians)."""
    from flowerid.model.unknown import gen_score

    draw, stats, w, b = _world()
    photos = draw(C, 3)
    stats, _ = stats.with_photos(C, photos, photos, None)
    rows = fit_rows(w, b, stats, [C], "refit", photos={C: photos})
    earlier = np.array([0.0, 0.3, 0.0, 0.0])  # category 1 was added before with its own offset

    def humbler_when_new(logits: np.ndarray) -> np.ndarray:  # a score 2 higher where the new row wins
        return 2.0 * (logits.argmax(1) == C) + 0.3 * (logits.argmax(1) == 1)

    out = known_offsets(rows, stats, humbler_when_new, earlier, [C])
    assert out.shape == (C + 1,) and out[C] == pytest.approx(2.0)
    np.testing.assert_array_equal(out[:C], earlier)
    # Here the refitted row is surer than the least-squares old head (lower entropy): nothing to take back.
    assert known_offsets(rows, stats, gen_score, earlier, [C])[C] == 0.0


def test_an_unknown_method_is_a_usage_error():
    _, stats, w, b = _world()
    with pytest.raises(UsageError, match="choose one of"):
        fit_rows(w, b, stats, [], "magic")


def test_logits_drawn_directly_match_logits_of_drawn_features():
    """known_offsets draws logits without the (N, D) features; both must be the same Gaussian."""
    _, stats, w, b = _world()
    labels = np.repeat(np.arange(C), 20000)
    direct = stats.sample_logits(labels, w, b, np.random.default_rng(1))
    via = stats.sample(labels, np.random.default_rng(2)) @ w.T + b
    for c in range(C):
        a, v = direct[labels == c], via[labels == c]
        scale = v.std(axis=0).max()
        assert np.abs(a.mean(axis=0) - v.mean(axis=0)).max() < 0.05 * scale
        assert np.abs(np.cov(a.T) - np.cov(v.T)).max() < 0.05 * scale**2


def test_held_out_folds_need_three_photos_and_stop_at_five():
    assert teach.held_out_folds([1, 2]) == 0
    assert teach.held_out_folds([3, 1]) == 3
    assert teach.held_out_folds([4, 40]) == teach.HELD_OUT_FOLDS == 5


def _checkpoint_with_detector(seed: int = 0):
    """A linear head over _world's old categories, its statistics and an unknown-photo detector fitted
    as training fits it (class means from training photos, threshold from valid ones)."""
    from flowerid.model.head import HeadConfig
    from flowerid.training.unknown import fit_unknown

    draw, stats, w, b = _world(seed)
    x_tr = np.vstack([draw(c, 200) for c in range(C)])
    x_va = np.vstack([draw(c, 100) for c in range(C)])
    ckpt = {
        "categories": [str(c) for c in range(C)],
        "names": [None] * C,
        "head": {
            "config": HeadConfig(D, C).to_dict(),
            "state_dict": {"0.weight": w.astype(np.float32), "0.bias": b.astype(np.float32)},
        },
        "class_stats": stats.to_state(),
        "unknown": fit_unknown(x_tr, np.repeat(np.arange(C), 200), x_va, x_va @ w.T + b, C).to_state(),
    }
    return draw, ckpt


def test_photos_of_an_added_category_it_was_not_taught_are_called_known_about_as_often_as_old_ones(monkeypatch):
    """The held-out lift: a new category whose photos spread wider than the shared covariance says gets
    humbler answers on photos it has not seen; scored on held-out folds of its own photos, the lift puts
    them back toward the accept rate the threshold gives the old categories, never by more than LIFT_MAX.
    The old categories' photos are called as before."""
    from flowerid.model import add as add_mod
    from flowerid.model.add import Group, extend_checkpoint
    from flowerid.model.head import HeadConfig
    from flowerid.model.predictor import NumpyHead
    from flowerid.model.unknown import UnknownDetector

    draw, ckpt = _checkpoint_with_detector()
    centre = draw(C, 1)[0]

    def wide(n: int) -> np.ndarray:  # the new species: twice the old ones' spread (a difference of two draws is sqrt 2)
        return centre + 2.0 / np.sqrt(2.0) * (draw(C, n) - draw(C, n))

    group = [(Group("new", None, [], False), wide(8))]
    fresh = wide(400)

    def known_share(out: dict, x: np.ndarray) -> float:
        logits = NumpyHead(HeadConfig.from_dict(out["head"]["config"]), out["head"]["state_dict"])(x)
        det = UnknownDetector.of_checkpoint(out)
        return float(det.known(det.score(x, logits)).mean())

    lifted = extend_checkpoint(ckpt, group)
    monkeypatch.setattr(add_mod, "_held_out_lift", lambda *a, **k: (0.0, []))
    plain = extend_checkpoint(ckpt, group)
    old = np.vstack([draw(c, 100) for c in range(C)])
    assert known_share(plain, fresh) + 0.02 < known_share(lifted, fresh)
    lift = UnknownDetector.of_checkpoint(lifted).offsets[C] - UnknownDetector.of_checkpoint(plain).offsets[C]
    assert 0 < lift <= teach.LIFT_MAX
    assert abs(known_share(lifted, old) - known_share(plain, old)) < 0.02
