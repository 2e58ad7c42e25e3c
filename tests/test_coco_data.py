"""COCODataModule: label mapping, crowd and empty images, box-aware transforms, and bad input."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import COCO_CATEGORIES, write_coco
from vir_lightning.datamodules import COCODataModule
from vir_lightning.datamodules.coco import collate_detection
from vir_lightning.datamodules.det_transforms import detection_eval_transform, detection_train_transform
from vir_lightning.errors import DataNotFoundError, UserError
from vir_lightning.tasks.detection import to_file_pixels

MEAN, STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def datamodule(root, **kwargs):
    return COCODataModule(root=str(root), batch_size=2, num_workers=0, image_size=kwargs.pop('image_size', 128),
                          **kwargs)


def test_category_ids_map_to_contiguous_labels_and_back(coco_folder):
    dm = datamodule(coco_folder)
    assert dm.num_classes == 2 and dm.class_names == ['square', 'bar'] and dm.category_ids == [3, 7]
    dm.setup('fit')
    image, target = dm.val_set[0]
    ann = json.loads((coco_folder / 'annotations' / 'instances_val2017.json').read_text())
    first = [a for a in ann['annotations'] if a['image_id'] == 1000]
    assert target['image_id'].item() == 1000
    assert sorted(target['labels'].tolist()) == sorted(dm.category_ids.index(a['category_id']) + 1 for a in first)
    # evaluation resizes the longest side to image_size; to_file_pixels undoes it exactly
    x, y, w, h = first[0]['bbox']
    original = torch.tensor([[x, y, x + w, y + h]], dtype=torch.float32)
    assert max(image.shape[-2:]) == 128 and tuple(target['orig_size'].tolist()) == (ann['images'][0]['height'],
                                                                                    ann['images'][0]['width'])
    restored = to_file_pixels(target['boxes'], target)
    assert any(torch.allclose(r, original[0], atol=0.05) for r in restored)


def test_crowd_boxes_leave_training_but_stay_flagged_for_evaluation_and_empty_images_stay(tmp_path):
    root = tmp_path / 'coco'
    crowd = {'id': 900, 'image_id': 1000, 'category_id': 3, 'bbox': [1, 1, 30, 30], 'iscrowd': 1}
    for split, seed in (('train2017', 0), ('val2017', 1)):
        data = write_coco(root, split, 3, seed=seed, extra_annotations=[crowd])
        data['images'].append({'id': 5000, 'file_name': 'empty.jpg', 'width': 64, 'height': 48})
        (root / 'annotations' / f'instances_{split}.json').write_text(json.dumps(data))
        from PIL import Image
        Image.new('RGB', (64, 48)).save(root / split / 'empty.jpg')
    dm = datamodule(root, hflip=0.0)
    dm.setup('fit')
    assert len(dm.train_set) == 4 and len(dm.val_set) == 4
    n_train = len(dm.annotations('train').boxes[1000])
    assert len(dm.train_set[0][1]['boxes']) == n_train - 1 and dm.train_set[0][1]['iscrowd'].sum() == 0
    val_target = dm.val_set[0][1]
    assert val_target['iscrowd'].tolist().count(1) == 1
    empty = dm.train_set[3][1]
    assert empty['boxes'].shape == (0, 4) and empty['labels'].shape == (0,)


def test_boxes_outside_are_clipped_and_degenerate_ones_dropped_with_one_warning(tmp_path):
    root = tmp_path / 'coco'
    bad = [
        {'id': 901, 'image_id': 1000, 'category_id': 3, 'bbox': [-10, -5, 30, 25]},    # clipped
        {'id': 902, 'image_id': 1000, 'category_id': 7, 'bbox': [80, 80, 500, 500]},  # clipped
        {'id': 903, 'image_id': 1000, 'category_id': 3, 'bbox': [5, 5, 0, 10]},       # zero width
        {'id': 904, 'image_id': 1000, 'category_id': 3, 'bbox': [40, 40, -8, 10]},    # inverted
        {'id': 905, 'image_id': 1000, 'category_id': 3, 'bbox': [900, 900, 10, 10]},  # wholly outside
    ]
    data = write_coco(root, 'train2017', 2, extra_annotations=bad)
    write_coco(root, 'val2017', 1)
    with pytest.warns(UserWarning) as record:
        annotations = datamodule(root).annotations('train')
    message = ' '.join(str(w.message) for w in record)
    assert 'instances_train2017.json' in message and '2 box(es) reaching outside' in message
    assert '3 box(es) with zero or negative' in message and '903, 904, 905' in message
    size = data['images'][0]
    boxes = annotations.boxes[1000]
    assert len(boxes) == len([a for a in data['annotations'] if a['image_id'] == 1000]) - 3
    assert (boxes >= 0).all() and (boxes[:, 2] <= size['width']).all() and (boxes[:, 3] <= size['height']).all()
    assert [0, 0, 20, 20] in boxes.tolist()


def test_unknown_category_ids_are_named(tmp_path):
    root = tmp_path / 'coco'
    write_coco(root, 'train2017', 2, extra_annotations=[
        {'id': 950, 'image_id': 1000, 'category_id': 42, 'bbox': [1, 1, 5, 5]}])
    write_coco(root, 'val2017', 1)
    with pytest.raises(UserError, match=r"instances_train2017.json' uses category id\(s\) 42 .*3 \(square\)"):
        datamodule(root).num_classes


def test_validation_categories_must_be_the_training_ones(tmp_path):
    root = tmp_path / 'coco'
    write_coco(root, 'train2017', 2)
    write_coco(root, 'val2017', 1, extra_annotations=[
        {'id': 951, 'image_id': 1000, 'category_id': 8, 'bbox': [1, 1, 5, 5]}],
        categories=COCO_CATEGORIES + [{'id': 8, 'name': 'extra'}])
    dm = datamodule(root)
    with pytest.raises(UserError, match='instances_val2017.json.*8.*training file'):
        dm.setup('validate')


def test_missing_images_are_named(coco_folder):
    (coco_folder / 'val2017' / '0002.jpg').unlink()
    with pytest.raises(UserError, match=r"1 image\(s\) listed in .*instances_val2017.json.*0002.jpg"):
        datamodule(coco_folder).setup('validate')


@pytest.mark.parametrize('text, problem', [
    ('{"images": [], "annotations": [', 'not valid JSON: .* at line 1'),
    ('[1, 2]', 'must hold a JSON object'),
    ('{"images": [], "categories": []}', "no 'annotations' list"),
    ('{"images": [{"id": 1}], "annotations": [], "categories": []}', "lacks file_name"),
])
def test_malformed_json_is_named_with_its_problem(coco_folder, text, problem):
    (coco_folder / 'annotations' / 'instances_train2017.json').write_text(text)
    with pytest.raises(UserError, match=f"instances_train2017.json.*{problem}"):
        datamodule(coco_folder).num_classes


def test_missing_dataset_says_where_and_what_to_do(tmp_path):
    with pytest.raises(DataNotFoundError) as error:
        datamodule(tmp_path / 'nowhere')
    text = str(error.value)
    assert 'instances_train2017.json' in text and 'cocodataset.org' in text and '--data.root' in text
    assert 'det_demo.yaml' in text


def test_train_transform_flips_boxes_with_the_image():
    image = np.zeros((40, 60, 3), np.uint8)
    image[10:20, 5:15] = 255
    out = detection_train_transform(60, MEAN, STD, hflip=1.0)(
        image=image, bboxes=np.array([[5, 10, 15, 20]], np.float32), labels=[1], iscrowd=[0])
    assert np.allclose(out['bboxes'], [[45, 10, 55, 20]])
    assert out['image'][0, 10:20, 45:55].min() == 1.0 and out['image'][0, 10:20, 5:15].max() == 0.0


def test_large_scale_jitter_gives_fixed_squares_and_keeps_boxes_inside():
    transform = detection_train_transform(64, MEAN, STD, large_scale_jitter=True, jitter_scale=(0.5, 2.0))
    transform.set_random_seed(0)
    image = np.random.default_rng(0).integers(0, 255, (100, 150, 3), dtype=np.uint8)
    boxes = np.array([[10, 10, 60, 50], [100, 60, 140, 95]], np.float32)
    for _ in range(10):
        out = transform(image=image, bboxes=boxes, labels=[1, 2], iscrowd=[0, 0])
        assert out['image'].shape == (3, 64, 64)
        kept = np.asarray(out['bboxes']).reshape(-1, 4)
        assert ((kept >= 0) & (kept <= 64)).all() and len(out['labels']) == len(kept)


def test_keep_resolution_crops_in_training_and_evaluates_whole_images():
    image = np.zeros((300, 500, 3), np.uint8)
    crop = detection_train_transform(128, MEAN, STD, keep_resolution=True)(
        image=image, bboxes=np.zeros((0, 4)), labels=[], iscrowd=[])
    whole = detection_eval_transform(None, MEAN, STD)(image=image, bboxes=np.zeros((0, 4)), labels=[], iscrowd=[])
    assert crop['image'].shape == (3, 128, 128) and whole['image'].shape == (3, 300, 500)


def test_batches_are_lists_of_images_and_targets(coco_folder):
    dm = datamodule(coco_folder)
    dm.setup('fit')
    images, targets = next(iter(dm.train_dataloader()))
    assert isinstance(images, list) and len(images) == 2 and {'boxes', 'labels'} <= set(targets[0])
    assert collate_detection([(1, 'a'), (2, 'b')]) == ([1, 2], ['a', 'b'])


def test_predict_on_a_folder_or_a_single_image(coco_folder, tmp_path):
    single = coco_folder / 'val2017' / '0001.jpg'
    dm = datamodule(coco_folder, predict_images=str(single))
    dm.setup('predict')
    image, info = dm.predict_set[0]
    assert len(dm.predict_set) == 1 and dm.predict_set.sample_names == [str(single)]
    with Image.open(single) as file:
        assert info['image_id'] == 0 and info['orig_size'].tolist() == [file.height, file.width]
    assert info['size'].tolist() == list(image.shape[-2:]) and max(image.shape[-2:]) == 128  # resized to fit
    with pytest.raises(DataNotFoundError, match='predict_images'):
        datamodule(coco_folder, predict_images=str(tmp_path / 'none')).setup('predict')
