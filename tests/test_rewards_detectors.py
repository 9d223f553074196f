"""hand / face: the shipped MediaPipe detectors run for real and separate hands and faces from blank/noise.

Fixtures: `hand_emoji.png` is Noto Color Emoji's "raised back of hand" (U+1F91A U+1F3FD) drawn at 45% of a
256 px grey canvas; `face_astronaut.png` is the head of scikit-image's `astronaut` (NASA, public domain),
160 px.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from texforce.errors import TexforceError
from texforce.rewards import build_reward
from texforce.rewards.detectors import FACE_DETECTOR, PALM_DETECTOR, DetectorReward, letterbox

FIXTURES = Path(__file__).parent / "fixtures" / "rewards"


def _load(name: str) -> torch.Tensor:
    pixels = np.asarray(Image.open(FIXTURES / name).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(pixels).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    """hand, face, white, black, then four uniform-noise images; all 256x256."""
    face = torch.nn.functional.interpolate(_load("face_astronaut.png"), size=(256, 256), mode="bilinear")
    noise = torch.rand(4, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    return torch.cat([_load("hand_emoji.png"), face, torch.ones(1, 3, 256, 256), torch.zeros(1, 3, 256, 256), noise])


def test_hand_detector_separates_a_hand_from_blank_and_noise(batch: torch.Tensor) -> None:
    pytest.importorskip("ai_edge_litert")
    scores = build_reward("hand")(batch, [""] * len(batch)).total
    assert scores.dtype == torch.float32 and scores.shape == (8,)
    assert scores[0] > 0.9  # MediaPipe reports a palm above 0.5
    assert scores[1:4].max() < 0.1  # the face and the blank images
    assert scores[4:].max() < 0.5 and scores[4:].mean() < 0.3


def test_face_detector_separates_a_face_from_blank_and_noise(batch: torch.Tensor) -> None:
    pytest.importorskip("ai_edge_litert")
    scores = build_reward("face")(batch, [""] * len(batch)).total
    assert scores[1] > 0.9
    assert scores[0] < 0.5 and scores[2:4].max() < 0.1 and scores[4:].max() < 0.3


def test_scores_are_per_image_and_shape_independent(batch: torch.Tensor) -> None:
    pytest.importorskip("ai_edge_litert")
    reward = DetectorReward(PALM_DETECTOR)
    together = reward(batch[:3], ["", "", ""])
    torch.testing.assert_close(together[1:2], reward(batch[1:2], [""]))
    wide = torch.nn.functional.pad(batch[:1], (64, 64), value=200 / 255)  # same hand, letterboxed differently
    assert reward(wide, [""]).item() > 0.9


def test_letterbox_keeps_aspect_and_centres_on_black() -> None:
    images = torch.ones(2, 3, 100, 200)
    boxed = letterbox(images, 128)
    assert boxed.shape == (2, 3, 128, 128)
    assert boxed[:, :, 32:96].eq(1).all() and boxed[:, :, :32].eq(0).all() and boxed[:, :, 96:].eq(0).all()


def test_detector_specs_follow_the_mediapipe_graphs() -> None:
    assert (PALM_DETECTOR.input_size, PALM_DETECTOR.value_range) == (192, (0.0, 1.0))
    assert (FACE_DETECTOR.input_size, FACE_DETECTOR.value_range) == (128, (-1.0, 1.0))


def test_missing_extra_is_one_line_naming_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(TexforceError, match=r"pip install 'texforce\[detectors\]'") as error:
        build_reward("hand")
    assert "\n" not in str(error.value)
