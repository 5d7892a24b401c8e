"""The 2-D map and the cluster order are deterministic and keep neighbours together."""
from __future__ import annotations

import numpy as np

from routing.core.layout import order_clusters, project_2d


def test_the_map_keeps_the_two_directions_of_largest_spread_and_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(500, 8)) * np.array([10, 5, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    points = project_2d(rows)
    assert points.shape == (500, 2)
    assert abs(np.corrcoef(points[:, 0], rows[:, 0])[0, 1]) > 0.99
    assert abs(np.corrcoef(points[:, 1], rows[:, 1])[0, 1]) > 0.99
    assert np.array_equal(points, project_2d(rows))
    # Other points (centroids) land in the same picture when projected on the rows' basis.
    assert np.allclose(project_2d(rows[:3], fit_on=rows), points[:3])


def test_similar_clusters_sit_next_to_each_other() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=16), rng.normal(size=16)
    centroids = np.stack([a, b + 0.01, a + 0.01, b, a + 0.02, b + 0.02])
    order = order_clusters(centroids)
    assert sorted(order) == list(range(6))
    groups = ["a" if i in (0, 2, 4) else "b" for i in order]
    assert groups in (["a"] * 3 + ["b"] * 3, ["b"] * 3 + ["a"] * 3)
    assert order_clusters(centroids[:2]) == [0, 1]
