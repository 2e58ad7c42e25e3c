"""ADE20K-layout segmentation data: discovery, label mapping, the mmseg augmentations, errors, the synthetic demo."""
import os
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image

from vir_lightning.datamodules import ADE20KDataModule, SyntheticScenesDataModule
from vir_lightning.datamodules.ade20k import ADE20K_URL
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from vir_lightning.datamodules.seg_transforms import (
    CatMaxRatioRandomCrop, rescale_size, segmentation_eval_transform, segmentation_train_transform)
from vir_lightning.errors import DataNotFoundError, UserError

W, H = 40, 30
COLORS = np.array([(230, 30, 30), (30, 220, 40), (30, 40, 230), (240, 240, 40)], np.uint8)


def raw_mask(width=W, height=H) -> np.ndarray:
    """Raw ADE-style labels: 0 (unlabelled) | 1 | 150 in vertical thirds, a top row of 255."""
    mask = np.zeros((height, width), np.uint8)
    mask[:, width // 3:2 * width // 3] = 1
    mask[:, 2 * width // 3:] = 150
    mask[0] = 255
    return mask


def write_pair(root: Path, split: str, name: str, mask=None, image_size=None, image_suffix='.jpg'):
    mask = raw_mask() if mask is None else mask
    height, width = image_size or mask.shape
    image = np.zeros((height, width, 3), np.uint8) + 90
    image[:mask.shape[0], :mask.shape[1]] = COLORS[mask % len(COLORS)][:height, :width]
    for folder in ('images', 'annotations'):
        (root / folder / split).mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / 'images' / split / f'{name}{image_suffix}')
    Image.fromarray(mask, mode='L').save(root / 'annotations' / split / f'{name}.png')


@pytest.fixture
def ade_root(tmp_path) -> Path:
    root = tmp_path / 'ADEChallengeData2016'
    for i in range(3):
        write_pair(root, 'training', f'ADE_train_{i:08d}')
    for i in range(2):
        write_pair(root, 'validation', f'ADE_val_{i:08d}')
    return root


def make_dm(root, **kwargs) -> ADE20KDataModule:
    return ADE20KDataModule(root=str(root), **{'batch_size': 2, 'num_workers': 0, 'image_size': 32, **kwargs})


# ---- layout, labels, batches ---------------------------------------------------------------------
def test_layout_discovery_and_reduce_zero_label(ade_root):
    dm = make_dm(ade_root)
    assert dm.num_classes == 150 and dm.ignore_index == 255
    dm.setup('fit')
    assert len(dm.train_set) == 3 and len(dm.val_set) == 2
    assert dm.train_set.sample_names[0].endswith('ADE_train_00000000.jpg')
    raw = raw_mask()
    _, mask = dm.train_set.load(0)
    assert mask.dtype == np.uint8
    assert (mask[raw == 0] == 255).all()  # unlabelled -> ignore
    assert (mask[raw == 1] == 0).all() and (mask[raw == 150] == 149).all()  # k -> k - 1
    assert (mask[raw == 255] == 255).all()  # ignore stays ignore
    dm_raw = make_dm(ade_root, reduce_zero_label=False, class_names=[f'c{i}' for i in range(151)])
    dm_raw.setup('validate')
    assert np.array_equal(dm_raw.val_set.load(0)[1], raw)


def test_train_batches_have_the_crop_shape(ade_root):
    dm = make_dm(ade_root)
    dm.setup('fit')
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32
    assert masks.shape == (2, 32, 32) and masks.dtype == torch.long
    assert set(masks.unique().tolist()) <= {0, 149, 255}


def test_crop_larger_than_image_pads_with_ignore(ade_root):
    # ratio 1 at scale (40, 30) keeps the 40x30 image; the 64 crop must pad bottom/right
    dm = make_dm(ade_root, image_size=64, scale=(40, 30), ratio_range=(1.0, 1.0), hflip=0.0, photometric=False)
    dm.setup('fit')
    image, mask = dm.train_set[0]
    assert image.shape == (3, 64, 64) and mask.shape == (64, 64)
    assert (mask[H:] == 255).all() and (mask[:, W:] == 255).all()
    assert (image[:, H:] == 0).all() and (image[:, :, W:] == 0).all()  # 0 after normalisation, as mmseg
    assert np.array_equal(mask[:H, :W].numpy(), dm.train_set.load(0)[1])


def test_eval_items_are_resized_keeping_the_ratio_one_per_batch_masks_at_original_size(ade_root):
    dm = make_dm(ade_root)
    dm.setup('validate')
    images, masks = next(iter(dm.val_dataloader()))
    assert images.shape == (1, 3, 32, 43) and masks.dtype == torch.long
    assert masks.shape == (1, 30, 40)  # mmseg evaluates ADE20K against the original-resolution annotation
    assert np.array_equal(masks[0].numpy(), dm.val_set.load(0)[1])


def test_eval_resize_keeps_mask_aligned_and_caps_the_long_side():
    rng = np.random.default_rng(0)
    mask = np.kron(rng.permutation(12).reshape(3, 4) % 4, np.ones((10, 10), int)).astype(np.uint8)  # 30x40
    image = COLORS[mask]
    out = segmentation_eval_transform(32, (0, 0, 0), (1, 1, 1))(image=image, mask=mask)
    assert out['image'].shape == (3, 32, 43) and out['mask'].shape == (32, 43)
    pixels = (out['image'].permute(1, 2, 0).numpy() * 255).reshape(-1, 1, 3)
    nearest = np.abs(pixels - COLORS[None].astype(np.float32)).sum(-1).argmin(-1).reshape(32, 43)
    agreement = (nearest == out['mask'].numpy()).mean()
    assert agreement > 0.9  # only block edges may differ
    assert (nearest[:, 3:] == out['mask'].numpy()[:, :-3]).mean() < agreement - 0.1  # a shift would show
    assert set(np.unique(out['mask'])) <= set(np.unique(mask))  # nearest: no blended labels
    # a panorama: the short side would make the long side exceed 4 * crop, so the long side wins
    out = segmentation_eval_transform(32, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)(
        image=np.zeros((20, 200, 3), np.uint8), mask=np.zeros((20, 200), np.uint8))
    assert out['image'].shape == (3, 13, 128) and out['mask'].shape == (13, 128)
    assert rescale_size(512, 683, (2048, 512)) == (512, 683) and rescale_size(300, 400, (2048, 512)) == (512, 683)


def test_train_rescale_follows_the_ratio_range():
    transform = segmentation_train_transform(16, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, scale=(40, 30), ratio_range=(2.0, 2.0),
                                             cat_max_ratio=1.0, hflip=0, photometric=False, seed=0)
    resize = transform.transforms[0]
    out = A.Compose([resize])(image=np.zeros((H, W, 3), np.uint8), mask=np.zeros((H, W), np.uint8))
    assert out['image'].shape[:2] == (60, 80) and out['mask'].shape == (60, 80)
    assert transform(image=np.zeros((H, W, 3), np.uint8), mask=raw_mask())['image'].shape == (3, 16, 16)


def test_cat_max_ratio_redraws_crops_dominated_by_one_class():
    # left half class 1, right half class 2: only offsets 41..55 of 0..96 give a crop with <75% of one class
    mask = np.ones((32, 128), np.uint8)
    mask[:, 64:] = 2
    image = np.zeros((32, 128, 3), np.uint8)

    def balanced_share(ratio):  # share of crops where class 1 covers more than 25% and less than 75%
        crop = A.Compose([CatMaxRatioRandomCrop(32, 32, cat_max_ratio=ratio)], seed=0)
        shares = np.array([(crop(image=image, mask=mask)['mask'] == 1).mean() for _ in range(200)])
        return np.mean((shares > 0.25) & (shares < 0.75))

    assert balanced_share(1.0) < 0.3  # no check: ~15% of crops
    assert balanced_share(0.75) > 0.6  # mmseg check, 10 re-draws: ~83%
    # the ignore value is not a class: a crop of class 1 + ignore is always rejected, and after
    # 10 re-draws the last one is kept (no endless loop), so crops stay unbiased (~15% mixed)
    mask[:, 64:] = 255
    assert balanced_share(0.75) < 0.3


def test_augmentation_streams_follow_the_torch_seed(ade_root):
    dm = make_dm(ade_root)
    dm.setup('fit')
    torch.manual_seed(0)
    first = dm.train_set[0][0]
    again = make_dm(ade_root)
    again.setup('fit')
    torch.manual_seed(0)
    assert torch.equal(again.train_set[0][0], first)


def test_predict_uses_validation_images_or_a_folder(ade_root, tmp_path):
    dm = make_dm(ade_root)
    dm.setup('predict')
    assert len(dm.predict_set) == 2 and dm.predict_set.sample_names[0].endswith('ADE_val_00000000.jpg')
    image, info = next(iter(dm.predict_dataloader()))  # the original size travels with the image
    assert image.shape == (1, 3, 32, 43) and info['orig_size'].tolist() == [[30, 40]]
    assert info['size'].tolist() == [[32, 43]] and info['image_id'].tolist() == [0]
    loose = tmp_path / 'loose'
    loose.mkdir()
    Image.fromarray(np.zeros((64, 32, 3), np.uint8)).save(loose / 'portrait.png')
    dm = make_dm(tmp_path / 'no_dataset_here', predict_dir=str(loose))  # predict needs no dataset
    dm.setup('predict')
    image, info = dm.predict_set[0]
    assert info['orig_size'].tolist() == [64, 32] and dm.predict_set.sample_names == [str(loose / 'portrait.png')] and image.shape == (3, 64, 32)


def test_subclass_with_its_own_classes_reuses_everything(ade_root):
    class ThreeThings(ADE20KDataModule):
        CLASS_NAMES = ('a', 'b', 'c')
        PALETTE = ((1, 2, 3), (4, 5, 6), (7, 8, 9))

    small = np.where(raw_mask() == 150, 3, raw_mask())
    write_pair(ade_root, 'training', 'ADE_train_00000000', small)
    dm = ThreeThings(root=str(ade_root), batch_size=1, num_workers=0, image_size=32)
    assert dm.num_classes == 3 and dm.class_names == ['a', 'b', 'c'] and dm.palette[2] == (7, 8, 9)
    dm.setup('fit')
    assert set(np.unique(dm.train_set.load(0)[1])) == {0, 2, 255}
    assert make_dm(ade_root, class_names=['x', 'y']).palette.__len__() == 2


def test_ade20k_metadata_comes_from_mmseg(ade_root):
    dm = make_dm(ade_root)
    names, palette = dm.class_names, dm.palette
    assert len(names) == 150 and len(palette) == 150 and names[:3] == ['wall', 'building', 'sky']
    assert all(len(color) == 3 and all(0 <= v <= 255 for v in color) for color in palette)


# ---- errors --------------------------------------------------------------------------------------
def test_missing_dataset_is_reported_at_construction(tmp_path):
    root = tmp_path / 'nowhere' / 'ADEChallengeData2016'
    with pytest.raises(DataNotFoundError) as info:
        ADE20KDataModule(root=str(root))
    message = str(info.value)
    assert str(root / 'images' / 'training') in message
    assert 'annotations' in message and '<name>.png' in message
    assert ADE20K_URL in message and '--data.root' in message
    assert 'python -m vir_lightning fit --config seg_demo.yaml' in message


def test_missing_split_folder_is_named(ade_root):
    for f in (ade_root / 'annotations' / 'validation').iterdir():
        f.unlink()
    (ade_root / 'annotations' / 'validation').rmdir()
    with pytest.raises(DataNotFoundError, match='annotations/validation'):
        make_dm(ade_root)


def test_empty_image_folder(ade_root):
    for f in (ade_root / 'images' / 'training').iterdir():
        f.unlink()
    with pytest.raises(UserError, match='no images found under .*images/training'):
        make_dm(ade_root).setup('fit')


def test_image_without_annotation_is_named(ade_root):
    (ade_root / 'annotations' / 'training' / 'ADE_train_00000001.png').unlink()
    with pytest.raises(UserError) as info:
        make_dm(ade_root).setup('fit')
    assert 'no annotation' in str(info.value) and 'ADE_train_00000001.jpg' in str(info.value)


def test_annotation_without_image_is_named(ade_root):
    (ade_root / 'images' / 'validation' / 'ADE_val_00000001.jpg').unlink()
    with pytest.raises(UserError) as info:
        make_dm(ade_root).setup('validate')
    assert 'no image' in str(info.value) and 'ADE_val_00000001.png' in str(info.value)


def test_mask_size_mismatch_is_named_at_load(ade_root):
    write_pair(ade_root, 'training', 'ADE_train_00000002', image_size=(H + 2, W))
    dm = make_dm(ade_root)
    dm.setup('fit')
    dm.train_set[0]
    with pytest.raises(UserError, match=r"ADE_train_00000002\.png' is 40x30 pixels but its image .* is 40x32"):
        dm.train_set[2]


@pytest.mark.parametrize('reduce_zero_label,bad', [(True, 151), (True, 200), (False, 150)])
def test_label_values_outside_the_classes_are_named(ade_root, reduce_zero_label, bad):
    mask = raw_mask()
    mask[5, 5] = bad
    write_pair(ade_root, 'training', 'ADE_train_00000001', mask)
    dm = make_dm(ade_root, reduce_zero_label=reduce_zero_label)
    dm.setup('fit')
    with pytest.raises(UserError) as info:
        dm.train_set[1]
    message = str(info.value)
    assert 'ADE_train_00000001.png' in message and f': {bad}.' in message and 'reduce_zero_label' in message
    if not reduce_zero_label:  # 0..149 and 255 are fine
        write_pair(ade_root, 'training', 'ADE_train_00000002', np.where(raw_mask() == 150, 149, raw_mask()))
        assert dm.train_set.load(2)[1].max() == 255 and dm.train_set[2][1].shape == (32, 32)


def test_colour_annotation_is_explained(ade_root):
    Image.new('RGB', (W, H)).save(ade_root / 'annotations' / 'training' / 'ADE_train_00000000.png')
    dm = make_dm(ade_root)
    dm.setup('fit')
    with pytest.raises(UserError, match='single-channel'):
        dm.train_set[0]


# ---- the synthetic demo --------------------------------------------------------------------------
def synthetic(root, **kwargs) -> SyntheticScenesDataModule:
    return SyntheticScenesDataModule(root=str(root), **{'num_train': 8, 'num_val': 4, 'batch_size': 4,
                                                        'image_size': 64, **kwargs})


def test_synthetic_scenes_are_written_once_in_the_ade20k_layout(tmp_path):
    dm = synthetic(tmp_path / 'seg_demo')
    assert dm.num_classes == 7 and dm.class_names[0] == 'sky' and len(dm.palette) == 7
    assert not (tmp_path / 'seg_demo').exists()  # nothing written before prepare_data
    dm.prepare_data()
    root = tmp_path / 'seg_demo'
    assert len(list((root / 'images' / 'training').glob('*.jpg'))) == 8
    assert len(list((root / 'annotations' / 'validation').glob('*.png'))) == 4
    assert 'SYNTHETIC' in (root / 'README.txt').read_text()
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob('*')}
    os.utime(root / 'README.txt', ns=(1, 1))
    mtimes[root / 'README.txt'] = 1
    synthetic(root).prepare_data()  # a second run (another process) leaves the files alone
    assert {p: p.stat().st_mtime_ns for p in root.rglob('*')} == mtimes
    assert not list(tmp_path.glob('.seg_demo.partial-*'))


def test_synthetic_scenes_are_deterministic_and_hold_every_class(tmp_path):
    synthetic(tmp_path / 'a').prepare_data()
    synthetic(tmp_path / 'b').prepare_data()
    synthetic(tmp_path / 'c', seed=1).prepare_data()
    files = sorted(p.relative_to(tmp_path / 'a') for p in (tmp_path / 'a').rglob('*.*'))
    assert all((tmp_path / 'a' / f).read_bytes() == (tmp_path / 'b' / f).read_bytes() for f in files)
    first = Path('images/training/scene_00000.jpg')
    assert (tmp_path / 'a' / first).read_bytes() != (tmp_path / 'c' / first).read_bytes()
    labels = np.concatenate([np.asarray(Image.open(p)).ravel()
                             for p in sorted((tmp_path / 'a' / 'annotations' / 'training').glob('*.png'))])
    counts = np.bincount(labels, minlength=256)
    assert counts[1:8].min() > 0 and counts[8:].sum() == 0  # classes 1..7 present, nothing else
    assert counts[0] / counts.sum() < 0.05  # a little unlabelled clutter at most
    sizes = {Image.open(p).size for p in (tmp_path / 'a' / 'images' / 'training').glob('*.jpg')}
    assert len(sizes) > 1 and all(160 <= w <= 256 and 120 <= h <= 192 for w, h in sizes)


def test_synthetic_scenes_load_through_the_ade20k_path(tmp_path):
    dm = synthetic(tmp_path / 'seg_demo')
    assert isinstance(dm, ADE20KDataModule)
    dm.setup('fit')  # outside a Trainer, setup prepares the data itself
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 64, 64) and masks.shape == (4, 64, 64)
    assert set(masks.unique().tolist()) <= set(range(7)) | {255}
    image, mask = dm.val_set[0]
    assert min(image.shape[1:]) == 64 and mask.shape == dm.val_set.load(0)[1].shape  # original-size mask
