"""The linear-probe baseline and the selection rule (issue 13): one validation image cannot flip a choice."""

from __future__ import annotations

import numpy as np
import pytest

from models.evaluation import beats, linear_probe, probe_predict, softmax_regression
from models.network import build_attribute_network
from models.train import FROZEN, UNFROZEN, BestWeights


def test_softmax_regression_gradient_matches_finite_differences():
    from scipy.optimize import check_grad

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 4)), rng.integers(0, 3, 20)
    d, k, l2 = 4, 3, 0.1
    onehot = np.eye(k)[y]

    def loss(theta):
        w, b = theta[: d * k].reshape(d, k), theta[d * k :]
        z = x @ w + b
        z = z - z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return -(onehot * log_p).sum() / len(x) + 0.5 * l2 * (w * w).sum()

    w, b = softmax_regression(x, y, k, l2)
    theta = np.concatenate([w.ravel(), b])
    # at the optimum the gradient is ~0, and the loss is below that of nearby points
    for _ in range(5):
        assert loss(theta) <= loss(theta + rng.normal(scale=1e-2, size=theta.shape)) + 1e-12
    # the analytic gradient (L-BFGS's) agrees with finite differences at a random point
    from models import evaluation

    def grad(t):
        w, b = t[: d * k].reshape(d, k), t[d * k :]
        z = x @ w + b
        p = evaluation.softmax(z)
        r = (p - onehot) / len(x)
        return np.concatenate([(x.T @ r + l2 * w).ravel(), r.sum(axis=0)])

    assert check_grad(loss, grad, rng.normal(size=theta.shape)) < 1e-5


def test_linear_probe_picks_l2_on_validation_loss_and_predicts():
    rng = np.random.default_rng(1)
    centres = rng.normal(scale=3.0, size=(3, 8))

    def sample(n):
        y = rng.integers(0, 3, n)
        return centres[y] + rng.normal(size=(n, 8)) + 50.0, y  # an offset: the probe standardises

    (tx, ty), (vx, vy) = sample(120), sample(60)
    probe = linear_probe(tx, ty, vx, vy, 3, grid=(1e-3, 1.0, 1000.0))
    assert [row["l2"] for row in probe["grid"]] == [1e-3, 1.0, 1000.0]
    best = min(probe["grid"], key=lambda row: row["val_loss"])
    assert probe["l2"] == best["l2"] != 1000.0  # a huge penalty (near-uniform outputs) never wins on log-loss
    assert probe["val_accuracy"] >= 0.9
    p = probe_predict(probe, vx)
    assert p.shape == (60, 3) and np.allclose(p.sum(axis=1), 1.0)
    assert float((p.argmax(axis=1) == vy).mean()) == pytest.approx(probe["val_accuracy"])


@pytest.mark.parametrize(
    "candidate, reference, images, margin, expected",
    [
        (0.92, 0.91, 100, 1, False),  # one image better: not enough
        (0.93, 0.91, 100, 1, True),  # two images better
        (0.91, 0.91, 100, 0, False),  # a tie never prefers the later / more complex one
        (0.92, 0.91, 100, 0, True),
    ],
)
def test_beats_needs_more_than_the_margin(candidate, reference, images, margin, expected):
    assert beats(candidate, reference, images, margin) is expected


def _run(best: BestWeights, model, epochs: list[tuple[str, float, float]]) -> None:
    kernel = model.get_layer("predictions").kernel
    for index, (phase, accuracy, loss) in enumerate(epochs):
        best.phase = phase
        kernel.assign(np.full(kernel.shape, float(index), dtype="float32"))
        best.on_epoch_end(index, {"val_accuracy": accuracy, "val_loss": loss})


def test_within_a_phase_the_lowest_validation_loss_is_kept_not_the_luckiest_accuracy():
    model = build_attribute_network(2, image_size=32, dense_units=0)
    best = BestWeights(model, margin_images=1, validation_images=100)
    # epoch 2 has one more right image, but a worse loss than epoch 3
    _run(best, model, [(FROZEN, 0.90, 0.40), (FROZEN, 0.91, 0.35), (FROZEN, 0.90, 0.30)])
    assert (best.best_phase, best.best_epoch) == (FROZEN, 3)
    best.restore()
    np.testing.assert_array_equal(model.get_layer("predictions").kernel.numpy(), 2.0)


@pytest.mark.parametrize("phase2_accuracy, kept", [(0.91, FROZEN), (0.92, UNFROZEN)])
def test_phase_two_is_kept_only_when_it_wins_by_more_than_one_image(phase2_accuracy, kept):
    model = build_attribute_network(2, image_size=32, dense_units=0)
    best = BestWeights(model, margin_images=1, validation_images=100)
    _run(best, model, [(FROZEN, 0.90, 0.30), (UNFROZEN, phase2_accuracy, 0.20)])
    assert best.best_phase == kept
    record = best.record()
    assert set(record["candidates"]) == {FROZEN, UNFROZEN} and record["phase"] == kept
    best.restore(FROZEN)  # phase 2 starts from phase 1's kept epoch
    np.testing.assert_array_equal(model.get_layer("predictions").kernel.numpy(), 0.0)
