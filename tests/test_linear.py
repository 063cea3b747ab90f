"""Linear probe: accuracy vs scikit-learn, ignore rows, determinism, BatchNorm, selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from vitlocal.errors import LabelError
from vitlocal.probes.linear import predict, train_linear_probe

FAST = {"epochs": 15, "batch_size": 256, "lr": 1e-2, "device": "cpu"}


def _problem(n: int = 3000, dim: int = 20, classes: int = 5, seed: int = 0):
    """Gaussian classes, near-separable, with two huge-variance nuisance dimensions."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, dim)) * 0.7
    y = rng.integers(0, classes, n)
    x = centers[y] + rng.normal(size=(n, dim))
    x[:, :2] = rng.normal(size=(n, 2)) * 50
    return x.astype(np.float32), y


def test_accuracy_close_to_sklearn_logistic_regression() -> None:
    x, y = _problem()
    train, test = slice(0, 2000), slice(2000, None)
    ref = LogisticRegression(max_iter=2000).fit(x[train], y[train])
    ref_acc = ref.score(x[test], y[test])
    for batchnorm in (False, True):
        probe, _ = train_linear_probe(x[train], y[train], 5, batchnorm=batchnorm, seed=0, **FAST)
        acc = (predict(probe, x[test]) == y[test]).mean()
        assert acc >= ref_acc - 0.01, (batchnorm, acc, ref_acc)


def test_ignored_rows_change_nothing() -> None:
    x, y = _problem(n=800)
    rng = np.random.default_rng(5)
    junk = rng.normal(size=(300, x.shape[1])).astype(np.float32) * 100
    # Interleave the ignored rows so that their positions matter if they leaked.
    x_all = np.concatenate([junk[:150], x[:400], junk[150:], x[400:]])
    y_all = np.concatenate([np.full(150, 255), y[:400], np.full(150, 255), y[400:]])
    clean, _ = train_linear_probe(x, y, 5, seed=1, **FAST)
    noisy, settings = train_linear_probe(x_all, y_all, 5, seed=1, **FAST)
    assert settings["n_ignored"] == 300 and settings["n_train"] == 800
    for name, value in clean.state_dict().items():
        torch.testing.assert_close(noisy.state_dict()[name], value, rtol=0, atol=0)


def test_same_seed_same_weights_other_seed_differs() -> None:
    x, y = _problem(n=600)
    a, _ = train_linear_probe(x, y, 5, seed=3, **FAST)
    b, _ = train_linear_probe(x, y, 5, seed=3, **FAST)
    c, _ = train_linear_probe(x, y, 5, seed=4, **FAST)
    assert torch.equal(a.linear.weight, b.linear.weight)
    assert not torch.equal(a.linear.weight, c.linear.weight)


def test_batchnorm_stores_running_statistics() -> None:
    x, y = _problem(n=1000)
    probe, settings = train_linear_probe(x, y, 5, batchnorm=True, seed=0, **FAST)
    assert settings["batchnorm"] is True
    bn = probe.norm
    assert isinstance(bn, torch.nn.BatchNorm1d) and not bn.affine and bn.eps == 1e-6
    # Running mean after many EMA updates approaches the data mean (std 50 dims included).
    np.testing.assert_allclose(bn.running_mean.numpy(), x.mean(axis=0), atol=5.0)
    assert bn.running_var[:2].min() > 1000 and bn.running_var[2:].max() < 10
    assert not probe.training


def test_heldout_selection_uses_training_rows_only() -> None:
    x, y = _problem(n=1000)
    groups = np.repeat(np.arange(10), 100)
    _, settings = train_linear_probe(x, y, 5, seed=0, val_fraction=0.2, groups=groups, **FAST)
    assert settings["n_val"] == 200 and settings["n_train"] == 800
    assert 1 <= settings["selected_epoch"] <= FAST["epochs"]
    assert 0.5 < settings["val_miou"] <= 1.0
    _, by_rows = train_linear_probe(x, y, 5, seed=0, val_fraction=0.1, **FAST)
    assert by_rows["n_val"] == 100 and by_rows["val_split"] == "rows"


def test_rejects_bad_labels_and_settings() -> None:
    x, y = _problem(n=50)
    with pytest.raises(LabelError, match=r"label 7 is out of range; expected 0\.\.4 or 255"):
        train_linear_probe(x, np.where(y == 1, 7, y), 5, device="cpu")
    with pytest.raises(ValueError, match="optimizer='lbfgs'"):
        train_linear_probe(x, y, 5, optimizer="lbfgs", device="cpu")


def test_learning_rate_follows_the_cosine_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    """lr_t = lr / 2 (1 + cos(pi t / T)) over all T = epochs x batches steps, from lr towards 0."""
    seen = []
    original = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step",
                        lambda self, *a, **k: seen.append(self.param_groups[0]["lr"]) or original(self, *a, **k))
    x, y = _problem(n=40)
    train_linear_probe(x, y, 5, epochs=3, batch_size=20, lr=0.1, seed=0, device="cpu")  # 2 batches x 3 epochs
    expected = [0.1 * 0.5 * (1 + np.cos(np.pi * t / 6)) for t in range(6)]
    np.testing.assert_allclose(seen, expected, rtol=1e-12)


def test_batchnorm_predictions_use_the_training_statistics() -> None:
    """At prediction BatchNorm holds the statistics stored in training, whatever the val batch's own."""
    x, y = _problem(n=1000)
    probe, _ = train_linear_probe(x, y, 5, batchnorm=True, seed=0, **FAST)
    shifted = x[:200] * 2.0 + 1.0  # a val set whose mean and variance differ from the training set's
    bn, lin = probe.norm, probe.linear
    with torch.no_grad():
        z = (torch.from_numpy(shifted) - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
        expected = (z @ lin.weight.T + lin.bias).argmax(dim=1).numpy()
    np.testing.assert_array_equal(predict(probe, shifted), expected)
