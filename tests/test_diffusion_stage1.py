"""MFM-DA stage 1: DIAA initial state, loss weights, L_DC, resumable adaptation, generation metrics."""
import numpy as np
import pytest
import torch
from torch import nn

from mfmda_lib.diffusion.adaptation import Stage1Config, adapt
from mfmda_lib.diffusion.conditioned import ContentConditionedUNet
from mfmda_lib.diffusion.ddpm import DDPMConfig, alphas_cumprod, build_unet
from mfmda_lib.diffusion.diaa import DIAA
from mfmda_lib.diffusion.features import FrozenFeatureEncoder
from mfmda_lib.diffusion.losses import A_MAX, a_weight, distribution_consistency_loss, stage1_weights, style_loss
from mfmda_lib.diffusion.metrics import frechet_distance, intra_cluster_diversity
from mfmda_lib.diffusion.stage1 import translated_source
from mfmda_lib.diffusion.training import make_accelerator
from mfmda_lib.profiles import PROFILES

TINY = DDPMConfig(image_size=16, block_out_channels=(8, 16), norm_num_groups=4)


@pytest.fixture(scope="module", autouse=True)
def _threads(one_torch_thread):
    yield


def test_diaa_starts_at_the_static_direction():
    g = torch.Generator().manual_seed(0)
    c_s, c_t = torch.randn(32, generator=g), torch.randn(32, generator=g) + 2
    diaa = DIAA(c_s, c_t)
    f = torch.randn(16, 32, generator=g) * 3
    gate = diaa.gate(f)
    assert gate.min() > 0.002 and gate.max() < 0.05 and gate.std() > 0  # ~ sigmoid(-5), a little per image
    delta = diaa(f)
    assert torch.equal(diaa.delta_static, c_t - c_s)
    assert (delta - diaa.delta_static).abs().max() < 0.05 * (diaa.delta_static.abs().max() + 1)
    assert diaa.delta_dynamic(f).abs().max() < 0.1  # W1, W2 ~ N(0, 0.01), as the authors'
    assert torch.equal(DIAA(c_s, c_t).w_g.weight, diaa.w_g.weight)  # seeded
    with pytest.raises(ValueError, match="same size|one size"):
        DIAA(c_s, torch.zeros(8))


def test_distribution_consistency_loss_is_zero_on_target_and_positive_elsewhere():
    g = torch.Generator().manual_seed(1)
    f_s, delta = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    assert distribution_consistency_loss(f_s + delta, f_s, delta).item() == 0.0
    assert distribution_consistency_loss(f_s + delta, f_s, delta, a_weight(torch.tensor([300, 500, 700, 799]))) == 0
    assert distribution_consistency_loss(f_s, f_s, delta).item() > 0
    maps = torch.randn(2, 4, 10, generator=g)
    gram = (maps @ maps.transpose(1, 2) / 10).mean(0)
    assert style_loss(maps[:1].expand(2, -1, -1), (maps[:1] @ maps[:1].transpose(1, 2) / 10)[0]) < 1e-10
    assert style_loss(maps, gram) > 0


def test_time_weights_follow_the_schedule():
    t = torch.tensor([0, 300, 800, 1000])
    assert torch.allclose(a_weight(t), torch.tensor([1.0, 20 ** 0.3, 20 ** 0.8, 20.0]))
    w_dir, w_diff = stage1_weights(t[:3], even=True)
    assert torch.allclose(w_dir + w_diff, torch.full((3,), A_MAX))
    w_dir, w_diff = stage1_weights(t[:2], even=False)
    assert torch.equal(w_dir, torch.zeros(2)) and torch.allclose(w_diff, (A_MAX - a_weight(t[:2])) / 5)


def _tiny_encoder():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1))
    return FrozenFeatureEncoder(net, units=3, input_size=16)


@pytest.mark.parametrize("variant", ["mfmda", "naive"])
def test_killed_adaptation_resumes_to_the_same_weights(tmp_path, variant):
    g = torch.Generator().manual_seed(0)
    x_s = torch.rand(6, 3, 16, 16, generator=g) * 2 - 1
    x_t = (torch.rand(3, 3, 16, 16, generator=g) * 2 - 1) * 0.5 + 0.3
    encoder = _tiny_encoder().calibrate(x_s)
    ab, acc = alphas_cumprod(TINY), make_accelerator(torch.device("cpu"))
    config = Stage1Config(variant=variant, steps=5, batch_size=2, checkpoint_every=2)

    def run(ckpt, kill_at=None):
        torch.manual_seed(0)
        model = ContentConditionedUNet(build_unet(TINY))

        def callback(step, logs):
            if step == kill_at:
                raise KeyboardInterrupt

        try:
            return adapt(model, x_s, x_t, encoder, ab, config, accelerator=acc, checkpoint=ckpt,
                         callback=callback, progress=False)
        except KeyboardInterrupt:
            return None

    full = run(tmp_path / "a.pt")
    assert run(tmp_path / "b.pt", kill_at=2) is None
    resumed = run(tmp_path / "b.pt")
    assert resumed.history.resumed_from == 2 and len(resumed.history.steps) == 5
    assert {"l_dc", "l_style", "l_diff"} <= set(full.history.steps[0]) or variant == "naive"
    for p, q in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
    if variant == "mfmda":
        for p, q in zip(full.diaa.parameters(), resumed.diaa.parameters()):
            assert torch.equal(p, q)
        fresh = DIAA(full.diaa.c_source, full.diaa.c_target)
        assert not torch.equal(full.diaa.w_g.weight, fresh.w_g.weight)  # the gate learns
    assert "optimizer" not in torch.load(tmp_path / "a.pt", weights_only=True)  # finished: compact file


def test_target_diffusion_loss_sees_no_condition():
    """The authors train L_diff on the target unconditionally; only the source's x0_hat is content-conditioned."""
    g = torch.Generator().manual_seed(0)
    x_s = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    x_t = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1
    encoder = _tiny_encoder().calibrate(x_s)
    torch.manual_seed(0)
    model = ContentConditionedUNet(build_unet(TINY))
    calls = []
    original = model.forward

    def spy(x_t_, t, x_c=None, gate_noise=None):
        calls.append(x_c is not None)
        return original(x_t_, t, x_c, gate_noise)

    model.forward = spy
    adapt(model, x_s, x_t, encoder, alphas_cumprod(TINY), Stage1Config(steps=4, batch_size=2, checkpoint_every=2),
          accelerator=make_accelerator(torch.device("cpu")), progress=False)
    # even steps: the target loss (unconditional) then the source's x0_hat (conditioned); odd steps: the target only
    assert calls == [False, True, False, False, True, False]


def test_generation_metrics():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 3))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    assert frechet_distance(a, a + [2, 0, 0]) == pytest.approx(4, abs=1e-6)
    targets = np.eye(3) * 10
    copies = np.repeat(targets, 4, axis=0)  # memorised: exact copies of the K targets
    spread = copies + rng.normal(size=copies.shape)
    assert intra_cluster_diversity(copies, targets) == 0
    assert intra_cluster_diversity(spread, targets) > 1
    assert np.isnan(intra_cluster_diversity(targets, targets))  # one member per cluster


def test_translated_source_checks_its_arguments():
    with pytest.raises(ValueError, match="variant"):
        translated_source(PROFILES["ci"], "riga_binrushed", variant="cyclegan")
    with pytest.raises(ValueError, match="target_domain"):
        translated_source(PROFILES["ci"], "refuge_train")


def test_score_translations_gives_the_source_gap_one_and_the_targets_own_images_gap_zero():
    from mfmda_lib.data import benchmark_samples
    from mfmda_lib.diffusion.comparison import SOURCE_ROW, score_translations
    from mfmda_lib.diffusion.stage1 import sources_to_translate
    from mfmda_lib.models import build_toy_segmenter

    profile = PROFILES["ci"]
    sources = [s.image for s in sources_to_translate(profile)]
    own = [s.image for s in benchmark_samples(profile, "train", profile.train_per_domain, domains=["riga_messidor"])]
    table = score_translations(profile, "riga_messidor", {"untouched": sources, "the target's own": own},
                               segmenter=build_toy_segmenter())
    assert list(table.index) == [SOURCE_ROW, "untouched", "the target's own"]
    assert table.loc[SOURCE_ROW, "gap_left"] == pytest.approx(1.0)
    assert table.loc["the target's own", "gap_left"] == pytest.approx(0.0, abs=1e-9)  # the gap's own reference
    assert table.loc["untouched"].tolist() == pytest.approx(table.loc[SOURCE_ROW].tolist())  # same images, same row
    assert ((table[["disc_dice", "cup_dice"]] >= 0) & (table[["disc_dice", "cup_dice"]] <= 1)).all().all()


def test_stage1_target_lines_judge_each_target_against_the_bar_and_name_the_closest_baseline(tmp_path, monkeypatch):
    import pandas as pd

    from mfmda_lib.diffusion.comparison import SOURCE_ROW, saved_stage1_targets, stage1_target_lines
    from mfmda_lib.experiments import save_result

    rows = [("a", SOURCE_ROW, 1.0, 0.93), ("a", "stage1", 0.65, 0.90), ("a", "histogram_matching", 0.30, 0.80),
            ("b", SOURCE_ROW, 1.0, 0.93), ("b", "stage1", 0.95, 0.91), ("b", "fda", 0.99, 0.92),
            ("b", "oracle camera", 0.10, 0.95)]
    table = pd.DataFrame(rows, columns=["target", "method", "gap_left", "disc_dice"]).set_index("target")
    assert saved_stage1_targets(tmp_path, "ci") is None
    monkeypatch.setenv("MFMDA_RESULTS", str(tmp_path))
    save_result("mfmda_stage1_targets", PROFILES["cpu"], table)
    measured_in, saved = saved_stage1_targets(tmp_path, "ci")  # falls back to the cpu measurement
    assert measured_in == "cpu" and list(saved.index.names) == ["target", "method"]
    a, b = stage1_target_lines(saved)
    assert a.startswith("a: stage1 leaves 0.65") and "meets the bar" in a and "histogram_matching leaves 0.30" in a
    assert b.startswith("b: stage1 leaves 0.95") and "misses the bar" in b and "fda leaves 0.99" in b
    assert "oracle camera" not in b  # the ceiling is not a competitor


def test_ceiling_clause_says_whether_any_translation_at_the_ddpm_size_can_meet_the_bar(tmp_path, monkeypatch):
    import pandas as pd

    from mfmda_lib.diffusion.comparison import (SOURCE_ROW, saved_stage1_ceiling, saved_stage1_targets,
                                                stage1_target_lines)
    from mfmda_lib.experiments import save_result

    ceiling = pd.DataFrame(
        [("a", 64, "low-pass 4", 0.90, 0.95), ("a", 64, "upsampled", 0.50, 0.80),  # 0.50 fails disc Dice: ignored
         ("a", 256, "low-pass 1", 0.30, 0.95),
         ("b", 64, "low-pass 4", 0.75, 0.95), ("b", 64, "upsampled", 0.60, 0.90), ("b", 256, "low-pass 1", 0.1, 0.9)],
        columns=["target", "size", "glue", "gap_left", "disc_dice"]).set_index("target")
    targets = pd.DataFrame([("a", SOURCE_ROW, 1.0, 0.93), ("a", "stage1", 0.95, 0.90),
                            ("b", SOURCE_ROW, 1.0, 0.93), ("b", "stage1", 0.72, 0.90)],
                           columns=["target", "method", "gap_left", "disc_dice"]).set_index("target")
    monkeypatch.setenv("MFMDA_RESULTS", str(tmp_path))
    save_result("mfmda_stage1_ceiling", PROFILES["cpu"], ceiling)
    save_result("mfmda_stage1_targets", PROFILES["cpu"], targets)
    measured_in, saved = saved_stage1_ceiling(tmp_path, "ci")
    assert measured_in == "cpu" and list(saved.index.names) == ["target", "size", "glue"]
    a, b = stage1_target_lines(saved_stage1_targets(tmp_path, "ci")[1], ceiling=saved, ddpm_size=64)
    assert "at best 0.90 (low-pass 4)" in a and "out of reach" in a and "smallest size at which it meets the bar is 256 px" in a
    assert "at best 0.60 (upsampled)" in b and "within reach" in b and "is 64 px" in b
    assert stage1_target_lines(saved_stage1_targets(tmp_path, "ci")[1])[0] == a.split("; a perfect")[0] + "."


def test_detail_gain_is_below_one_for_a_softer_camera_and_one_for_the_same():
    import numpy as np
    from scipy.ndimage import gaussian_filter

    from mfmda_lib.diffusion.comparison import detail_gain

    rng = np.random.default_rng(0)
    sharp = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    soft = [gaussian_filter(x.astype(float), (2, 2, 0)).round().astype(np.uint8) for x in sharp]
    assert detail_gain(sharp, sharp, 16) == pytest.approx(1.0)
    assert detail_gain(sharp, soft, 16) < 0.5 < 2 < detail_gain(soft, sharp, 16)


def test_every_glue_but_upsampling_gives_the_source_back_when_nothing_changed():
    import numpy as np

    from mfmda_lib.diffusion.comparison import DETAIL_MATCHED, UPSAMPLED, glues
    from mfmda_lib.diffusion.ddpm import to_signed_tensor

    rng = np.random.default_rng(1)
    sources = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    out = glues(sources, to_signed_tensor(sources, 16), sources)  # the "translation" is the source itself
    assert set(out) == {"low-pass 1", "low-pass 2", "low-pass 4", UPSAMPLED, DETAIL_MATCHED}
    for name, images in out.items():
        diff = max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(images, sources))
        assert diff <= 1 if name != UPSAMPLED else diff > 50, name  # upsampling alone loses the 16 px detail
