"""The simulated driving world: procedural scenes, an RGB renderer, an event-camera simulator, event
representations, and the 10 questions with answers grounded in what each sensor can know."""

from .clip import WorldClip, WorldConfig, make_clip
from .crop import EVENT_INPUT_PX, TARGET_INPUT_PX, CentreCrop, centre_crop
from .events import EVENT_DTYPE, WORLD_EVENT_CONFIG, EventSimConfig, simulate_events, sort_events
from .facts import VIEWS, Observation, Viewing, observe
from .qa import (MAX_TOKENS, MIN_TOKENS, QUESTION_TYPES, QUESTIONS, AnswerDivergence, all_answers, answer,
                 answer_divergence, answer_pair, divergence_by_type, edit_ratio, tokenize)
from .render import (DEFAULT_FPS, RGB_FRAMES, Camera, RenderedClip, clip_times_us, luminance, render_clip,
                     render_radiance, render_target_frames, rgb_camera, rgb_sample_times_s, target_frame_indices,
                     uniform_frame_indices)
from sdlib.base.represent import count_frames, event_image, event_images, split_by_count, voxel_grid
from .scene import Scene, sample_scene, scene_from_dict, scene_to_dict

__all__ = [
    "AnswerDivergence", "Camera", "CentreCrop", "DEFAULT_FPS", "EVENT_DTYPE", "EVENT_INPUT_PX", "EventSimConfig",
    "MAX_TOKENS", "MIN_TOKENS", "Observation", "QUESTIONS", "QUESTION_TYPES", "RGB_FRAMES", "RenderedClip", "Scene",
    "TARGET_INPUT_PX", "VIEWS", "Viewing", "WORLD_EVENT_CONFIG", "WorldClip", "WorldConfig", "all_answers",
    "answer", "answer_divergence", "answer_pair", "centre_crop", "clip_times_us",
    "count_frames", "divergence_by_type", "edit_ratio", "event_image", "event_images", "luminance", "make_clip",
    "observe", "render_clip", "render_radiance", "render_target_frames", "rgb_camera", "rgb_sample_times_s",
    "sample_scene", "target_frame_indices",
    "scene_from_dict", "scene_to_dict", "simulate_events", "sort_events", "split_by_count", "tokenize",
    "uniform_frame_indices", "voxel_grid",
]
