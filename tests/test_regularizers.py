"""The temporal-stability regularizer: its warp against exact pixel shifts, and its value for
generators whose answer is known."""
from __future__ import annotations

import torch

from pipeline.train.regularizers import NOISE_STD, random_affine, stability_loss, warp


def shift_theta(dx: float, dy: float, h: int, w: int) -> torch.Tensor:
    """affine_grid matrix of sampling the input at (x + dx, y + dy): content moves by (−dx, −dy)."""
    return torch.tensor([[[1.0, 0.0, 2 * dx / w], [0.0, 1.0, 2 * dy / h]]])


def test_integer_shift_warp_is_an_exact_pixel_shift_and_masks_the_entered_columns():
    x = torch.rand(1, 3, 20, 30)
    warped, mask = warp(x, shift_theta(2, 0, 20, 30))
    torch.testing.assert_close(warped[..., :28], x[..., 2:], rtol=0, atol=1e-5)
    assert mask[..., :28].min() == 1 and mask[..., 28:].max() == 0


def test_identity_generator_has_no_warp_term_and_the_noise_term_is_the_noise_power():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 64, 64) * 0.8 + 0.1  # away from 0 and 1: the clamp does not cut the noise
    value = stability_loss(lambda z: z, x, x).item()
    assert abs(value - NOISE_STD ** 2) < 0.05 * NOISE_STD ** 2, value
    constant = stability_loss(lambda z: torch.full_like(z, 0.5), x, torch.full_like(x, 0.5)).item()
    assert constant < 1e-10  # a generator that ignores its input is perfectly stable


def test_random_moves_stay_small():
    theta = random_affine(64, 128, 160, torch.device("cpu"))
    x = torch.rand(64, 3, 128, 160)
    _, mask = warp(x, theta)
    assert mask.mean() > 0.9  # at most a few px of border leave the view
    assert (theta[:, :, :2] - torch.eye(2)).abs().max() < 0.05


def test_the_warp_of_a_bf16_output_under_autocast_samples_at_fp32_positions():
    """Under bf16 autocast the generator's output is bf16; its warp must still sample where theta
    says: a 1.5 px shift of a 256 px ramp whose values (column indices) bf16 holds exactly lands
    within 0.01 px (a bf16 sampling grid was up to ~0.5 px off)."""
    ramp = torch.arange(256.0).expand(1, 3, 64, 256)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        warped, _ = warp(ramp.bfloat16(), shift_theta(1.5, 0, 64, 256))
    assert warped.dtype == torch.float32
    torch.testing.assert_close(warped[..., :250], ramp[..., 1:251] + 0.5, rtol=0, atol=0.01)
