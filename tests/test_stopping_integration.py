"""stop="auto" end to end: the iterate the auto rule returns is close to the best iterate.

One fit per network with the ground truth tracked, run past the peak for a fixed number of
iterations. The auto rule of the (denoise, network) pair is built the way
:func:`deepprior.reconstruct` builds it (σ estimated from the noisy image) and fed every
iteration without being allowed to stop the fit. A stopping rule does not change the
trajectory, so the iterate the rule picks here is the iterate ``stop="auto"`` returns, and the
oracle is the best iterate of the same fit.

Settings are the smallest that still show the behaviour the rules are for (a peak, then
overfitting): 64² images (the networks' smallest native size) at σ = 50, where the peak comes
early; the Deep Image Prior's skip network with 32 instead of 128 channels (same depth, same
peak iteration as the default, about 2/3 of its time per iteration on one core: the Deep Image
Prior is the slow part of this file); the Deep Decoder with its defaults, on the colour image.
"""

import numpy as np
import pytest
import torch

from deepprior import Identity, add_gaussian_noise, estimate_sigma, reconstruct, sample_image
from deepprior.api import AUTO_STOP, image_to_tensor
from deepprior.stopping import FirstOf, build_policy, parse_policy


class Watch:
    """Feed a stopping rule every iteration and remember where it fires; never stop the fit."""

    def __init__(self, rule):
        self.rule = rule
        self.needs_unperturbed_output = getattr(rule, "needs_unperturbed_output", False)
        self.rule_stop = None
        self.rule_choice = None
        self._step = 0

    @property
    def best_step(self):
        return self._step

    @property
    def candidates(self):
        return frozenset({self._step})

    @property
    def reason(self):
        return "watching only"

    def update(self, step, loss, output):
        self._step = step
        if self.rule_stop is None and self.rule.update(step, loss, output):
            self.rule_stop, self.rule_choice = step, self.rule.best_step
        return False

    def finalize(self, last_step):
        if self.rule_stop is None:
            self.rule.finalize(last_step)
            self.rule_stop, self.rule_choice = last_step, self.rule.best_step


def _auto_rule(net, noisy):
    """The auto rule of (denoise, net), built as reconstruct builds it (no hold-out split)."""
    shape = image_to_tensor(noisy).shape[1:]
    context = {"operator": Identity(shape), "y": image_to_tensor(noisy),
               "sigma": estimate_sigma(noisy)}
    specs = parse_policy(AUTO_STOP[("denoise", net)])
    assert all(spec.name != "holdout" for spec in specs), "this test builds no hold-out split"
    rules = [build_policy(spec, **context) for spec in specs]
    return rules[0] if len(rules) == 1 else FirstOf(*rules)


@pytest.mark.parametrize(
    ("net", "image", "sigma", "options", "num_iter"),
    [
        ("dip", "camera", 50, {"channels": 32}, 450),
        ("deep_decoder", "astronaut", 50, None, 2000),
    ],
)
def test_auto_returns_an_iterate_within_1_5_db_of_the_oracle(net, image, sigma, options,
                                                              num_iter):
    clean = sample_image(image, size=64)
    noisy = add_gaussian_noise(clean, sigma / 255, seed=0)
    watch = Watch(_auto_rule(net, noisy))
    result = reconstruct(noisy, net=net, stop=watch, max_num_iter=num_iter, ground_truth=clean,
                         seed=0, net_options=options)
    psnr = result.history["psnr"]  # of the iterate the loop returns at each step (DIP: the EMA)
    best = float(psnr.max())

    assert result.num_steps == num_iter and watch.rule_stop < num_iter  # the rule fired
    # the fit went past the peak and the network overfits: when to stop matters here
    assert psnr[-1] < best - 0.3
    returned = float(psnr[watch.rule_choice - 1])
    assert returned >= best - 1.5, (
        f"auto ({AUTO_STOP[('denoise', net)]}) picked iteration {watch.rule_choice} at "
        f"{returned:.2f} dB; the best iterate, {int(psnr.argmax()) + 1}, has {best:.2f} dB"
    )


def test_reconstruct_resolves_auto_to_the_table_rule():
    clean = sample_image("camera", size=64)
    noisy = add_gaussian_noise(clean, 25 / 255, seed=0)
    for net in ("deep_decoder", "dip"):
        result = reconstruct(noisy, net=net, stop="auto", max_num_iter=2, seed=0,
                             net_options={"channels": 8})
        expected = "+".join(spec.name for spec in parse_policy(AUTO_STOP[("denoise", net)]))
        assert result.config["stop_resolved"] == expected
        assert result.config["sigma"] == pytest.approx(estimate_sigma(noisy))
    assert torch.get_default_dtype() == torch.float32
    assert np.isfinite(result.image).all()
