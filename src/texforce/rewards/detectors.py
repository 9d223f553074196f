"""hand and face rewards: the confidence of MediaPipe's shipped detectors that a hand / a face is present.

The paper's hand and face tasks reward images in which a detector finds the object. Here the reward is
the detector's best anchor score, sigmoid(max logit) in [0, 1]; MediaPipe itself reports a detection
when that score passes 0.5. Only the score is needed, so the SSD box decoding and non-maximum
suppression of MediaPipe's graphs are skipped.

| reward | model (from the mediapipe 0.10.21 wheel)       | input             | reference graph                |
|--------|------------------------------------------------|-------------------|--------------------------------|
| hand   | `palm_detection_full.tflite` (Hands default)   | 192x192, [0, 1]   | `palm_detection_cpu.pbtxt`     |
| face   | `face_detection_short_range.tflite` (BlazeFace)| 128x128, [-1, 1]  | `face_detection_short_range*`  |

Both graphs letterbox (keep aspect ratio, black border) with bilinear resampling before inference. The
models run on the CPU with `ai-edge-litert` (the `texforce[detectors]` extra), one image per invoke as in
MediaPipe, whatever device the scorer was built for (the models are a few MB and take milliseconds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F

from texforce.errors import TexforceError


@dataclass(frozen=True)
class DetectorSpec:
    """One shipped TFLite detector and the input its MediaPipe graph feeds it."""

    model_file: str
    input_size: int
    value_range: tuple[float, float]


PALM_DETECTOR = DetectorSpec("palm_detection_full.tflite", input_size=192, value_range=(0.0, 1.0))
FACE_DETECTOR = DetectorSpec("face_detection_short_range.tflite", input_size=128, value_range=(-1.0, 1.0))
SCORE_CLIP = 100.0  # MediaPipe's score_clipping_thresh, applied to the logit before the sigmoid


def letterbox(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1] → (B, 3, size, size): scaled to fit, bilinear, centred on black."""
    height, width = images.shape[-2:]
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    resized = F.interpolate(images.float(), size=(new_h, new_w), mode="bilinear", align_corners=False)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    return F.pad(resized, (left, size - new_w - left, top, size - new_h - top), value=0.0)


class DetectorReward:
    """sigmoid(max anchor logit) of a TFLite SSD detector, per image: (B,) float32 in [0, 1]."""

    def __init__(self, spec: DetectorSpec, num_threads: int = 1) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise TexforceError(
                "the hand and face rewards need ai-edge-litert: pip install 'texforce[detectors]'"
            ) from None
        model = resources.files("texforce.rewards").joinpath("detector_models", spec.model_file).read_bytes()
        self.spec = spec
        self.interpreter = Interpreter(model_content=model, num_threads=num_threads)
        self.interpreter.allocate_tensors()
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        # Outputs: box regressors (1, A, C) and class logits (1, A, 1); the logits are the 1-wide one.
        self.score_index = next(out["index"] for out in self.interpreter.get_output_details() if out["shape"][-1] == 1)

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        low, high = self.spec.value_range
        inputs = letterbox(images.detach().cpu().float().clamp(0, 1), self.spec.input_size)
        inputs = (inputs * (high - low) + low).permute(0, 2, 3, 1).contiguous().numpy()  # (B, S, S, 3)
        scores = []
        for image in inputs:
            self.interpreter.set_tensor(self.input_index, image[None])
            self.interpreter.invoke()
            logit = float(np.clip(self.interpreter.get_tensor(self.score_index).max(), -SCORE_CLIP, SCORE_CLIP))
            scores.append(1.0 / (1.0 + np.exp(-logit)))
        return torch.tensor(scores, dtype=torch.float32)


def make_hand(device: torch.device, dtype: torch.dtype) -> DetectorReward:
    return DetectorReward(PALM_DETECTOR)


def make_face(device: torch.device, dtype: torch.dtype) -> DetectorReward:
    return DetectorReward(FACE_DETECTOR)
