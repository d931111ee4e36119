"""SoVITS discriminators (MPD + S) and the LSGAN losses."""

from __future__ import annotations

import pytest
import torch

from models.checkpoints import CheckpointError
from models.discriminators import (
    DiscriminatorConfig,
    DiscriminatorP,
    DiscriminatorS,
    MultiPeriodDiscriminator,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    load_discriminator,
)
from narrator.errors import NarratorError

SEGMENT = 20480


@pytest.fixture(scope="module")
def mpd():
    torch.manual_seed(0)
    return MultiPeriodDiscriminator()


@pytest.fixture(scope="module")
def outputs(mpd):
    torch.manual_seed(1)
    y = torch.randn(2, 1, SEGMENT) * 0.1
    y_hat = (torch.randn(2, 1, SEGMENT) * 0.1).requires_grad_()
    return y, y_hat, mpd(y, y_hat)


def test_config_periods():
    assert DiscriminatorConfig().periods == (2, 3, 5, 7, 11)
    assert DiscriminatorConfig.v2pro().periods == (2, 3, 5, 7, 11, 17, 23)
    assert DiscriminatorConfig.for_version("v2ProPlus").periods == (2, 3, 5, 7, 11, 17, 23)
    with pytest.raises(ValueError):
        DiscriminatorConfig((2, 0))


def test_output_counts_and_shapes(outputs):
    _, _, (real, fake, real_f, fake_f) = outputs
    assert len(real) == len(fake) == len(real_f) == len(fake_f) == 6
    # S: four stride-4 convs -> 20480 / 256 = 80 logits
    assert real[0].shape == fake[0].shape == (2, 80)
    for i, p in enumerate((2, 3, 5, 7, 11), start=1):
        h = -(-SEGMENT // p)  # frames after reflect padding to a multiple of p
        for _ in range(4):
            h = (h - 1) // 3 + 1  # kernel 5, stride 3, padding 2
        assert real[i].shape == fake[i].shape == (2, h * p)
    assert [len(f) for f in real_f] == [7, 6, 6, 6, 6, 6]
    assert [len(f) for f in fake_f] == [7, 6, 6, 6, 6, 6]
    assert [t.shape[1] for t in real_f[0]] == [16, 64, 256, 1024, 1024, 1024, 1]
    assert [t.shape[1] for t in real_f[3]] == [32, 128, 512, 1024, 1024, 1]
    assert all(t.shape[-1] == 5 for t in real_f[3])
    for rf, ff in zip(real_f, fake_f):
        assert [t.shape for t in rf] == [t.shape for t in ff]


def test_v2pro_has_seven_period_discriminators():
    torch.manual_seed(0)
    m = MultiPeriodDiscriminator(DiscriminatorConfig.v2pro())
    assert len(m.discriminators) == 8
    assert [d.period for d in m.discriminators[1:]] == [2, 3, 5, 7, 11, 17, 23]
    x = torch.randn(1, 1, 4096)
    with torch.no_grad():
        real, fake, rf, ff = m(x, x)
    assert len(real) == len(fake) == len(rf) == len(ff) == 8
    assert [len(f) for f in rf] == [7] + [6] * 7
    # odd length: reflect padding to a multiple of 23
    with torch.no_grad():
        logits, fmaps = DiscriminatorP(23)(torch.randn(1, 1, 1000))
    assert fmaps[0].shape[-1] == 23 and logits.shape[0] == 1


def test_state_dict_key_names(mpd):
    sd = mpd.state_dict()
    for key in (
        "discriminators.0.convs.0.weight_g",
        "discriminators.0.convs.0.weight_v",
        "discriminators.0.convs.5.bias",
        "discriminators.0.conv_post.weight_v",
        "discriminators.1.convs.4.weight_v",
        "discriminators.1.convs.0.weight_g",
        "discriminators.5.conv_post.bias",
        "discriminators.5.conv_post.weight_g",
    ):
        assert key in sd, key
    assert not any(k.endswith(".weight") for k in sd)
    assert all(k.endswith((".weight_g", ".weight_v", ".bias")) for k in sd)
    assert len(sd) == 3 * (7 + 5 * 6)
    assert sd["discriminators.0.convs.1.weight_v"].shape == (64, 4, 41)
    assert sd["discriminators.0.convs.1.weight_g"].shape == (64, 1, 1)
    assert sd["discriminators.1.convs.0.weight_v"].shape == (32, 1, 5, 1)
    assert sd["discriminators.1.convs.0.weight_g"].shape == (32, 1, 1, 1)
    assert sd["discriminators.2.conv_post.weight_v"].shape == (1, 1024, 3, 1)


def test_parameter_count(mpd):
    # 5-period MPD + S, weight_g and weight_v both counted: the known ~46.7 M of VITS
    assert sum(p.numel() for p in mpd.parameters()) == 46_747_132
    assert sum(p.numel() for p in DiscriminatorS().parameters()) == 5_641_362
    assert sum(p.numel() for p in DiscriminatorP(2).parameters()) == 8_221_154


def test_weight_norm_initial_weight_matches_v():
    conv = DiscriminatorS().convs[2]
    torch.testing.assert_close(conv.compute_weight(), conv.weight_v)


def test_losses_ideal_values():
    ones = [torch.ones(2, 5), torch.ones(2, 3)]
    zeros = [torch.zeros(2, 5), torch.zeros(2, 3)]
    assert discriminator_loss(ones, zeros).item() == 0.0
    assert discriminator_loss(zeros, ones).item() == pytest.approx(4.0)
    assert generator_adversarial_loss(ones).item() == 0.0
    assert generator_adversarial_loss(zeros).item() == pytest.approx(2.0)
    fm = [[torch.randn(2, 4, 7), torch.randn(2, 1, 7)], [torch.randn(2, 3, 2, 5)]]
    same = [[t.clone() for t in d] for d in fm]
    assert feature_matching_loss(fm, same).item() == 0.0
    shifted = [[t + 0.5 for t in d] for d in fm]
    assert feature_matching_loss(fm, shifted).item() == pytest.approx(2 * 0.5 * 3)


def test_gradients_flow_to_y_hat_not_real(outputs):
    y, y_hat, (real, fake, real_f, fake_f) = outputs
    loss = generator_adversarial_loss(fake) + feature_matching_loss(real_f, fake_f)
    assert loss.item() > 0
    grad, = torch.autograd.grad(loss, y_hat, retain_graph=True)
    assert grad.abs().sum() > 0
    # feature matching detaches the real maps; D loss on real logits reaches D parameters
    d_loss = discriminator_loss(real, [f.detach() for f in fake])
    assert d_loss.item() > 0
    assert torch.autograd.grad(d_loss, y_hat, allow_unused=True)[0] is None


def test_bad_input_shape(mpd):
    with pytest.raises(ValueError):
        mpd(torch.zeros(1, 2048), torch.zeros(1, 2048))


def test_save_load_round_trip(tmp_path, mpd):
    path = tmp_path / "D_test.pth"
    torch.save({"model": mpd.state_dict(), "iteration": 3, "learning_rate": 1e-4}, path)
    loaded = load_discriminator(path)
    assert loaded.config.periods == (2, 3, 5, 7, 11)
    for (k, a), (k2, b) in zip(mpd.state_dict().items(), loaded.state_dict().items()):
        assert k == k2
        assert torch.equal(a, b)
    x = torch.randn(1, 1, 2048)
    with torch.no_grad():
        assert torch.equal(mpd.discriminators[0](x)[0], loaded.discriminators[0](x)[0])
    # bare state dict and "weight" container work too
    torch.save(mpd.state_dict(), path)
    assert len(load_discriminator(path).discriminators) == 6
    torch.save({"weight": mpd.state_dict()}, path)
    assert len(load_discriminator(path).discriminators) == 6


def test_load_infers_v2pro_periods(tmp_path):
    torch.manual_seed(0)
    m = MultiPeriodDiscriminator(DiscriminatorConfig.v2pro())
    path = tmp_path / "D_pro.pth"
    torch.save({"model": {k: v.half() for k, v in m.state_dict().items()}}, path)
    loaded = load_discriminator(path)
    assert loaded.config.periods == (2, 3, 5, 7, 11, 17, 23)
    assert loaded.discriminators[7].convs[0].weight_v.dtype == torch.float32


def test_bad_files(tmp_path, mpd):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_discriminator(tmp_path / "nope.pth")
    assert issubclass(CheckpointError, NarratorError)

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"hello, not a checkpoint")
    with pytest.raises(NarratorError):
        load_discriminator(junk)

    gpt = tmp_path / "gpt.ckpt"
    torch.save({"weight": {"model.ar_text_embedding.word_embeddings.weight": torch.zeros(2, 2)},
                "config": {"model": {"phoneme_vocab_size": 732}}}, gpt)
    with pytest.raises(CheckpointError, match="GPT"):
        load_discriminator(gpt)

    g = tmp_path / "g.pth"
    torch.save({"weight": {"dec.ups.0.weight_g": torch.zeros(2, 1, 1), "enc_p.x": torch.zeros(1)}}, g)
    with pytest.raises(CheckpointError, match="generator"):
        load_discriminator(g)

    sd = dict(mpd.state_dict())
    del sd["discriminators.2.convs.1.weight_g"]
    sd["discriminators.2.extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save({"model": sd}, bad)
    with pytest.raises(CheckpointError, match="missing 1 key.*unexpected 1 key"):
        load_discriminator(bad)

    sd = dict(mpd.state_dict())
    sd["discriminators.1.conv_post.bias"] = torch.zeros(2)
    torch.save({"model": sd}, bad)
    with pytest.raises(CheckpointError, match="wrong shapes"):
        load_discriminator(bad)

    # 7 discriminators fits neither v2 nor v2Pro unless periods are given
    sd = {k: v for k, v in MultiPeriodDiscriminator(DiscriminatorConfig((2, 3, 5, 7, 11, 13))).state_dict().items()}
    torch.save({"model": sd}, bad)
    with pytest.raises(CheckpointError, match="holds 7 discriminators"):
        load_discriminator(bad)
    assert load_discriminator(bad, periods=(2, 3, 5, 7, 11, 13)).config.periods[-1] == 13
    with pytest.raises(CheckpointError, match="does not fit"):
        load_discriminator(bad, periods=(2, 3, 5, 7, 11))
