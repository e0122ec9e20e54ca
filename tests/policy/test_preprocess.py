import numpy as np
import pytest

from cosmos_policy.policy import preprocess as P


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    return np.kron(base, np.ones((16, 16, 1), dtype=np.uint8))  # 256 x 256, smooth enough for JPEG


def test_jpeg_round_trip_is_lossy_but_close(image):
    out = P.jpeg_round_trip(image)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not np.array_equal(out, image)
    assert np.abs(out.astype(int) - image).mean() < 8


def test_resize_and_center_crop(image):
    resized = P.resize_square(image)
    assert resized.shape == (224, 224, 3) and resized.dtype == np.uint8
    assert P.resize_square(resized) is not resized and np.array_equal(P.resize_square(resized), resized)
    flat = np.full((224, 224, 3), 77, np.uint8)
    assert np.array_equal(P.center_crop_and_resize(flat), flat)  # a constant image stays constant
    # the crop keeps the centre: a 212-pixel-wide window starting at 6, stretched back to 224
    ramp = np.tile(np.arange(224, dtype=np.uint8)[None, :, None], (224, 1, 3))
    cropped = P.center_crop_and_resize(ramp)
    assert cropped.shape == (224, 224, 3)
    assert abs(int(cropped[100, 0, 0]) - 6) <= 1 and abs(int(cropped[100, -1, 0]) - 217) <= 1


def test_prepare_image_order(image):
    plain = P.prepare_image(image, jpeg_compression=False, trained_with_image_aug=False)
    assert np.array_equal(plain, P.resize_square(image))
    full = P.prepare_image(image, jpeg_compression=True, trained_with_image_aug=True)
    assert np.array_equal(full, P.center_crop_and_resize(P.resize_square(P.jpeg_round_trip(image))))
    assert P.prepare_image(image, jpeg_compression=False, trained_with_image_aug=False, size=64).shape == (64, 64, 3)
