"""pipeline/train/module.py, in-process without a fit: settings checked at construction, the non-finite
guard through the hooks, LR schedules, checkpoint hooks and FLOPs."""

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.data.stream_stages import ContentBatch
from pipeline.train.generator_config import strength_control_for as _strength_control_for
from pipeline.train.module import StyleTransferModule

from train_helpers import random_photos, touch


# ----------------------------------------------------------------------------------------------
# module.py: construction

def test_strength_control_is_turned_off_with_a_warning_where_the_generator_cannot_have_it() -> None:
    """The control conditions instance norm in the residual generator: elsewhere off, with a warning."""
    assert _strength_control_for(True, "residual", "instance") is True
    assert _strength_control_for(False, "multiscale", "batch") is False
    for arch, norm in [("residual", "batch"), ("residual", "none"), ("multiscale", "instance")]:
        with pytest.warns(UserWarning, match="strength control turned off"):
            assert _strength_control_for(True, arch, norm) is False


@pytest.mark.parametrize("kwargs,message", [
    ({"lr_schedule": "linear"}, "lr_schedule='linear'"),
    ({"stability_weight": -1.0}, "must be ≥ 0"),
    ({"photo_weight": -0.5}, "must be ≥ 0"),
    ({"style_sampling": "epoch"}, "style_sampling='epoch'"),
    ({"style_image": "{a},{b}", "norm": "batch"}, "2 styles in one generator need conditional instance norm"),
    ({"style_image": "{a},{b}", "arch": "multiscale"}, "2 styles in one generator need conditional instance norm"),
], ids=["lr-schedule", "stability-weight", "photo-weight", "style-sampling", "styles-batch-norm", "styles-multiscale"])
def test_module_refuses_bad_settings_before_building_anything(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    """Bad schedules, negative weights, an unknown style sampling or several styles without
    conditional instance norm are refused with a clear error, before the VGG is loaded (the weights
    path given does not exist: loading it first would fail differently)."""
    a, b = touch(tmp_path / "a.png"), touch(tmp_path / "b.png")
    kwargs = {"style_image": str(a), "vgg_weights": str(tmp_path / "absent.pth"), **kwargs}
    kwargs["style_image"] = kwargs["style_image"].format(a=a, b=b)
    with pytest.raises(ValueError) as info:
        StyleTransferModule(**kwargs)
    assert message in str(info.value)


def test_module_properties_name_the_styles_and_say_whether_conditioned(single: StyleTransferModule,
                                                                       duo: StyleTransferModule, style_image: Path) -> None:
    """Names in the order given, one style image (1, 3, h, w ≤ 64) per style, conditioning only
    where there is something to condition on."""
    assert single.style_names == [style_image.stem] and single.n_styles == 1 and not single.conditioned
    assert duo.style_names == [style_image.stem, "brick"] and duo.n_styles == 2 and duo.conditioned
    assert duo.hparams.strength_control is True and single.hparams.strength_control is False
    for image in duo.style_images:
        assert image.shape[:2] == (1, 3) and max(image.shape[2:]) == 64
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0


# ----------------------------------------------------------------------------------------------
# module.py: checkpoints and FLOPs

def test_checkpoint_hooks_drop_the_vgg_keep_counters_and_restore_a_strict_load(duo: StyleTransferModule,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """on_save_checkpoint: no loss.* (VGG) keys, the counters and style names recorded;
    on_load_checkpoint: counters back and the loss keys put back so a strict load works."""
    monkeypatch.setattr(duo, "skipped_samples", 9)
    monkeypatch.setattr(duo, "failed_shards", 4)
    ckpt = {"state_dict": duo.state_dict()}
    assert any(k.startswith("loss.") for k in ckpt["state_dict"])
    duo.on_save_checkpoint(ckpt)
    assert not any(k.startswith("loss.") for k in ckpt["state_dict"])
    assert all(k.startswith("generator.") for k in ckpt["state_dict"])
    assert (ckpt["skipped_samples"], ckpt["failed_shards"], ckpt["styles"]) == (9, 4, duo.style_names)
    duo.skipped_samples = duo.failed_shards = 0
    duo.on_load_checkpoint(ckpt)
    assert (duo.skipped_samples, duo.failed_shards) == (9, 4)
    duo.load_state_dict(ckpt["state_dict"], strict=True)
    old = {"state_dict": {k: v for k, v in duo.state_dict().items() if k.startswith("generator.")}}
    duo.on_load_checkpoint(old)  # a checkpoint from before the counters: they start at 0
    assert (duo.skipped_samples, duo.failed_shards) == (0, 0)


def test_resuming_another_generator_names_both(single: StyleTransferModule, duo: StyleTransferModule) -> None:
    """A checkpoint of another generator (styles, strength control) is refused, saying what the
    checkpoint has and what this run builds, and how to resume it."""
    duo_ckpt = {"state_dict": {f"generator.{k}": v for k, v in duo.generator.state_dict().items()}}
    single_ckpt = {"state_dict": {f"generator.{k}": v for k, v in single.generator.state_dict().items()}}
    with pytest.raises(ValueError) as info:
        single.on_load_checkpoint(duo_ckpt)
    text = str(info.value)
    assert "checkpoint's generator (2 style(s), strength control on)" in text
    assert "this run builds (1 style(s), strength control off)" in text and "--model.strength_control=true" in text
    with pytest.raises(ValueError) as info:
        duo.on_load_checkpoint(single_ckpt)
    text = str(info.value)
    assert "(1 style(s), strength control off)" in text and "(2 style(s), strength control on)" in text
    assert "--model.strength_control=false" in text


def test_flops_per_batch_scale_with_batch_and_pixels_and_are_cached(single: StyleTransferModule, rng: None,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation FLOPs: a batch of 3 counts 3× a batch of 1, 4× the pixels ≈ 4× the FLOPs (convolutions
    and Gram matrices scale with the pixels); one count per (stage, size), and counting leaves the RNG
    as it was."""
    monkeypatch.setattr(single, "_image_flops", {})
    small = random_photos(3, 16, 16)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    per_batch = {}
    for b in (1, 3):
        single.on_validation_batch_start(ContentBatch(images=small[:b], skipped=0, keys=[]), 0)
        per_batch[b] = single.flops_per_batch
    assert per_batch[1] > 0 and per_batch[3] == 3 * per_batch[1]
    assert torch.equal(torch.get_rng_state(), state)
    assert len(single._image_flops) == 1  # the second batch of that size reused the count
    single.on_validation_batch_start(ContentBatch(images=random_photos(1, 32, 32), skipped=0, keys=[]), 0)
    assert single.flops_per_batch / per_batch[1] == pytest.approx(4.0, rel=0.02)
    assert len(single._image_flops) == 2


def test_training_flops_add_two_generator_passes_with_the_stability_term(duo: StyleTransferModule, rng: None,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """on_train_batch_start with the stability term on counts exactly two more generator passes (forward
    and backward) per image the step runs (the batch's photos and its strength samples) than without,
    as counted on the generator alone; on a copy (no gradients left on the module)."""
    from lightning.fabric.utilities.throughput import measure_flops

    x = random_photos(2, 16, 16)
    batch = ContentBatch(images=x, skipped=0, keys=[])
    duo.zero_grad(set_to_none=True)
    counts = {}
    for samples in (0, 1):
        monkeypatch.setitem(duo.hparams, "strength_samples", samples)
        for weight in (0.0, 1.0):
            monkeypatch.setitem(duo.hparams, "stability_weight", weight)
            monkeypatch.setattr(duo, "_image_flops", {})
            duo.on_train_batch_start(batch, 0)
            counts[samples, weight] = duo.flops_per_batch
    assert all(p.grad is None for p in duo.parameters())  # counted on a copy: the module's own weights untouched
    generator = copy.deepcopy(duo.generator)
    one_pass = measure_flops(generator, lambda: generator(x[:1]), lambda y: y.sum())
    assert counts[0, 1.0] - counts[0, 0.0] == 2 * 2 * one_pass  # 2 photos
    assert counts[1, 1.0] - counts[1, 0.0] == 2 * 3 * one_pass  # and one strength sample
    assert counts[1, 0.0] * 2 == counts[0, 0.0] * 3
