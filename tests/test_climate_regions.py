"""Several regions in one training set (diffscale.data.climate.regions): pooled statistics equal those of the
regions' values joined (numpy), and the mixture draws each sample from all the regions' times alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffscale.data.batch import Batch
from diffscale.data.climate.regions import RegionMixture, pooled_stats
from diffscale.data.climate.transforms import fit_stats
from diffscale.validation import ConfigError


def test_pooled_statistics_are_those_of_the_joined_values() -> None:
    rng = np.random.default_rng(0)
    uk = {"t2m": rng.normal(280, 2, size=(30, 4, 6)), "orography": rng.gamma(2, 100, size=(4, 6))}
    italy = {"t2m": rng.normal(292, 5, size=(12, 5, 6)), "orography": rng.gamma(3, 300, size=(5, 6))}
    pooled = pooled_stats(
        [fit_stats(uk), fit_stats(italy)],
        [{name: value.size for name, value in region.items()} for region in (uk, italy)],
    )
    for name in ("t2m", "orography"):
        joined = np.concatenate([uk[name].ravel(), italy[name].ravel()])
        assert pooled[name]["mean"] == pytest.approx(joined.mean(), rel=1e-12)
        assert pooled[name]["std"] == pytest.approx(joined.std(), rel=1e-10)  # population std, as fit_stats
        assert pooled[name]["transform"] == "standardize"


def test_pooling_refuses_regions_that_disagree() -> None:
    a = {"t2m": {"transform": "standardize", "mean": 0.0, "std": 1.0, "units": "K"}}
    b = {"t2m": {"transform": "standardize", "mean": 0.0, "std": 1.0, "units": "degC"}}
    with pytest.raises(ConfigError, match="differ in units"):
        pooled_stats([a, b], [{"t2m": 1}, {"t2m": 1}])
    with pytest.raises(ConfigError, match="has the fields"):
        pooled_stats([a, {"tp": a["t2m"]}], [{"t2m": 1}, {"tp": 1}])


class _Region:
    """A dataset whose samples say which region and which draw they come from."""

    def __init__(self, label: float, size: int) -> None:
        self.label, self.size = label, size

    def __len__(self) -> int:
        return self.size

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        draws = torch.rand(batch_size, generator=generator)
        target = torch.full((batch_size, 1, 2, 3), self.label)
        return Batch(target, {"cond_fields": draws[:, None, None, None].expand(batch_size, 2, 2, 3)})


def test_each_sample_comes_from_a_region_with_probability_proportional_to_its_times() -> None:
    mixture = RegionMixture([_Region(0.0, 300), _Region(1.0, 100)])
    assert len(mixture) == 400
    generator = torch.Generator().manual_seed(0)
    shares = np.array([mixture.shares(64, generator) for _ in range(500)])
    assert np.all(shares.sum(axis=1) == 64)
    assert shares[:, 1].mean() / 64 == pytest.approx(0.25, abs=0.01)  # 32,000 draws: sd 0.0024
    batch = mixture.sample(16, torch.Generator().manual_seed(1))
    again = mixture.sample(16, torch.Generator().manual_seed(1))
    assert batch.target.shape == (16, 1, 2, 3) and set(batch.cond) == {"cond_fields"}
    assert torch.equal(batch.target, again.target) and torch.equal(batch.cond["cond_fields"], again.cond["cond_fields"])


def test_regions_must_give_samples_of_one_shape() -> None:
    class Wide(_Region):
        def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
            return Batch(torch.zeros(batch_size, 1, 2, 4), {"cond_fields": torch.zeros(batch_size, 2, 2, 4)})

    mixture = RegionMixture([_Region(0.0, 10), Wide(1.0, 10)])
    with pytest.raises(ConfigError, match="one patch"):
        mixture.sample(64, torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="every region needs training times"):
        RegionMixture([_Region(0.0, 0)])
