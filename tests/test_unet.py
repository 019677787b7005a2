"""The small U-Net of notebook 06: shapes, BatchNorm, clear errors."""
import pytest
import torch
from torch import nn

from mfmda_lib.models.unet import OUTPUT_CHANNELS, UNet, UNetConfig


@pytest.mark.parametrize("size, depth", [(64, 3), (96, 3), (32, 2)])
def test_unet_maps_images_to_disc_and_cup_logits_of_the_same_size(size, depth):
    model = UNet(UNetConfig(base_channels=4, depth=depth))
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, len(OUTPUT_CHANNELS), size, size) == (2, 2, size, size)


def test_unet_has_batchnorm_in_every_conv_block_and_gradients_reach_the_input_layer():
    model = UNet(UNetConfig(base_channels=4, depth=2))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == len(convs) == 2 * (2 * 2 + 1)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert model.down[0][0].weight.grad.abs().sum() > 0


def test_unet_rejects_bad_inputs_and_configs():
    model = UNet(UNetConfig(base_channels=4, depth=3))
    with pytest.raises(ValueError, match="divisible by 8"):
        model(torch.randn(1, 3, 60, 60))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="base_channels"):
        UNetConfig(base_channels=0)
