"""What the simulated world and the real data share, below both (DESIGN.md: ``data/`` and ``models/`` import
nothing from ``world/``): the event array format, the event representations EventGPT reads, the target's
frame-sampling policy and the question set."""

from .event_dtype import EVENT_DTYPE
from .frame_policy import RGB_FRAMES, uniform_frame_indices
from .questions import QUESTION_TYPES, QUESTIONS
from .represent import count_frames, event_image, event_images, split_by_count, voxel_grid

__all__ = ["EVENT_DTYPE", "QUESTIONS", "QUESTION_TYPES", "RGB_FRAMES", "count_frames", "event_image", "event_images",
           "split_by_count", "uniform_frame_indices", "voxel_grid"]
