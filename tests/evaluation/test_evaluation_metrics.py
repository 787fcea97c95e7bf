"""The evaluation's arithmetic against scipy and scikit-image, the layers randomization
counts, the byte bound of its copies, and a stream that keeps only its latest progress."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import scipy.ndimage
import scipy.stats
import torch
import torchvision
from skimage.metrics import structural_similarity

from deepvis_server.default_model import DigitsNet
from deepvis_server.errors import ResourceExhausted, Unavailable
from deepvis_server.evaluation import metrics
from deepvis_server.evaluation.randomization import RandomizedCopies, randomized_layers
from deepvis_server.evaluation.scheduler import JobState, Progress
from deepvis_server.models import ServedModel


def test_rise_kernel_is_scipys_gaussian_filter_of_an_impulse() -> None:
    impulse = np.zeros((11, 11))
    impulse[5, 5] = 1.0
    expected = scipy.ndimage.gaussian_filter(impulse, 5)
    np.testing.assert_allclose(metrics.rise_kernel(), expected, rtol=0, atol=1e-15)
    assert abs(expected.sum() - 1) < 1e-12  # 'reflect' folds the tails back in


def test_blur_is_a_zero_padded_per_channel_convolution() -> None:
    x = torch.rand(2, 3, 20, 17, dtype=torch.float64)
    kernel = metrics.rise_kernel()
    ours = metrics.blur(x, torch.from_numpy(kernel)).numpy()
    for i in range(2):
        for c in range(3):
            expected = scipy.ndimage.correlate(x[i, c].numpy(), kernel, mode="constant", cval=0)
            np.testing.assert_allclose(ours[i, c], expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_spearman_is_scipys_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 4, (5, 200)).astype(np.float32)  # heavy ties, as ReLU'd maps have
    b = np.abs(rng.normal(size=(5, 200))).astype(np.float32)
    b[:, :60] = 0.0
    b[1] = np.round(b[1], 1)
    ours = metrics.spearman(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    expected = [scipy.stats.spearmanr(a[i], b[i]).statistic for i in range(5)]
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)
    ranks = metrics.average_ranks(torch.from_numpy(a)).numpy()
    np.testing.assert_array_equal(ranks, scipy.stats.rankdata(a, axis=1))


def test_spearman_of_a_constant_map_is_nan_as_scipys() -> None:
    a = torch.zeros(1, 50)
    b = torch.arange(50.0)[None]
    with pytest.warns(scipy.stats.ConstantInputWarning):
        expected = scipy.stats.spearmanr(a[0], b[0]).statistic
    assert np.isnan(expected) and torch.isnan(metrics.spearman(a, b)).all()


@pytest.mark.parametrize("shape", [(7, 7), (32, 32), (19, 40)])
def test_ssim_is_skimages(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    a, b = rng.random((3, *shape)), rng.random((3, *shape))
    b[0] = a[0]
    b[1] = 0.0
    ours = metrics.ssim(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    expected = [structural_similarity(a[i], b[i], data_range=1.0) for i in range(3)]
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)
    assert abs(ours[0] - 1) < 1e-12


def test_group_ends_round_half_to_even_as_python() -> None:
    for pixels, steps in ((1024, 224), (10, 4), (4096, 224), (6, 4), (1, 1)):
        ends = metrics.group_ends(pixels, steps)
        assert ends == [0, *(round((i + 1) * pixels / steps) for i in range(steps))]
        assert ends[-1] == pixels and ends == sorted(ends)


def test_ranking_is_highest_first_ties_in_pixel_order() -> None:
    s = torch.tensor([[0.5, 2.0, 0.5, 2.0, -1.0]])
    positions = metrics.ranking_positions(s)
    assert positions.tolist() == [[2, 0, 3, 1, 4]]


def test_max_normalised_keeps_an_all_zero_map_zero() -> None:
    maps = torch.tensor([[[0.0, 2.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    out = metrics.max_normalised(maps)
    assert out[0].tolist() == [[0.0, 1.0], [0.5, 0.0]] and out[1].abs().sum() == 0


def test_randomized_layers_top_down_with_batchnorm() -> None:
    assert [n for n, _ in randomized_layers(DigitsNet())] == ["fc", "conv3", "conv2", "conv1"]
    net = torchvision.models.resnet18(num_classes=10)
    names = [n for n, _ in randomized_layers(net)]
    expected = [
        n
        for n, m in net.named_modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Linear))
    ][::-1]
    assert names == expected and names[0] == "fc" and names[-1] == "conv1"
    assert "bn1" in names  # BatchNorm counts, as in Quantus's MPRT


def _served(module: torch.nn.Module) -> ServedModel:
    from deepvis_server.config import load_config

    return ServedModel(
        spec=load_config().models[0],
        module=module,
        device=torch.device("cpu"),
        labels=(),
        layers={n: m for n, m in module.named_modules() if n},
    )


def test_randomized_copies_stay_within_their_byte_bound() -> None:
    net = DigitsNet().eval()
    probe = RandomizedCopies(_served(net), 1 << 40)
    one_seed = probe.copy_bytes + probe.seed_bytes
    copies = RandomizedCopies(_served(net), one_seed + probe.seed_bytes)  # room for 2 seeds
    a = copies.acquire(1)
    b = copies.acquire(2)
    with pytest.raises(Unavailable, match="max_randomized_mb"):
        copies.acquire(3)  # both seeds are in use
    copies.release(a)
    c = copies.acquire(3)  # seed 1, unused, was dropped for it
    assert copies.acquire(2) is b and c.seed == 3
    assert copies.held_bytes <= copies.max_bytes
    with pytest.raises(ResourceExhausted, match="max_randomized_mb"):
        RandomizedCopies(_served(net), one_seed - 1).acquire(0)


def test_randomized_copy_leaves_the_served_model_alone() -> None:
    net = DigitsNet().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    copies = RandomizedCopies(_served(net), 1 << 30)
    entry = copies.acquire(5)
    copies.build(entry)
    for state in [(5, "cascading", 3), (5, "independent", 1), (5, "cascading", 0)]:
        working = copies.model_at(state, entry)
        assert working.module is not net
        changed = [
            n
            for n, m in working.layers.items()
            if any(
                not torch.equal(p, dict(net.named_modules())[n]._parameters[k])
                for k, p in m._parameters.items()
                if p is not None
            )
        ]
        seed, mode, k = state
        order = ["fc", "conv3", "conv2", "conv1"]
        want = order[: k + 1] if mode == "cascading" else [order[k]]
        assert sorted(changed) == sorted(want), state
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())


def test_a_stream_keeps_only_its_latest_progress() -> None:
    async def run() -> list[object]:
        job = JobState(total=100, deadline=float("inf"))
        for i in range(50):  # a reader that does not read while 50 pieces finish
            job.progress(2, f"piece {i}")
        job.finish("result")
        return [item async for item in job.stream()]

    items = asyncio.run(run())
    assert items == [Progress(100, 100, "piece 49"), "result"]
