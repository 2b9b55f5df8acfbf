import pytest
import torch

from reconattack.models.cfgan import CoarseGenerator, Discriminator, FineGenerator, adain
from reconattack.models.common import count_parameters

SMALL = dict(enc_channels=(16, 32, 32), dec_channels=(32, 16, 8))


def test_paper_parameter_counts_match_official_code():
    # official code: coarse G 76.6M, fine G 106.8M, each D 4.6M (SPEC §2.2)
    assert count_parameters(CoarseGenerator()) == 76_608_210
    assert count_parameters(FineGenerator(fusion="official")) == 106_777_810
    assert count_parameters(FineGenerator(fusion="paper")) == 106_777_810
    assert count_parameters(Discriminator()) == 4_591_281


@pytest.mark.parametrize("fusion", ["paper", "official", "concat"])
@pytest.mark.parametrize("compress", [True, False])
def test_generators_shapes(fusion, compress):
    image, s = 32, (16 if compress else 32)
    scale = image // s
    sift = torch.randn(2, 128, s, s)
    coarse = CoarseGenerator(final_scale=scale, **SMALL)(sift)
    assert coarse.shape == (2, 3, image, image)
    fine = FineGenerator(final_scale=scale, fusion=fusion, **SMALL)
    assert fine(sift, coarse).shape == (2, 3, image, image)


def test_tanh_output_is_bounded():
    g = CoarseGenerator(output_activation="tanh", **SMALL)
    out = g(torch.randn(2, 128, 16, 16) * 50)
    assert out.abs().max() <= 1


def test_fine_paper_fusion_uses_the_coarse_image():
    torch.manual_seed(0)
    g = FineGenerator(**SMALL).train()  # fresh eval-mode BN would scale signals to ~1e-9
    sift = torch.randn(1, 128, 16, 16)
    a = g(sift, torch.rand(1, 3, 32, 32))
    b = g(sift, torch.rand(1, 3, 32, 32))
    # (eval-mode outputs of a fresh net are tiny: compare relative to their scale)
    assert (a - b).abs().max() > 1e-2 * a.abs().max()


def test_adain_matches_formula():
    torch.manual_seed(0)
    c, s = torch.randn(2, 4, 5, 6) * 3 + 1, torch.randn(2, 4, 7, 3) * 0.5 - 2
    out = adain(c, s)
    cm, cs = c.mean((2, 3), keepdim=True), (c.var((2, 3), keepdim=True) + 1e-5).sqrt()
    sm, ss = s.mean((2, 3), keepdim=True), (s.var((2, 3), keepdim=True) + 1e-5).sqrt()
    torch.testing.assert_close(out, (c - cm) / cs * ss + sm)
    torch.testing.assert_close(out.mean((2, 3)), s.mean((2, 3)), atol=1e-5, rtol=0)


def test_discriminator_outputs_logits_and_checks_levels():
    d = Discriminator(image_size=64, stem=4, channels=(8, 8, 8, 8))
    out = d(torch.randn(3, 3, 64, 64))
    assert out.shape == (3,)
    with pytest.raises(ValueError, match="4 entries"):
        Discriminator(image_size=64, stem=4, channels=(8, 8, 8))
    with pytest.raises(ValueError, match="dec_channels"):
        CoarseGenerator(enc_channels=(8, 8), dec_channels=(8,))
    with pytest.raises(ValueError, match="fusion"):
        FineGenerator(fusion="sum", **SMALL)
