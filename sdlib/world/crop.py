"""What a model receives of a frame: the CLIP-style shortest-edge resize and centre crop, as one rule.

Both models' preprocessors (the target's ``ResizeNormalize`` in ``sdlib.models.videollava`` and the drafter's
``clip_style_preprocess`` in ``sdlib.models.eventgpt_runner``) resize a frame's shortest edge to ``size`` (the long
edge to ``round(long * size / short)``) and keep the centre ``size x size`` square, offset ``(new - size) // 2``.
`centre_crop` is that rule written once; the world's facts use it to state only what lies in the square a model
receives, and tests/test_world_crop.py checks that both preprocessors give exactly this geometry. The real
checkpoints' Hugging Face processors truncate the long edge instead of rounding it, which moves the crop by less than
one input pixel.

This module depends on nothing else in the package, so that it can move below `world`, `data` and `models` alike.
"""

from __future__ import annotations

from dataclasses import dataclass

TARGET_INPUT_PX = 56  # the scale-model target's frame size (sdlib.models.scale.ScaleSizes.target_image)
EVENT_INPUT_PX = 80  # the scale-model drafter's event-image size (ScaleSizes.event_image)


@dataclass(frozen=True)
class CentreCrop:
    """How a ``height x width`` frame becomes a model's ``size x size`` input.

    resized_h, resized_w: the frame after the shortest-edge resize; top, left: the crop's offset there."""

    height: int
    width: int
    size: int
    resized_h: int
    resized_w: int
    top: int
    left: int

    @property
    def box(self) -> tuple[float, float, float, float]:
        """The kept square in the frame's own pixel coordinates (edges, not centres): (u0, u1, v0, v1), u along the
        width. Resampling with ``align_corners=False`` maps input edge k to frame edge ``k * width / resized_w``."""
        sx, sy = self.width / self.resized_w, self.height / self.resized_h
        return (self.left * sx, (self.left + self.size) * sx, self.top * sy, (self.top + self.size) * sy)

    @property
    def input_px_per_frame_px(self) -> float:
        """Model-input pixels per frame pixel (the resize factor of the shortest edge)."""
        return self.size / min(self.height, self.width)


def centre_crop(height: int, width: int, size: int) -> CentreCrop:
    """The resize-and-centre-crop geometry for a ``height x width`` frame and a ``size x size`` model input."""
    if height < 1 or width < 1 or size < 1:
        raise ValueError(f"centre_crop: frame {height}x{width} (HxW), size {size}: expected positive sizes")
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    return CentreCrop(height=height, width=width, size=size, resized_h=new_h, resized_w=new_w,
                      top=(new_h - size) // 2, left=(new_w - size) // 2)
