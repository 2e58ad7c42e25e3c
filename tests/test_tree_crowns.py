"""The tree-crown COCO converter on deepforest 2.1.0's real images: counts, tiling rule, atomic rewrite, errors."""
import importlib.util
import json
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vir_lightning.datamodules.tree_crowns import (TILED_TRAIN, VAL, deepforest_data_dir, is_complete,
                                          write_tree_crowns_coco)
from vir_lightning.errors import DataNotFoundError, UserError

COUNTS = {'train_images': 44, 'train_boxes': 777, 'val_images': 1, 'val_boxes': 279}


def _coco(root: Path, split: str) -> dict:
    return json.loads((root / 'annotations' / f'instances_{split}.json').read_text())


def _xml_boxes(stem: str) -> np.ndarray:
    """xmin, ymin, xmax, ymax of every object, read here independently of the converter."""
    root = ET.parse(deepforest_data_dir() / f'{stem}.xml').getroot()
    return np.array([[float(box.find(k).text) for k in ('xmin', 'ymin', 'xmax', 'ymax')]
                     for box in root.iter('bndbox')])


def _boxes_by_image(coco: dict) -> dict:
    boxes = {image['id']: [] for image in coco['images']}
    for annotation in coco['annotations']:
        x, y, w, h = annotation['bbox']
        boxes[annotation['image_id']].append([x, y, x + w, y + h])
    return {image_id: np.array(b).reshape(-1, 4) for image_id, b in boxes.items()}


@pytest.fixture(scope='module')
def converted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('tree_crowns') / 'demo'
    assert write_tree_crowns_coco(root) == COUNTS
    return root


def test_counts_sizes_and_files(converted):
    train, val = _coco(converted, 'train'), _coco(converted, 'val')
    assert (len(train['images']), len(train['annotations'])) == (COUNTS['train_images'], COUNTS['train_boxes'])
    assert [(i['file_name'], i['width'], i['height']) for i in val['images']] == [(f'{VAL}.png', 1249, 1035)]
    assert len(val['annotations']) == 279
    tiles = [i for i in train['images'] if i['file_name'].startswith(TILED_TRAIN)]
    assert len(tiles) == 6 * 7
    assert {(i['width'], i['height']) for i in train['images']} == {(400, 400)}
    assert {i['file_name'] for i in train['images']} - {i['file_name'] for i in tiles} == {'OSBS_029.png',
                                                                                           'SOAP_061.png'}
    for split, coco in (('train', train), ('val', val)):
        assert sorted(p.name for p in (converted / split).iterdir()) == sorted(i['file_name'] for i in coco['images'])
        for image in coco['images']:
            with Image.open(converted / split / image['file_name']) as png:
                assert (png.format, png.mode, png.size) == ('PNG', 'RGB', (image['width'], image['height']))
    assert 'deepforest' not in sys.modules  # found, never imported


def test_coco_fields_and_boxes_inside_images(converted):
    for split in ('train', 'val'):
        coco = _coco(converted, split)
        assert coco['categories'] == [{'id': 1, 'name': 'tree', 'supercategory': 'plant'}]
        assert 'deepforest 2.1.0' in coco['info']['contributor'] and 'MIT' in coco['info']['contributor']
        images = {i['id']: i for i in coco['images']}
        assert len(images) == len(coco['images'])
        assert sorted(a['id'] for a in coco['annotations']) == list(range(1, len(coco['annotations']) + 1))
        for a in coco['annotations']:
            x, y, w, h = a['bbox']
            image = images[a['image_id']]
            assert (a['category_id'], a['iscrowd']) == (1, 0)
            assert all(isinstance(v, float) for v in a['bbox'])
            assert w > 0 and h > 0 and a['area'] == pytest.approx(w * h)
            assert 0 <= x and x + w <= image['width'] and 0 <= y and y + h <= image['height']


def test_whole_images_keep_the_voc_boxes_as_given(converted):
    for split, stem in (('val', VAL), ('train', 'OSBS_029'), ('train', 'SOAP_061')):
        coco = _coco(converted, split)
        image_id = next(i['id'] for i in coco['images'] if i['file_name'] == f'{stem}.png')
        np.testing.assert_array_equal(_boxes_by_image(coco)[image_id], _xml_boxes(stem))


def test_tiles_keep_the_crowns_at_least_half_inside(converted):
    """Each tile holds exactly the crowns with >= 50% of their box inside, clipped; 3 of 574 fall in no tile."""
    crowns = _xml_boxes(TILED_TRAIN)
    area = (crowns[:, 2] - crowns[:, 0]) * (crowns[:, 3] - crowns[:, 1])
    coco = _coco(converted, 'train')
    boxes = _boxes_by_image(coco)
    times_kept = np.zeros(len(crowns), int)
    origins = set()
    for image in coco['images']:
        if not image['file_name'].startswith(TILED_TRAIN):
            continue
        x, y = (int(part[1:]) for part in Path(image['file_name']).stem.split('_')[-2:])
        origins.add((x, y))
        clipped = np.stack([np.clip(crowns[:, 0] - x, 0, 400), np.clip(crowns[:, 1] - y, 0, 400),
                            np.clip(crowns[:, 2] - x, 0, 400), np.clip(crowns[:, 3] - y, 0, 400)], 1)
        inside = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1]) >= 0.5 * area
        times_kept += inside
        assert sorted(map(tuple, boxes[image['id']])) == sorted(map(tuple, clipped[inside]))
    assert {x for x, _ in origins} == {0, 400, 800, 1200, 1600, 2299 - 400}  # last column flush with the border
    assert {y for _, y in origins} == {0, 400, 800, 1200, 1600, 2000, 2472 - 400}
    # last row and column overlap their neighbours, so some crowns are in two tiles; corner crowns in none
    assert np.bincount(times_kept).tolist() == [3, 463, 108]
    assert sum(len(boxes[i['id']]) for i in coco['images'] if i['file_name'].startswith(TILED_TRAIN)) == 679


def test_loads_in_pycocotools_and_scores_itself_perfectly(converted):
    pytest.importorskip('pycocotools')
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    truth = COCO(str(converted / 'annotations' / 'instances_val.json'))
    detections = truth.loadRes([{'image_id': a['image_id'], 'category_id': 1, 'bbox': a['bbox'], 'score': 1.0}
                                for a in truth.dataset['annotations']])
    evaluation = COCOeval(truth, detections, 'bbox')
    evaluation.params.maxDets = [1, 10, 300]  # 279 crowns: more than the default 100 detections
    evaluation.evaluate(), evaluation.accumulate(), evaluation.summarize()
    assert evaluation.stats[1:3].tolist() == [1.0, 1.0]  # AP50, AP75 at 300 detections


def test_second_call_does_nothing(converted):
    files = [converted / 'README.txt', converted / 'annotations' / 'instances_train.json',
             converted / 'val' / f'{VAL}.png']
    before = [p.stat().st_mtime_ns for p in files]
    assert is_complete(converted)
    assert write_tree_crowns_coco(converted) == COUNTS
    assert [p.stat().st_mtime_ns for p in files] == before
    assert not list(converted.parent.glob('.*partial*'))


def test_other_parameters_replace_the_folder(converted, tmp_path):
    root = tmp_path / 'demo'
    shutil.copytree(converted, root)
    counts = write_tree_crowns_coco(root, tile_size=800, stride=800)
    assert counts == {'train_images': 3 * 4 + 2, 'train_boxes': counts['train_boxes'], 'val_images': 1,
                      'val_boxes': 279}
    assert is_complete(root, tile_size=800, stride=800) and not is_complete(root)
    assert (root / 'README.txt').read_text().strip().splitlines()[-1] == \
        'generator: tree_crowns_coco v1 tile=800 stride=800 min_visible=0.5'
    assert not list(root.glob('train/*_x0400_*'))  # nothing of the 400-pixel tiling is left
    assert len(list((root / 'train').iterdir())) == 14
    assert [p.name for p in tmp_path.iterdir()] == ['demo']


@pytest.mark.parametrize('content', ['photo.jpg', 'README.txt'])
def test_a_folder_that_is_not_a_demo_is_left_alone(tmp_path, content):
    (tmp_path / content).write_text('mine')
    with pytest.raises(UserError, match='not a tree-crown demo folder.*--data.root'):
        write_tree_crowns_coco(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [content]


def test_bad_parameters_raise(tmp_path):
    with pytest.raises(UserError, match='stride'):
        write_tree_crowns_coco(tmp_path / 'demo', tile_size=400, stride=500)
    with pytest.raises(UserError, match='min_visible'):
        write_tree_crowns_coco(tmp_path / 'demo', min_visible=0)
    assert not list(tmp_path.iterdir())


def test_missing_deepforest_says_how_to_install_it(tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda name, *args: None if name == 'deepforest' else find_spec(name, *args))
    with pytest.raises(DataNotFoundError, match=r'pip install --no-deps deepforest==2\.1\.0.*--data\.root') as error:
        write_tree_crowns_coco(tmp_path / 'demo')
    assert isinstance(error.value, UserError)
    assert not list(tmp_path.iterdir())


def test_another_process_finishing_first_is_fine(converted, tmp_path, monkeypatch):
    """The rename fails because a concurrent writer put a complete folder there first: its result is kept."""
    root = tmp_path / 'demo'
    rename = Path.rename

    def concurrent_writer_wins(self, target):
        shutil.copytree(converted, target)
        return rename(self, target)

    monkeypatch.setattr(Path, 'rename', concurrent_writer_wins)
    assert write_tree_crowns_coco(root) == COUNTS
    assert is_complete(root)
    assert [p.name for p in tmp_path.iterdir()] == ['demo']
