"""A same-seed re-run on one machine reproduces every number exactly: notebooks 02-05's runners, at tiny sizes.

Each runner is run twice from an empty cache (so nothing is loaded from the first run's checkpoints) and its
per-image rows, tables and verdict intervals must be equal, digit for digit. A different seed must change them
(otherwise the test would pass for a runner that ignores its seeds).
"""
import pandas as pd
import pytest
import torch

import mfmda_lib.finetune.comparison as finetune_comparison
import mfmda_lib.ssl.experiment as ssl_experiment
from mfmda_lib import finetune, ssl
from mfmda_lib.adapt import sam_comparison, sam_lora, sam_tuning
from mfmda_lib.data import DOMAINS
from mfmda_lib.data.synthetic import generate_sample
from mfmda_lib.environment import seed_everything
from mfmda_lib.models import build_toy_segmenter
from mfmda_lib.profiles import get_profile

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def tiny_benchmark_samples(monkeypatch):
    """benchmark_samples -> 64 px synthetic samples of each requested domain (no benchmark on disk)."""
    def fake(profile, split="test", n_per_domain=None, severity=None, domains=None):
        return [generate_sample(d, i, split=split, size=64, severity=profile.severity, seed=profile.seed)
                for d in (domains or DOMAINS) for i in range(n_per_domain or profile.eval_per_domain)]

    for runner in (ssl_experiment, finetune_comparison, sam_comparison):
        monkeypatch.setattr(runner, "benchmark_samples", fake)


def _fresh_cache(monkeypatch, tmp_path, name: str) -> None:
    monkeypatch.setenv("MFMDA_CACHE", str(tmp_path / name))


def test_ssl_pretraining_and_downstream_runs_repeat_exactly(tmp_path, monkeypatch, tiny_benchmark_samples):
    profile = get_profile("ci").replace(image_size=64, ssl_image_size=32, ssl_pool_per_domain=2, ssl_batch_size=4,
                                        ssl_mae_steps=2, ssl_dino_steps=2, train_per_domain=4, eval_per_domain=2,
                                        ssl_label_draws=2, ssl_downstream_steps=2)

    def run(name):
        _fresh_cache(monkeypatch, tmp_path, name)
        seed_everything(profile.seed)  # as notebook 02 does before building its random encoder
        encoders = {"random": ssl.ViTEncoder(ssl.vit_config(profile))}
        for method in ("mae", "dino"):
            encoders[method], info, _ = ssl.pretrained_encoder(profile, method, progress=False)
            assert info["trained"]  # from an empty cache: trained now, not loaded
        result = ssl.run_label_budgets(profile, encoders, budgets=(0.5, 1.0), progress=False)
        return encoders, result, ssl.smallest_budget_comparison(result)

    first, second = run("a"), run("b")
    for method in ("mae", "dino"):
        assert all(torch.equal(v, second[0][method].state_dict()[k]) for k, v in first[0][method].state_dict().items())
    assert first[1].rows == second[1].rows
    pd.testing.assert_frame_equal(first[2], second[2], check_exact=True)
    draws = {r["draw"] for r in first[1].rows}
    assert draws == {0, 1}  # two draws of labels at the smallest budget, each with its own seed
    by_draw = [[r["disc_dice"] for r in first[1].rows if r["draw"] == d and r.get("disc_dice") is not None
                and r["protocol"] == "finetune" and r["budget"] == 0.5] for d in (0, 1)]
    assert by_draw[0] != by_draw[1]


def test_fine_tuning_strategies_and_peft_repeat_exactly(tmp_path, monkeypatch, tiny_benchmark_samples):
    profile = get_profile("ci").replace(ft_first_unit="3", peft_first_unit="3", ft_train_images=2, ft_val_images=1,
                                        ft_eval_per_domain=1, verdict_seeds=2)
    segmenter = build_toy_segmenter().requires_grad_(False).eval()
    config = finetune.ComparisonConfig(classification_methods=("bitfit", "full"))

    def run(name, seeds=None):
        _fresh_cache(monkeypatch, tmp_path, name)
        strategies = finetune.run_strategies(profile, segmenter, None, seeds=seeds, progress=False)
        peft, _ = finetune.run_peft(profile, segmenter, None, config, tasks=("vcdr",), seeds=seeds, progress=False)
        verdicts = strategies.verdicts("segmentation", [("full_finetune", "linear_probe")])
        return strategies.rows("segmentation") + peft.rows("vcdr"), verdicts, strategies.n_seeds

    rows, verdicts, n_seeds = run("a")
    again, verdicts_again, _ = run("b")
    assert n_seeds == 2 and {r["seed"] for r in rows} == {profile.seed, profile.seed + 1}
    assert rows == again
    pd.testing.assert_frame_equal(verdicts, verdicts_again, check_exact=True)
    other, _, _ = run("c", seeds=[profile.seed + 7])
    assert [r["disc_dice"] for r in other if r["method"] == "full_finetune"] != [
        r["disc_dice"] for r in rows if r["method"] == "full_finetune" and r["seed"] == profile.seed]


def test_sam_comparison_repeats_exactly(tmp_path, monkeypatch, tiny_benchmark_samples):
    profile = get_profile("ci").replace(train_per_domain=4, eval_per_domain=1, lora_train_images=1, adapter_epochs=1,
                                        lora_epochs=1, sam_tta_steps=1, verdict_seeds=2, encoder_batch_size=2)
    segmenter = build_toy_segmenter().requires_grad_(False).eval()
    config = sam_comparison.ComparisonConfig(lora=sam_lora.LoraConfigLite(target_modules=r"[036]"))  # toy convs

    def run(name, seeds=None):
        _fresh_cache(monkeypatch, tmp_path, name)
        result = sam_comparison.run_comparison(profile, segmenter, None, config, seeds=seeds, progress=False)
        return result.rows, result.verdicts([("decoder_adapter", "frozen")], per_domain=True)

    rows, verdicts = run("a")
    again, verdicts_again = run("b")
    assert {r["seed"] for r in rows} == {profile.seed, profile.seed + 1}
    assert sum(r["method"] == "frozen" for r in rows) == 2 * 3  # the frozen rows stand beside every seed
    assert rows == again
    pd.testing.assert_frame_equal(verdicts, verdicts_again, check_exact=True)
    other, _ = run("c", seeds=[profile.seed + 7])
    assert [r["cup_dice"] for r in other if r["method"] == "full_decoder"] != [
        r["cup_dice"] for r in rows if r["method"] == "full_decoder" and r["seed"] == profile.seed]
