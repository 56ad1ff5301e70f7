"""Event representations: EventGPT's event image, count frames, voxel grid."""

import numpy as np
import pytest

from sdlib.world import EVENT_DTYPE, count_frames, event_image, event_images, split_by_count, voxel_grid

RED, BLUE, WHITE = [255, 0, 0], [0, 0, 255], [255, 255, 255]


def events(rows):
    return np.array(rows, dtype=EVENT_DTYPE)


def test_event_image_colours_overwrite_and_fixed_size():
    ev = events([(1, 0, 10, 1), (2, 1, 20, 0), (1, 0, 30, 0), (3, 2, 40, 1), (3, 2, 50, 1)])
    img = event_image(ev, width=8, height=6)
    assert img.shape == (6, 8, 3) and img.dtype == np.uint8  # the sensor size, not max(x)+1 x max(y)+1
    assert img[0, 1].tolist() == BLUE  # positive first, then negative: the later event wins
    assert img[1, 2].tolist() == BLUE
    assert img[2, 3].tolist() == RED
    touched = {(0, 1), (1, 2), (2, 3)}
    for y in range(6):
        for x in range(8):
            if (y, x) not in touched:
                assert img[y, x].tolist() == WHITE


def test_empty_window_gives_white_images():
    empty = np.empty(0, dtype=EVENT_DTYPE)
    assert (event_image(empty, 16, 12) == 255).all()
    imgs = event_images(empty, 16, 12, n=5)
    assert imgs.shape == (5, 12, 16, 3) and (imgs == 255).all()


def test_split_by_equal_count_last_takes_remainder():
    assert [(s.start, s.stop) for s in split_by_count(12, 5)] == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 12)]
    assert [(s.start, s.stop) for s in split_by_count(3, 5)] == [(0, 0)] * 4 + [(0, 3)]
    assert [(s.start, s.stop) for s in split_by_count(7, 1)] == [(0, 7)]
    with pytest.raises(ValueError, match="n_chunks"):
        split_by_count(5, 0)


def test_event_images_n5_and_n1():
    ev = events([(i, 0, i * 10, i % 2) for i in range(11)])  # 11 events on row 0
    five = event_images(ev, 16, 4, n=5)
    painted = [(img != 255).any(axis=-1).sum() for img in five]
    assert painted == [2, 2, 2, 2, 3]
    one = event_images(ev, 16, 4, n=1)
    assert one.shape == (1, 4, 16, 3)
    np.testing.assert_array_equal(one[0], event_image(ev, 16, 4))


def test_representations_reject_out_of_sensor_events():
    ev = events([(20, 0, 0, 1)])
    with pytest.raises(ValueError, match="x up to 20"):
        event_image(ev, 16, 12)
    with pytest.raises(ValueError, match="structured array"):
        count_frames(np.zeros(3), 16, 12)


def test_count_frames_per_polarity_and_time_bin():
    ev = events([(0, 0, 0, 1), (0, 0, 10, 1), (1, 1, 49, 0), (1, 1, 50, 0), (2, 0, 99, 1)])
    c = count_frames(ev, 4, 3, n_bins=2, t_start_us=0, t_end_us=100)
    assert c.shape == (2, 2, 3, 4) and c.sum() == 5
    assert c[0, 1, 0, 0] == 2 and c[0, 0, 1, 1] == 1
    assert c[1, 0, 1, 1] == 1 and c[1, 1, 0, 2] == 1
    # default range: the events' own span, one bin holds all
    assert count_frames(ev, 4, 3).sum() == 5


def test_voxel_grid_bilinear_in_time_with_signed_polarity():
    ev = events([(0, 0, 0, 1), (1, 0, 50, 0), (2, 0, 25, 1), (3, 0, 100, 1)])
    v = voxel_grid(ev, 4, 1, n_bins=3, t_start_us=0, t_end_us=100)
    assert v.shape == (3, 1, 4) and v.dtype == np.float32
    np.testing.assert_allclose(v[:, 0, 0], [1, 0, 0])  # t = 0 -> bin 0
    np.testing.assert_allclose(v[:, 0, 1], [0, -1, 0])  # t = 50 -> bin 1, negative
    np.testing.assert_allclose(v[:, 0, 2], [0.5, 0.5, 0])  # t = 25 -> halfway between bins 0 and 1
    np.testing.assert_allclose(v[:, 0, 3], [0, 0, 1])  # last event in the last bin
    # each event contributes its polarity in total
    rng = np.random.default_rng(0)
    many = np.sort(np.array(list(zip(rng.integers(0, 8, 500), rng.integers(0, 6, 500),
                                      rng.integers(0, 10_000, 500), rng.integers(0, 2, 500))), dtype=EVENT_DTYPE),
                   order="t")
    vg = voxel_grid(many, 8, 6, n_bins=5)
    assert vg.sum() == pytest.approx(float((2 * many["p"].astype(int) - 1).sum()), abs=1e-3)
    assert voxel_grid(np.empty(0, EVENT_DTYPE), 8, 6, n_bins=5).shape == (5, 6, 8)
