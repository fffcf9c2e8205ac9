"""The UNet: reference parameter counts (algorithm.md §5.3), padding, zero-initialised output,
attention placed by pixel size."""
import pytest
import torch

from structgen.diffusion.conditioning import mlp
from structgen.diffusion.unet import Attention, UNet, UNetSpec, timestep_embedding


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def n_params(module):
    return sum(p.numel() for p in module.parameters())


# The reference's signal MLPs: Linear(z_dim -> 4 dim) - SiLU - Linear(4 dim -> 4 dim).
def ref_mlp(z_dim, dim):
    return n_params(mlp(z_dim, 4 * dim))


@pytest.mark.parametrize("shape, dim, attn, signal, reference", [
    ((1, 28, 28), 64, [], [(1, 64)], 9_326_593),            # DTV MNIST: leaf index as a float
    ((3, 32, 32), 64, [], [(1, 64)], 9_330_051),            # DTV CIFAR-10
    ((1, 28, 28), 64, [], [(64, 64), (1, 64)], 9_409_025),  # TD MNIST: path (z 16x2x2) + node id
])
def test_backbone_matches_the_reference_parameter_counts(shape, dim, attn, signal, reference):
    # The reference's attention list never matches (§8.3): only the middle block attends, which
    # is attn_resolutions = [] here. Its signal MLPs are added to our backbone's count.
    unet = UNet(UNetSpec(shape, dim=dim, attn_resolutions=attn))
    assert n_params(unet) + sum(ref_mlp(z, d) for z, d in signal) == reference
    assert sum(isinstance(m, Attention) for m in unet.modules()) == 1


def test_td_cifar_attention_at_4_pixels_matches_its_parameter_count():
    # TD CIFAR: dim 128, attention at downsample factor 8 = 4x4 pixels, path signal with z_dim 1024.
    unet = UNet(UNetSpec((3, 32, 32), dim=128, attn_resolutions=[4], dropout=0.1))
    assert n_params(unet) + ref_mlp(1024, 128) + ref_mlp(1, 128) == 39_361_795
    assert sum(isinstance(m, Attention) for m in unet.modules()) == 6


def test_attention_goes_where_the_feature_map_has_the_configured_pixel_size():
    spec = UNetSpec((1, 28, 28), dim=16, n_heads=4, attn_resolutions=[16], n_residual=1)
    unet = UNet(spec)
    assert spec.padded_side == 32 and spec.level_sizes() == [32, 16, 8, 4]
    # one down block + two up blocks at 16 px, plus the middle block
    assert sum(isinstance(m, Attention) for m in unet.modules()) == 4
    sizes = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: sizes.append(out.shape[-1]))
             for m in unet.modules() if isinstance(m, Attention)]
    unet(torch.zeros(2, 1, 28, 28), torch.tensor([1, 2]), torch.zeros(2, 1, 28, 28))
    for h in hooks:
        h.remove()
    assert sorted(sizes) == [4, 16, 16, 16]


def test_a_resolution_that_never_occurs_is_an_error_naming_the_sizes():
    with pytest.raises(ValueError, match=r"\[32, 16, 8, 4\]"):
        UNet(UNetSpec((1, 28, 28), dim=16, n_heads=4, attn_resolutions=[7]))


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_output_has_the_input_shape_and_starts_at_zero(shape):
    unet = UNet(UNetSpec(shape, dim=16, n_heads=4, attn_resolutions=[], n_residual=1)).eval()
    x = torch.randn(3, *shape)
    out = unet(x, torch.tensor([0, 10, 999]), x)
    assert out.shape == x.shape and torch.count_nonzero(out) == 0      # zero-initialised output conv
    torch.nn.init.normal_(unet.out[-1].weight)
    out = unet(x, torch.tensor([0, 10, 999]), x)
    assert out.abs().min() > 0                                           # and it is cropped, not zero-padded
    # The residual branches also start at zero, so t only matters once they have learned something.
    assert torch.allclose(out, unet(x, torch.tensor([500, 10, 999]), x))
    for block in unet.modules():
        if hasattr(block, "out_layers"):
            torch.nn.init.normal_(block.out_layers[-1].weight, std=0.1)
    out = unet(x, torch.tensor([0, 10, 999]), x)
    assert not torch.allclose(out[0], unet(x, torch.tensor([500, 10, 999]), x)[0])


def test_timestep_embedding_is_cos_then_sin_at_geometric_frequencies():
    emb = timestep_embedding(torch.tensor([0, 3]), 8)
    assert torch.allclose(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 4)
    assert torch.allclose(emb[1], torch.cat([torch.cos(3 * freqs), torch.sin(3 * freqs)]), atol=1e-6)
