"""align.report.saved_align_lr: notebook 09 shows the learning-rate benchmark saved for its profile, else the cpu one."""
import json

from mfmda_lib.align import report


def _save(folder, name, profile, disc):
    table = [{"target": "riga_messidor", "align_lr": "1", "disc_dice": disc, "cup_dice": 0.1,
              "l_align_first": 0.1, "l_align_last": 0.01, "l_align_ratio": 0.1, "n": 4}]
    meta = {"profile": profile, "paired_differences": [f"{profile}: worse"]}
    (folder / f"{name}_{profile}.json").write_text(json.dumps({"meta": meta, "table": table, "rows": []}))


def test_nothing_saved_gives_nothing(tmp_path):
    assert report.saved_align_lr(tmp_path, "ci") == []


def test_falls_back_to_the_committed_cpu_result_and_prefers_its_own_profile(tmp_path):
    _save(tmp_path, "stage2_align_lr", "cpu", 0.5)
    _save(tmp_path, "stage2_align_lr_both", "cpu", 0.6)
    found = report.saved_align_lr(tmp_path, "ci")
    assert [(mode, p) for mode, p, _, _ in found] == [("step (1) only", "cpu"), ("both optimisers", "cpu")]
    assert found[0][2].loc[("riga_messidor", "1"), "disc_dice"] == 0.5
    assert found[0][3] == ["cpu: worse"]
    _save(tmp_path, "stage2_align_lr", "ci", 0.7)
    mode, measured_in, table, _ = report.saved_align_lr(tmp_path, "ci")[0]
    assert measured_in == "ci" and table.loc[("riga_messidor", "1"), "disc_dice"] == 0.7
