import pytest
import torch

from texforce.errors import TexforceError
from texforce.rewards import build_reward, parse_reward_spec
from texforce.rewards.jpeg import jpeg_size_kb


def test_jpeg_flat_images_compress_better_than_noise():
    flat = torch.full((1, 3, 64, 64), 0.5)
    noise = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    sizes = jpeg_size_kb(torch.cat([flat, noise]))
    assert sizes[0] < sizes[1]
    reward = build_reward("jpeg_compressibility")
    scores = reward(torch.cat([flat, noise]), ["a", "b"]).total
    assert scores[0] > scores[1] and scores.dtype == torch.float32
    torch.testing.assert_close(build_reward("jpeg_incompressibility")(flat, ["a"]).total, sizes[:1])


def test_weighted_sum_keeps_components():
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    output = build_reward("jpeg_compressibility:2.0+jpeg_incompressibility:0.5")(images, ["a", "b"])
    sizes = jpeg_size_kb(images)
    torch.testing.assert_close(output.total, -2.0 * sizes + 0.5 * sizes)
    assert set(output.components) == {"jpeg_compressibility", "jpeg_incompressibility"}


def test_spec_parsing_and_errors():
    assert parse_reward_spec("jpeg_compressibility") == [("jpeg_compressibility", 1.0)]
    with pytest.raises(TexforceError, match=r"unknown reward .nope.; valid rewards: .*jpeg_compressibility"):
        parse_reward_spec("nope:1")
    with pytest.raises(TexforceError, match="not a number"):
        parse_reward_spec("jpeg_compressibility:x")
    with pytest.raises(TexforceError, match="appears twice"):
        parse_reward_spec("jpeg_compressibility+jpeg_compressibility")
    with pytest.raises(TexforceError, match="empty term"):
        parse_reward_spec("jpeg_compressibility+")
