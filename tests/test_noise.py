import numpy as np
import pytest

from deepprior.noise import add_gaussian_noise, estimate_noise_level, estimate_sigma


def test_noise_is_seeded_and_leaves_global_state():
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    image = np.full((23, 17), 0.5, dtype=np.float32)
    a = add_gaussian_noise(image, 0.1, seed=3)
    b = add_gaussian_noise(image, 0.1, seed=3)
    c = add_gaussian_noise(image, 0.1, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.float32 and a.shape == image.shape
    np.testing.assert_array_equal(np.random.get_state()[1], state)


def test_noise_level_and_clip():
    image = np.full((200, 200, 3), 0.5, dtype=np.float32)
    noisy = add_gaussian_noise(image, 0.1, seed=0)
    assert np.std(noisy - image) == pytest.approx(0.1, rel=0.02)
    clipped = add_gaussian_noise(np.zeros((50, 50)), 0.2, seed=0, clip=True)
    assert clipped.min() >= 0.0 and clipped.max() <= 1.0


def test_invalid_sigma():
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0"):
        add_gaussian_noise(np.zeros((4, 4)), -0.1)
    with pytest.warns(UserWarning, match="above 1"):
        add_gaussian_noise(np.zeros((4, 4)), 25.0)


@pytest.mark.parametrize("sigma", [15 / 255, 25 / 255, 50 / 255])
def test_estimate_sigma_on_photo(sigma):
    from deepprior.data import sample_image

    clean = sample_image("camera", size=128)
    noisy = add_gaussian_noise(clean, sigma, seed=0)
    assert estimate_sigma(noisy) == pytest.approx(sigma, rel=0.15)


def test_estimate_sigma_colour_and_errors():
    from deepprior.data import sample_image

    noisy = add_gaussian_noise(sample_image("astronaut", size=96), 25 / 255, seed=1)
    assert estimate_sigma(noisy) == pytest.approx(25 / 255, rel=0.2)
    with pytest.raises(ValueError, match=r"must be \(H, W\) or \(H, W, C\)"):
        estimate_sigma(np.zeros(10))


def test_an_estimate_beyond_the_scale_is_refused_where_a_fit_would_use_it():
    from deepprior import reconstruct

    checker = (np.indices((16, 16)).sum(0) % 2).astype(np.float32)
    assert estimate_sigma(checker) == pytest.approx(1.48, abs=0.01)  # the estimator: a number
    with pytest.raises(ValueError, match=r"estimated from the image, 1.48 \(378 in 0-255 units\)"
                                         r", is above 0.5.*; pass sigma=\.\.\. if it is noise$"):
        estimate_noise_level(checker)
    with pytest.raises(ValueError, match="is above 0.5"):  # before the fit
        reconstruct(checker, net="deep_decoder", max_num_iter=1, callback=pytest.fail)
    noisy = add_gaussian_noise(np.full((16, 16), 0.5), 0.1, seed=0)
    assert estimate_noise_level(noisy) == estimate_sigma(noisy)


def test_an_alpha_channel_is_said_to_be_averaged_in():
    rgb = add_gaussian_noise(np.full((16, 16, 3), 0.5), 0.1, seed=0)
    with pytest.warns(UserWarning, match=r"4 channels.*alpha.*image\[\.\.\., :3\]"):
        estimate_sigma(np.concatenate([rgb, np.ones((16, 16, 1), np.float32)], axis=2))


@pytest.mark.parametrize("function", [estimate_sigma,
                                      lambda image: add_gaussian_noise(image, 0.1)])
def test_images_on_the_wrong_scale_or_with_nan_are_refused(function):
    from deepprior.data import sample_image

    clean = sample_image("camera", size=16)
    with pytest.raises(ValueError, match=r"holds integers up to \d+, .*: divide 8-bit data by "
                                         r"255"):
        function((clean * 255).round().astype(np.uint8))
    with pytest.raises(ValueError, match=r"values go up to [\d.]+, beyond the \[0, 1\] scale: "
                                         r"divide 8-bit data by 255"):
        function(clean * 255)  # as floats
    with pytest.raises(ValueError, match="NaN"):  # estimate_sigma gave its floor, 1e-06
        function(np.where(clean > 0.5, np.nan, clean))


def test_a_channels_first_image_is_refused_by_the_estimate():
    from deepprior.data import sample_image

    noisy = add_gaussian_noise(sample_image("astronaut", size=32), 25 / 255, seed=0)
    with pytest.raises(ValueError, match=r"looks like \(C, H, W\).*np.moveaxis"):
        estimate_sigma(noisy.transpose(2, 0, 1))  # read along the wrong axes: 0.0715, not 0.10
    with pytest.raises(ValueError, match="at least 2x2"):
        estimate_sigma(np.zeros((1, 64)))


def test_noise_arguments_are_checked():
    with pytest.raises(TypeError, match="sigma must be a number"):
        add_gaussian_noise(np.zeros((4, 4)), "0.1")
    with pytest.raises(TypeError, match="seed must be an integer"):
        add_gaussian_noise(np.zeros((4, 4)), 0.1, seed=1.5)
    with pytest.raises(TypeError, match="seed must be an integer"):
        add_gaussian_noise(np.zeros((4, 4)), 0.1, seed=None)  # not reproducible


def test_an_odd_sided_image_is_estimated_without_its_padding_bias():
    from deepprior.data import sample_image

    estimates = [estimate_sigma(add_gaussian_noise(sample_image("camera", size=17), 0.1,
                                                   seed=seed)) for seed in range(20)]
    assert np.median(estimates) == pytest.approx(0.1, rel=0.1)  # 0.082 uncropped


def test_a_dark_8_bit_frame_is_refused_where_images_are_on_the_unit_scale():
    """Values 0-2 in a uint8 array passed the [0, 2] scale check once made float: a 255x
    error in σ. 0/1 integers (a binary image) stay accepted."""
    from deepprior import reconstruct

    dark = np.random.default_rng(0).integers(0, 3, (16, 16)).astype(np.uint8)
    for call in (estimate_sigma, lambda a: add_gaussian_noise(a, 0.1),
                 lambda a: reconstruct(a, max_num_iter=1)):
        with pytest.raises(ValueError, match="holds integers up to 2, and an image on the "
                                             r"\[0, 1\] scale holds 0 and 1 at most"):
            call(dark)
    assert estimate_sigma((dark > 1).astype(np.uint8)) > 0
