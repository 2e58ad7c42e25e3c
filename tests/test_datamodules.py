from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vir_lightning.datamodules import ImageFolderDataModule, MNISTDemoDataModule
from vir_lightning.datamodules.images import load_rgb
from vir_lightning.errors import DataNotFoundError, UserError


def test_image_folder_finds_classes_and_loads_rgb(image_folder):
    dm = ImageFolderDataModule(root=str(image_folder), batch_size=4, num_workers=0, image_size=32)
    assert dm.num_classes == 3 and dm.class_names == ['blue', 'green', 'red']
    dm.setup('fit')
    assert len(dm.train_set) == 26 and len(dm.val_set) == 12
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert set(labels.tolist()) <= {0, 1, 2}


@pytest.mark.parametrize('name,mode', [('gray.png', 'L'), ('alpha.png', 'RGBA')])
def test_grayscale_and_rgba_are_converted(image_folder, name, mode):
    path = next(image_folder.rglob(name))
    array = load_rgb(path)
    assert array.shape[-1] == 3 and array.dtype == np.uint8


def test_validation_uses_training_class_indices(image_folder):
    # val lacks 'blue': the remaining classes must keep the training indices
    for f in (image_folder / 'val' / 'blue').iterdir():
        f.unlink()
    (image_folder / 'val' / 'blue').rmdir()
    dm = ImageFolderDataModule(root=str(image_folder), batch_size=4, num_workers=0, image_size=32)
    dm.setup('validate')
    assert {label for _, label in dm.val_set.samples} == {1, 2}


def test_missing_dataset_names_path_layout_and_demo(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        ImageFolderDataModule(root=str(tmp_path / 'nowhere'))
    message = str(info.value)
    assert str(tmp_path / 'nowhere' / 'train') in message
    assert '<class_name>' in message and 'image-net.org' in message and 'cls_demo.yaml' in message


def test_extra_val_class_is_an_error(image_folder):
    from conftest import write_image
    write_image(image_folder / 'val' / 'purple' / '0.png', (120, 0, 120))
    dm = ImageFolderDataModule(root=str(image_folder), batch_size=4, num_workers=0, image_size=32)
    with pytest.raises(UserError, match='purple'):
        dm.setup('validate')


def test_expected_class_count_mismatch(image_folder):
    with pytest.raises(UserError, match='expected_num_classes is 5 .* 3 class folders'):
        ImageFolderDataModule(root=str(image_folder), expected_num_classes=5)


@pytest.mark.parametrize('content', [b'not an image at all', None])
def test_corrupt_or_truncated_image_names_the_file(image_folder, content):
    path = image_folder / 'train' / 'red' / '0.png'
    data = path.read_bytes()
    path.write_bytes(content if content is not None else data[:len(data) // 2])
    with pytest.raises(UserError) as info:
        load_rgb(path)
    assert str(path) in str(info.value)


def test_global_batch_is_split_across_devices(image_folder):
    dm = ImageFolderDataModule(root=str(image_folder), batch_size=8, num_workers=0, image_size=32)
    dm.trainer = SimpleNamespace(world_size=2)
    assert dm.device_batch_size == 4
    dm.trainer = SimpleNamespace(world_size=3)
    with pytest.raises(UserError, match='divisible'):
        dm.device_batch_size


def test_empty_split_is_an_error(tmp_path):
    (tmp_path / 'train' / 'a').mkdir(parents=True)
    (tmp_path / 'val' / 'a').mkdir(parents=True)
    dm = ImageFolderDataModule(root=str(tmp_path), num_workers=0)
    with pytest.raises(UserError, match='no images found'):
        dm.setup('fit')


def test_mnist_demo_split_is_real_balanced_and_fixed():
    dm = MNISTDemoDataModule(batch_size=10)
    dm.setup('fit')
    assert len(dm.train_set) == 4000 and len(dm.val_set) == 1000
    assert not set(dm.train_set.indices) & set(dm.val_set.indices)
    assert np.bincount(dm.val_set.labels[dm.val_set.indices]).tolist() == [100] * 10
    images, labels = next(iter(dm.val_dataloader()))
    assert images.shape == (10, 3, 28, 28)
    again = MNISTDemoDataModule(batch_size=10)
    again.setup('fit')
    assert (again.val_set.indices == dm.val_set.indices).all()


def test_mnist_demo_missing_file_explains_install(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"\.\[demo\]"):
        MNISTDemoDataModule(root=str(tmp_path / 'missing.csv.gz'))


POLICIES = ['rand-m9-mstd0.5-inc1', 'rand-m10-inc1', 'rand-m0-mstd0', 'rand-m7-mstd3', 'rand-m30-mmax30-inc1',
            'rand-m15-mmax20-mstd5-n4-p1.0', 'rand-m9-mstd101-inc1', 'rand-m9-n3-mstd0.5-tweights']


@pytest.mark.parametrize('policy', POLICIES)
def test_rand_augment_survives_every_op_at_both_ends_of_its_range(policy):
    """timm maps the ends of the magnitude range to 0 posterize bits, which Pillow 13 rejects."""
    import random
    from PIL import Image
    from vir_lightning.datamodules.transforms import build_rand_augment
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 10, 3)).astype(np.uint8))
    transform = build_rand_augment(policy)
    for op in transform.ops:  # each op forced on, at its lowest and highest magnitude
        op.prob, op.magnitude_std = 1.0, 0
        for op.magnitude in (0, op.magnitude_max or 10):
            assert op(image).size == image.size, (op.name, op.magnitude)
    random.seed(0)
    transform = build_rand_augment(policy)
    for _ in range(3000):  # as sampled in training: 'rand-m9-mstd0.5-inc1' reaches 10 a few times in 3,000
        transform(image)


def test_zero_posterize_bits_give_black_as_pillow_did_before_13():
    from PIL import Image
    from vir_lightning.datamodules.transforms import posterize_any_bits
    image = Image.fromarray(np.full((4, 4, 3), 200, np.uint8))
    assert np.asarray(posterize_any_bits(image, 0)).max() == 0
    assert np.asarray(posterize_any_bits(image, 1)).tolist() == np.full((4, 4, 3), 128).tolist()


def test_image_folder_trains_with_the_imagenet_recipes_rand_augment(image_folder):
    dm = ImageFolderDataModule(root=str(image_folder), batch_size=4, num_workers=0, image_size=32,
                               rand_augment='rand-m9-mstd0.5-inc1')
    dm.setup('fit')
    for _ in range(40):  # 1,040 augmented images
        for i in range(len(dm.train_set)):
            assert dm.train_set[i][0].shape == (3, 32, 32)


def test_malformed_rand_augment_policy_is_refused_at_construction(image_folder):
    for policy in ('augmix-m5', 'rand-q9'):
        with pytest.raises(UserError, match=r"--data.rand_augment .* e\.g\. 'rand-m9-mstd0\.5-inc1'"):
            ImageFolderDataModule(root=str(image_folder), rand_augment=policy)
