"""FID: the Fréchet distance against closed forms, and the feature net's labels and cache.
Run: pytest -q tests/test_fid.py"""
import numpy as np

from minimoe.data import DOMAINS, BuiltinData
from minimoe.fid import (HEADS, cached_feature_net, frechet_distance, labels, stats)
from minimoe.sequences import IGNORE


def test_identical_sets_are_at_distance_zero():
    f = np.random.default_rng(0).normal(size=(200, 16))
    assert abs(frechet_distance(*stats(f), *stats(f))) < 1e-8


def test_distance_matches_closed_forms_on_gaussians():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    var1, var2 = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    diagonal = np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2))
    assert np.isclose(frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)), diagonal)
    a = rng.normal(size=(5, 5))
    cov = a @ a.T + np.eye(5)  # a full covariance, and 4 x it: the root of S (4S) is 2S
    assert np.isclose(frechet_distance(mu1, cov, mu1, 4 * cov), (1 + 4 - 2 * 2) * np.trace(cov))


def test_estimates_from_samples_approach_the_closed_form():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, size=(20000, 3))
    y = rng.normal(1, 2, size=(20000, 3))
    want = 3 * 1 + 3 * (1 + 4 - 2 * 2)  # |mu diff|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2)
    assert abs(frechet_distance(*stats(x), *stats(y)) - want) < 0.15


def test_labels_cover_every_domain():
    data = BuiltinData(32, DOMAINS, "train", seed=0)
    seen = {h: set() for h in HEADS}
    for i in range(60):
        for h, v in labels(data[i]).items():
            if v != IGNORE:
                seen[h].add(v)
    assert seen["domain"] == {0, 1, 2} and len(seen["colour"]) > 3 and seen["shape"]
    assert seen["glyph"] and seen["pattern"]


def test_feature_net_is_trained_once_and_cached(tmp_path):
    path = tmp_path / "features.pt"
    net, accuracy = cached_feature_net(path, 16, progress=False, steps=5)
    assert path.exists() and set(accuracy) == set(HEADS)
    again, accuracy2 = cached_feature_net(path, 16, progress=False, steps=5)
    assert accuracy2 == accuracy
    assert all((a == b).all() for a, b in zip(net.state_dict().values(),
                                               again.state_dict().values()))
