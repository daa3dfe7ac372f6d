import numpy as np
import pytest
from PIL import Image

from effnet_ray.inputs.preprocessing import centered_box, decode, preprocess_bytes, short_side_size
from effnet_ray.inputs.samples import ImageError
from effnet_ray.models.registry import get_spec
from tests.reference import omz_preprocess

MODELS = ["efficientnet-b7-pytorch", "efficientnet-b7_auto_aug", "efficientnet-lite0"]
ODD = ["wide.jpg", "tall.jpg", "small.png", "gray.png", "rgba.png", "odd602.png", "palette.gif"]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("name", ODD)
def test_matches_an_independent_reading_of_omz(odd_photos, model, name):
    path = odd_photos / name
    ours = preprocess_bytes(path.read_bytes(), get_spec(model))
    theirs = omz_preprocess(path, model)
    assert ours.dtype == np.uint8 and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)


def test_crop_offset_rounds_half_to_even_like_omz():
    # margin 351 -> 175.5 -> round() gives 176, floor division would give 175
    assert centered_box(951, 632, 600, 600) == (176, 16, 776, 616)
    # margin 349 -> 174.5 -> 174 (half to even rounds down here)
    assert centered_box(949, 632, 600, 600)[0] == 174


def test_short_side_resize_truncates_the_long_side():
    assert short_side_size(602, 400, 632) == (951, 632)  # 951.16 -> 951
    assert short_side_size(400, 602, 632) == (632, 951)
    assert short_side_size(500, 500, 632) == (632, 632)


def test_one_pixel_image_still_gives_a_full_input():
    image = Image.new("RGB", (1, 1), (200, 10, 10))
    import io
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    for model in MODELS:
        spec = get_spec(model)
        out = preprocess_bytes(buf.getvalue(), spec)
        assert out.shape == (spec.input.height, spec.input.width, 3)
        assert (out == (200, 10, 10)).all()


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (60, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert decode(path.read_bytes()).size == (20, 60)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"this is text, not an image", "not a recognised image"),
])
def test_bad_bytes_give_a_reason(data, reason):
    with pytest.raises(ImageError, match=reason):
        decode(data)


def test_truncated_jpeg_is_an_error(odd_photos):
    data = (odd_photos / "wide.jpg").read_bytes()
    with pytest.raises(ImageError, match="undecodable"):
        decode(data[: len(data) // 2])


def test_too_many_pixels_refused_before_decoding(odd_photos):
    with pytest.raises(ImageError, match="too many pixels"):
        decode((odd_photos / "wide.jpg").read_bytes(), max_pixels=1000)
