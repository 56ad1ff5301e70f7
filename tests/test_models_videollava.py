"""Video-LLaVA's one input preparation (8 uniformly sampled frames, the exact prompt, the <video> token count, the
pixel back ends agreeing with the real VideoLlavaProcessor) and the DecodingModel wrapper's prefill on a tiny random
model."""
import numpy as np
import pytest
import torch
from transformers import BatchFeature, VideoLlavaForConditionalGeneration, VideoLlavaProcessor

from sdlib.models.interface import DecodingModel, cache_length
from sdlib.models.tokenizer import train_tokenizer
from sdlib.models.videollava import (
    CLIP_MEAN,
    CLIP_STD,
    ImageProcessorFrames,
    ResizeNormalize,
    VideoLlavaDecoder,
    build_prompt,
    build_video_llava_processor,
    prepare_video_llava_inputs,
    torchvision_available,
    video_llava_config,
    video_llava_image_processor,
    video_token_count,
)
from sdlib.base.frame_policy import uniform_frame_indices

QUESTIONS = [
    "What are the key elements in this scene?",
    "What is the layout of the road in the scene?",
    "Describe the following scene.",
    "What types of vehicles are present in the scene and how are they positioned?",
]
SIZE, PATCH = 32, 8  # 8 frames x (4*4 + 1) = 136 <video> tokens


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(QUESTIONS + ["USER: <video>\n ASSISTANT: a red car on the left."])


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    return VideoLlavaForConditionalGeneration(video_llava_config(tok, image_size=SIZE, patch_size=PATCH)).eval()


def random_clip(rng: np.random.Generator, n: int, h: int = SIZE, w: int = SIZE) -> np.ndarray:
    return rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)  # [n, H, W, 3]


def bridged_processor(tok, monkeypatch):
    """The real VideoLlavaProcessor (its placeholder expansion and tokenization), with the per-frame image processor
    standing in for its torchvision video processor. Only the constructor's class check on that argument is
    relaxed; everything the processor does with the text runs unchanged."""
    from transformers.video_processing_utils import VideoProcessorMixin

    frames_fn = ImageProcessorFrames(video_llava_image_processor(SIZE))

    class PerFrameVideoProcessor(VideoProcessorMixin):
        def preprocess(self, videos, **kwargs):
            return BatchFeature({"pixel_values_videos": frames_fn(np.asarray(videos))[None]}, tensor_type="pt")

    check = VideoLlavaProcessor.check_argument_for_proper_class
    monkeypatch.setattr(VideoLlavaProcessor, "check_argument_for_proper_class",
                        lambda self, name, arg: None if name == "video_processor" else check(self, name, arg))
    return VideoLlavaProcessor(image_processor=video_llava_image_processor(SIZE),
                               video_processor=PerFrameVideoProcessor(), tokenizer=tok, patch_size=PATCH)


# --------------------------------------------------------------------------------------------------------------------
# The policy


def test_prompt_is_exactly_the_policy_and_rejects_placeholders():
    assert build_prompt("Describe the following scene.") == "USER: <video>\nDescribe the following scene. ASSISTANT:"
    with pytest.raises(ValueError, match="placeholder <video>"):
        build_prompt("What is in <video>?")
    with pytest.raises(ValueError, match="non-empty"):
        build_prompt("  ")


def test_video_token_count_formula():
    assert video_token_count(8, 224, 224, 14) == 2056  # the 7B checkpoint: 8 x 257
    assert video_token_count(8, 64, 64, 8) == 520  # DESIGN.md's first sketch of the scale model
    assert video_token_count(8, 56, 56, 8) == 400  # the calibrated scale model (sdlib.models.scale.ScaleSizes)
    assert video_token_count(8, 32, 32, 8) == 136
    assert video_token_count(1, 32, 48, 8) == 25  # non-square: 4 x 6 patches + CLS
    with pytest.raises(ValueError, match="positive"):
        video_token_count(0, 32, 32, 8)


def test_inputs_have_the_expanded_prompt_and_pixel_layout(tok):
    rng = np.random.default_rng(0)
    inputs = prepare_video_llava_inputs(random_clip(rng, 20), QUESTIONS[0], tok, PATCH,
                                        frame_processor=ResizeNormalize(SIZE))
    ids = inputs.input_ids[0].tolist()
    n = video_token_count(8, SIZE, SIZE, PATCH)
    first = ids.index(tok.video_token_id)
    assert ids[0] == tok.bos_token_id and ids[first:first + n] == [tok.video_token_id] * n
    assert tok.video_token_id not in ids[first + n:]  # one contiguous run of n <video> tokens
    assert tok.decode(ids[1:first]) == "USER: "
    assert tok.decode(ids[first + n:]) == "\n" + QUESTIONS[0] + " ASSISTANT:"
    assert inputs.input_ids.dtype == torch.long
    assert inputs.extra["pixel_values_videos"].shape == (1, 8, 3, SIZE, SIZE)
    assert inputs.prompt_text == build_prompt(QUESTIONS[0])


@pytest.mark.parametrize("n_total", [8, 13, 20, 41])
def test_the_eight_frames_are_the_uniform_policy(tok, n_total):
    # frame i is a flat image of value 6*i, so the pixels say which frames were taken
    frames = np.broadcast_to((6 * np.arange(n_total, dtype=np.uint8))[:, None, None, None],
                             (n_total, SIZE, SIZE, 3)).copy()
    inputs = prepare_video_llava_inputs(frames, QUESTIONS[1], tok, PATCH, frame_processor=ResizeNormalize(SIZE))
    px = inputs.extra["pixel_values_videos"][0]  # [8, 3, H, W]
    raw = (px * torch.tensor(CLIP_STD).view(1, 3, 1, 1) + torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) * 255
    taken = raw.round().amax(dim=(1, 2, 3)) / 6
    assert taken.tolist() == uniform_frame_indices(n_total, 8).tolist()
    assert (raw.amax(dim=(1, 2, 3)) - raw.amin(dim=(1, 2, 3))).max() < 1e-3  # flat frames stay flat


def test_fallback_gives_the_real_processors_ids_and_pixels(tok, monkeypatch):
    processor = bridged_processor(tok, monkeypatch)
    fallback = ImageProcessorFrames(video_llava_image_processor(SIZE))
    rng = np.random.default_rng(1)
    for question, (n, h, w) in zip(QUESTIONS, [(8, 32, 32), (12, 40, 48), (30, 48, 36), (9, 32, 64)]):
        clip = random_clip(rng, n, h, w)  # sizes that need a resize and a crop
        real = prepare_video_llava_inputs(clip, question, tok, PATCH, processor=processor)
        ours = prepare_video_llava_inputs(clip, question, tok, PATCH, frame_processor=fallback)
        assert torch.equal(real.input_ids, ours.input_ids)
        assert torch.equal(real.extra["pixel_values_videos"], ours.extra["pixel_values_videos"])
        assert int((ours.input_ids == tok.video_token_id).sum()) == 136


def test_real_processor_with_torchvision_matches_the_fallback(tok):
    """Runs only where torchvision imports (GPU machines); here it is skipped (see environment.md)."""
    if not torchvision_available():
        with pytest.raises(ImportError, match="needs torchvision"):
            build_video_llava_processor(tok, PATCH, video_llava_image_processor(SIZE))
        pytest.skip("torchvision does not import on this machine: VideoLlavaProcessor cannot be built")
    processor = build_video_llava_processor(tok, PATCH, video_llava_image_processor(SIZE))
    fallback = ImageProcessorFrames(video_llava_image_processor(SIZE))
    clip = random_clip(np.random.default_rng(2), 16)  # already SIZE x SIZE: no resampling on either path
    real = prepare_video_llava_inputs(clip, QUESTIONS[2], tok, PATCH, processor=processor)
    ours = prepare_video_llava_inputs(clip, QUESTIONS[2], tok, PATCH, frame_processor=fallback)
    assert torch.equal(real.input_ids, ours.input_ids)
    torch.testing.assert_close(real.extra["pixel_values_videos"], ours.extra["pixel_values_videos"],
                               atol=1e-5, rtol=0)


def test_resize_normalize_matches_the_image_processor_without_resampling():
    rng = np.random.default_rng(3)
    clip = random_clip(rng, 8)
    torch.testing.assert_close(ResizeNormalize(SIZE)(clip),
                               ImageProcessorFrames(video_llava_image_processor(SIZE))(clip), atol=1e-5, rtol=0)
    # with resampling: shortest edge to SIZE, centre crop; a flat frame stays flat at its normalised value
    flat = np.full((8, 40, 56, 3), 200, dtype=np.uint8)
    out = ResizeNormalize(SIZE)(flat)
    assert out.shape == (8, 3, SIZE, SIZE)
    expected = (200 / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(out.amax(dim=(0, 2, 3)), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.amin(dim=(0, 2, 3)), expected, atol=1e-5, rtol=0)


def test_bad_inputs_are_named(tok, model):
    rng = np.random.default_rng(4)
    fp = ResizeNormalize(SIZE)
    with pytest.raises(ValueError, match="uint8"):
        prepare_video_llava_inputs(random_clip(rng, 8).astype(np.float32), "Hi?", tok, PATCH, frame_processor=fp)
    with pytest.raises(ValueError, match="has 7 frames"):
        prepare_video_llava_inputs(random_clip(rng, 7), "Hi?", tok, PATCH, frame_processor=fp)
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        prepare_video_llava_inputs(random_clip(rng, 8)[..., :2], "Hi?", tok, PATCH, frame_processor=fp)
    with pytest.raises(ValueError, match="exactly one"):
        prepare_video_llava_inputs(random_clip(rng, 8), "Hi?", tok, PATCH)
    small = VideoLlavaDecoder(model, tok, frame_processor=ResizeNormalize(16))
    with pytest.raises(ValueError, match="16x16, the vision tower expects 32x32"):
        small.prepare("Hi?", random_clip(rng, 8))
    other = train_tokenizer(["<video> first words shift nothing"])  # same specials, but a vocab the model lacks
    cfg = video_llava_config(tok, image_size=SIZE, patch_size=PATCH)
    cfg.video_token_index = 7
    with pytest.raises(ValueError, match="video_token_index is 7"):
        VideoLlavaDecoder(VideoLlavaForConditionalGeneration(cfg), other)


# --------------------------------------------------------------------------------------------------------------------
# The decoder


def test_config_builds_a_vision_tower_for_the_frame_size(tok, model):
    cfg = model.config
    assert (cfg.vision_config.image_size, cfg.vision_config.patch_size) == (SIZE, PATCH)
    assert cfg.text_config.vocab_size == len(tok)
    assert (cfg.video_token_id, cfg.image_token_id) == (tok.video_token_id, tok.image_token_id)
    assert cfg.video_seq_length == 136 and cfg.text_config.max_position_embeddings == 136 + 512
    assert cfg.text_config.eos_token_id == tok.eos_token_id == 3
    with pytest.raises(ValueError, match="not a multiple"):
        video_llava_config(tok, image_size=30, patch_size=8)


def test_prefill_equals_the_models_own_forward(tok, model):
    dec = VideoLlavaDecoder(model, tok, frame_processor=ResizeNormalize(SIZE))
    assert isinstance(dec, DecodingModel)
    assert dec.lm_head is model.lm_head and dec.embed_tokens is model.model.language_model.embed_tokens
    rng = np.random.default_rng(5)
    for question in QUESTIONS:
        inputs = dec.prepare(question, random_clip(rng, int(rng.integers(8, 25))))
        pre = dec.prefill(inputs)
        with torch.no_grad():
            ref = model(input_ids=inputs.input_ids, pixel_values_videos=inputs.extra["pixel_values_videos"])
        torch.testing.assert_close(pre.logits, ref.logits[0, -1], atol=1e-5, rtol=0)
        torch.testing.assert_close(dec.lm_head(pre.hidden), pre.logits, atol=1e-6, rtol=0)
        assert pre.prompt_len == inputs.input_ids.shape[1] == cache_length(pre.cache)
        assert pre.logits.shape == (len(tok),) and pre.hidden.shape == (model.config.text_config.hidden_size,)


def test_default_pixel_backend_follows_torchvision(tok, model):
    dec = VideoLlavaDecoder(model, tok)
    if torchvision_available():
        assert dec.pixel_backend == "processor"
    else:
        assert dec.pixel_backend == "ImageProcessorFrames(VideoLlavaImageProcessor)"
    inputs = dec.prepare(QUESTIONS[3], random_clip(np.random.default_rng(6), 10))
    assert inputs.extra["pixel_values_videos"].shape == (1, 8, 3, SIZE, SIZE)


def test_from_pretrained_round_trip(tok, model, tmp_path):
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    video_llava_image_processor(SIZE).save_pretrained(tmp_path)
    loaded = VideoLlavaDecoder.from_pretrained(tmp_path)
    original = VideoLlavaDecoder(model, tok, frame_processor=ImageProcessorFrames(video_llava_image_processor(SIZE)))
    if not torchvision_available():
        assert loaded.pixel_backend == "ImageProcessorFrames(VideoLlavaImageProcessor)"
    clip = random_clip(np.random.default_rng(7), 11, 40, 48)
    a, b = original.prepare(QUESTIONS[0], clip), loaded.prepare(QUESTIONS[0], clip)
    assert torch.equal(a.input_ids, b.input_ids)
    torch.testing.assert_close(loaded.prefill(b).logits, original.prefill(a).logits, atol=1e-6, rtol=0)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        VideoLlavaDecoder.from_pretrained(tmp_path / "nothing")
