"""Everything delivered: every packaged config's predict writes its outputs, names never collide, one bad
file is skipped rather than ending the run, images of any depth are read right, bad data is reported early."""
import csv
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import write_image
from test_cli import run_main


def test_every_packaged_config_writes_its_predictions():
    import importlib
    from lightning.pytorch.callbacks import BasePredictionWriter
    from vir_lightning.cli import config_dir
    for path in config_dir().glob('*.yaml'):
        paths = [c['class_path'].rsplit('.', 1) for c in yaml.safe_load(path.read_text())['trainer']['callbacks']]
        classes = [getattr(importlib.import_module(module), name) for module, name in paths]
        assert any(issubclass(c, BasePredictionWriter) for c in classes), path.name


def test_output_names_keep_the_relative_path_and_never_collide():
    from vir_lightning.callbacks.prediction_writer import output_stems, relative_paths
    names = ['in/x.png', 'in/x.jpg', 'in/sub/x.png', 'in/y.png']
    relative = relative_paths(names)
    assert [str(r) for r in relative] == ['x.png', 'x.jpg', 'sub/x.png', 'y.png']
    assert output_stems(relative) == ['x.png', 'x.jpg', 'sub/x', 'y']
    assert [str(r) for r in relative_paths(['a/b/one.png'])] == ['one.png']


def test_segmentation_predict_writes_one_mask_and_overlay_per_input(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    inputs = tmp_path / 'inputs'
    for name in ('x.png', 'x.jpg', 'sub/x.png'):
        write_image(inputs / name, (90, 120, 200), size=(48, 40))
    (inputs / 'broken.png').write_bytes(b'not an image')
    with pytest.warns(UserWarning, match='broken.png'):  # skipped with a warning naming it
        code, _, err = run_main(['predict', '--config', 'seg_demo.yaml', '--data.predict_dir', str(inputs),
                                 '--data.num_workers=0',
                                 '--model.backbone_kwargs.embed_dim=32', '--trainer.enable_progress_bar=false',
                                 '--trainer.callbacks=[]',
                                 '--trainer.callbacks+=vir_lightning.callbacks.SegmentationPredictionWriter',
                                 '--trainer.callbacks.output_dir=out'], capsys)
    assert code == 0, err
    written = sorted(str(p.relative_to(tmp_path / 'out' / 'run')) for p in (tmp_path / 'out' / 'run').rglob('*.*'))
    assert written == ['sub/x_mask.png', 'sub/x_overlay.jpg', 'x.jpg_mask.png', 'x.jpg_overlay.jpg',
                       'x.png_mask.png', 'x.png_overlay.jpg']
    assert Image.open(tmp_path / 'out' / 'run' / 'sub' / 'x_mask.png').size == (48, 40)  # the file's resolution


def test_imagenet_config_predict_writes_a_csv_and_skips_an_unreadable_file(image_folder, tmp_path, monkeypatch,
                                                                             capsys):
    monkeypatch.chdir(tmp_path)
    inputs = tmp_path / 'photos'
    for i in range(3):
        write_image(inputs / f'{i}.png', (220, 30, 30))
    (inputs / 'cut.jpg').write_bytes(b'\xff\xd8\xff\xe0 truncated')
    with pytest.warns(UserWarning, match='cut.jpg'):
        code, _, err = run_main([
        'predict', '--config', 'cls_imagenet.yaml', '--trainer.accelerator=cpu', '--trainer.devices=1',
        '--trainer.strategy=auto', '--trainer.precision=32-true',
        f'--data.root={image_folder}', f'--data.predict_dir={inputs}', '--data.image_size=32', '--data.batch_size=2',
        '--data.num_workers=0', '--model.backbone_kwargs.img_size=32', '--model.backbone_kwargs.patch_size=8',
        '--model.backbone_kwargs.depth=1', '--model.backbone_kwargs.embed_dim=32',
        '--model.backbone_kwargs.num_heads=2'], capsys)
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / 'outputs' / 'cls_imagenet' / 'predictions.csv')))
    assert sorted(Path(r['image']).name for r in rows) == ['0.png', '1.png', '2.png']
    assert {r['class'] for r in rows} <= {'blue', 'green', 'red'}


def test_sixteen_bit_and_float_images_are_scaled_not_clipped(tmp_path):
    from vir_lightning.datamodules.images import load_rgb
    gradient = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (4, 1))
    Image.fromarray(gradient).save(tmp_path / 'g16.png')
    assert Image.open(tmp_path / 'g16.png').mode == 'I;16'
    rgb = load_rgb(tmp_path / 'g16.png')
    assert rgb.shape == (4, 256, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, :, 0], np.rint(gradient[0] / 257).astype(np.uint8))
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(tmp_path / 'half.tiff')
    assert (load_rgb(tmp_path / 'half.tiff') == 128).all()
    Image.fromarray(np.full((4, 4), 40000, np.int32)).save(tmp_path / 'i32.tiff')
    assert (load_rgb(tmp_path / 'i32.tiff') == round(40000 / 65535 * 255)).all()


def test_verify_images_reports_every_bad_file_at_once(image_folder):
    from vir_lightning.datamodules import ImageFolderDataModule
    from vir_lightning.errors import UserError
    bad = [image_folder / 'train' / 'red' / '1.png', image_folder / 'train' / 'blue' / '2.png']
    bad[0].write_bytes(b'garbage')
    bad[1].write_bytes(bad[1].read_bytes()[:60])  # truncated
    dm = ImageFolderDataModule(root=str(image_folder), image_size=32, batch_size=4, num_workers=0,
                               verify_images=True)
    dm.setup('fit')
    with pytest.raises(UserError) as error:
        dm.train_dataloader()
    assert str(bad[0]) in str(error.value) and str(bad[1]) in str(error.value) and '2 of 26' in str(error.value)


def test_an_empty_class_folder_is_named_in_a_warning(image_folder):
    from vir_lightning.datamodules import ImageFolderDataModule
    (image_folder / 'train' / 'zebra').mkdir()
    with pytest.warns(UserWarning, match='zebra'):
        dm = ImageFolderDataModule(root=str(image_folder), image_size=32, num_workers=0)
    assert dm.num_classes == 4


class _DiesInAWorker(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_loader_worker_ends_with_a_message_not_a_hang():
    from vir_lightning.errors import worker_death
    loader = torch.utils.data.DataLoader(_DiesInAWorker(), num_workers=1)
    with pytest.raises(RuntimeError) as error:
        next(iter(loader))
    message = worker_death(error.value)
    assert message is not None and '--data.num_workers' in message and '--ckpt_path last' in message
