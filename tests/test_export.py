"""``python -m vir_lightning export``: safetensors that timm and mmseg load bit for bit, ONNX that
onnxruntime runs as PyTorch does, and one-line refusals that write nothing."""
import json
import os

import lightning as L
import onnx
import onnxruntime
import pytest
import timm
import torch

from conftest import TINY_VIR
from test_cli import run_main
from vir_lightning.checkpoints import load_task
from vir_lightning.tasks import ClassificationTask, DetectionTask, SegmentationTask

BACKBONE = dict(backbone='vir_tiny_patch16_224', backbone_kwargs=dict(TINY_VIR, chunk_size=8))  # several chunks
TASKS = {
    'cls': lambda: ClassificationTask(num_classes=3, **BACKBONE),
    'seg': lambda: SegmentationTask(out_indices=(0, 1), num_classes=4, **BACKBONE,  # UPerNet on two maps
                                    head_kwargs=dict(channels=16, aux_channels=8, scales=(2, 1), aux_index=1)),
    'seg_linear': lambda: SegmentationTask(out_indices=(0, 1), num_classes=4, head='linear', **BACKBONE),
    'det': lambda: DetectionTask(num_classes=2, pyramid_channels=16, box_head_size=32, **BACKBONE),
    'seg_qna': lambda: SegmentationTask(  # hierarchical: UPerHead without neck
        backbone='qna_vit_tiny', backbone_kwargs=dict(qna_depths=(1, 1, 1, 0), window_depths=(0, 0, 1, 1)),
        num_classes=4, head_kwargs=dict(channels=16, aux_channels=8)),
}
TOLERANCE = 1e-4


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    """One checkpoint per task, written by Lightning (``trainer.save_checkpoint``) without training."""
    root = tmp_path_factory.mktemp('checkpoints')
    paths = {}
    for name, build in TASKS.items():
        torch.manual_seed(0)
        task = build()
        with torch.no_grad():  # as if trained: no weight keeps a value a fresh model would also have (ones, zeros)
            for parameter in task.parameters():
                parameter.add_(0.01 * torch.randn_like(parameter))
        trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False)
        trainer.strategy.connect(task)
        trainer.save_checkpoint(root / f'{name}.ckpt')
        paths[name] = root / f'{name}.ckpt'
    return paths


def export(capsys, ckpt, fmt, output, *extra):
    return run_main(['export', '--ckpt_path', str(ckpt), '--format', fmt, '--output', str(output), *extra], capsys)


def run_onnx(path, images: torch.Tensor):
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    return [torch.from_numpy(o) for o in session.run(None, {'images': images.numpy()})]


def max_difference(got, expected) -> float:
    assert [g.shape for g in got] == [e.shape for e in expected]
    return max((g - e).abs().max().item() for g, e in zip(got, expected))


@pytest.mark.parametrize('name', ['cls', 'seg', 'det', 'seg_qna'])
def test_safetensors_rebuilds_the_backbone_in_timm_bit_for_bit(checkpoints, tmp_path, capsys, name):
    code, _, err = export(capsys, checkpoints[name], 'safetensors', tmp_path / 'out')
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == [f'{name}.json', f'{name}.safetensors']
    recipe = json.loads((tmp_path / 'out' / f'{name}.json').read_text())
    overlay = recipe['pretrained_cfg_overlay']
    overlay['file'] = str(tmp_path / 'out' / overlay['file'])  # the JSON names the file beside it
    model = timm.create_model(recipe['model_name'], pretrained=True, pretrained_cfg_overlay=overlay,
                              **recipe['kwargs']).eval()
    backbone = load_task(checkpoints[name]).backbone
    images = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        got, expected = model(images), backbone(images)
    got, expected = (list(x) if isinstance(x, list) else [x] for x in (got, expected))
    assert len(got) == len(expected) and all(torch.equal(g, e) for g, e in zip(got, expected))


def test_safetensors_is_the_pretrained_checkpoint_of_the_mmseg_vir_backbone(checkpoints, tmp_path, capsys):
    from vir_lightning.mmseg import MODELS
    code, _, err = export(capsys, checkpoints['seg'], 'safetensors', tmp_path)
    assert code == 0, err
    recipe = json.loads((tmp_path / 'seg.json').read_text())
    kwargs = {k: v for k, v in recipe['kwargs'].items() if k not in ('features_only', 'out_indices')}
    backbone = MODELS.build(dict(
        type='ViR', model_name=recipe['model_name'], out_indices=recipe['kwargs']['out_indices'], model_kwargs=kwargs,
        init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'seg.safetensors'))))
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        got, expected = backbone.eval()(images), load_task(checkpoints['seg']).backbone(images)
    assert all(torch.equal(g, e) for g, e in zip(got, expected))
    with pytest.raises(ValueError, match="only dict\\(type='Pretrained'"):
        MODELS.build(dict(type='ViR', model_name=recipe['model_name'], model_kwargs=kwargs,
                          out_indices=(0,), init_cfg=dict(type='Kaiming')))


def _input_dims(path):
    return [d.dim_value or d.dim_param for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]


PYTORCH_OUTPUTS = {  # what the ONNX file computes, in PyTorch
    'cls': lambda task, images: [task(images)],
    'seg_linear': lambda task, images: [task._logits(images)],
    'det': lambda task, images: list(task.detector.backbone(images).values()),
}


@pytest.mark.parametrize('name, sizes', [('cls', [(2, 32, 32), (1, 48, 40)]),
                                         ('seg_linear', [(2, 32, 32), (1, 40, 56)]),
                                         ('det', [(2, 64, 64), (1, 96, 128)])])
def test_onnx_parallel_form_takes_any_size_and_matches_pytorch(checkpoints, tmp_path, capsys, name, sizes):
    code, _, err = export(capsys, checkpoints[name], 'onnx', tmp_path, '--retention_mode', 'parallel')
    assert code == 0, err
    path = tmp_path / f'{name}.onnx'
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    dims = _input_dims(path)
    assert dims[1] == 3 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3])), dims  # symbolic
    task = load_task(checkpoints[name])  # in the form it was built with (parallel here): the forms are equal
    for batch, height, width in sizes:
        images = torch.randn(batch, 3, height, width)
        with torch.no_grad():
            expected = PYTORCH_OUTPUTS[name](task, images)
        if name == 'seg_linear':
            assert expected[0].shape == (batch, 4, height, width)  # logits at the input size
        difference = max_difference(run_onnx(path, images), expected)
        print(f'{name} onnx vs PyTorch at {height}x{width}: max abs difference {difference:.2e}')
        assert difference < TOLERANCE


def test_onnx_chunkwise_form_is_fixed_at_the_image_size_and_matches_pytorch(checkpoints, tmp_path, capsys):
    code, out, err = export(capsys, checkpoints['cls'], 'onnx', tmp_path, '--image_size', '40', '48')
    assert code == 0, err
    assert 'fixed at 40x48' in out
    assert _input_dims(tmp_path / 'cls.onnx')[2:] == [40, 48]
    task = load_task(checkpoints['cls'])
    images = torch.randn(3, 3, 40, 48)  # 31 tokens: four chunks of 8
    with torch.no_grad():
        expected = [task(images)]
    difference = max_difference(run_onnx(tmp_path / 'cls.onnx', images), expected)
    print(f'cls chunkwise onnx vs PyTorch at 40x48: max abs difference {difference:.2e}')
    assert difference < TOLERANCE


def test_onnx_of_qna_vit_matches_pytorch(checkpoints, tmp_path, capsys):
    code, out, err = export(capsys, checkpoints['seg_qna'], 'onnx', tmp_path, '--image_size', '64', '96')
    assert code == 0, err
    assert 'fixed at 64x96' in out
    task = load_task(checkpoints['seg_qna'])
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = PYTORCH_OUTPUTS['seg_linear'](task, images)
    difference = max_difference(run_onnx(tmp_path / 'seg_qna.onnx', images), expected)
    print(f'QnA-ViT segmentation onnx vs PyTorch at 64x96: max abs difference {difference:.2e}')
    assert difference < TOLERANCE


def test_a_graph_that_cannot_take_other_sizes_is_removed_and_explained(checkpoints, tmp_path, capsys):
    # UPerNet's pyramid pooling (adaptive pools to 2x2 and 3x3) is exported for the traced size only
    code, _, err = export(capsys, checkpoints['seg'], 'onnx', tmp_path, '--retention_mode', 'parallel')
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert 'at 40x48' in lines[0] and '--retention_mode chunkwise' in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_missing_checkpoint_is_one_line_naming_the_option_and_writes_nothing(tmp_path, capsys):
    code, _, err = export(capsys, tmp_path / 'nope.ckpt', 'onnx', tmp_path / 'out')
    assert code == 2 and err.strip().count('\n') == 0 and '--ckpt_path' in err and 'no such file' in err
    assert not (tmp_path / 'out').exists()


def test_output_that_cannot_be_created_is_refused_before_the_checkpoint_is_read(tmp_path, capsys):
    (tmp_path / 'file').write_text('x')
    code, _, err = export(capsys, tmp_path / 'nope.ckpt', 'safetensors', tmp_path / 'file' / 'out')
    assert code == 2 and err.strip().count('\n') == 0 and '--output' in err and 'is a file' in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['file']


def test_unwritable_output_folder_is_refused(checkpoints, tmp_path, capsys, monkeypatch):
    folder = tmp_path / 'locked'
    folder.mkdir(mode=0o500)
    if os.geteuid() == 0:  # root writes in read-only folders: let the permission check answer as for a user
        monkeypatch.setattr(os, 'access', lambda path, mode: False)
    code, _, err = export(capsys, checkpoints['cls'], 'safetensors', folder / 'out')
    assert code == 2 and err.strip().count('\n') == 0 and '--output' in err and 'no write permission' in err
    assert list(folder.iterdir()) == []


def test_existing_files_are_never_overwritten(checkpoints, tmp_path, capsys):
    (tmp_path / 'cls.json').write_text('mine')
    code, _, err = export(capsys, checkpoints['cls'], 'safetensors', tmp_path)
    assert code == 2 and 'cls.json' in err and 'never overwrites' in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['cls.json'] and (tmp_path / 'cls.json').read_text() == 'mine'


def test_help_names_the_formats_and_what_is_dynamic(capsys):
    code, out, _ = run_main(['export', '--help'], capsys)
    assert code == 0 and 'safetensors' in out and 'onnx' in out and 'dynamic' in out and 'never overwrites' in out
    code, _, err = run_main(['export', '--ckpt_path', 'x.ckpt', '--format', 'pt', '--output', 'o'], capsys)
    assert code == 2 and "invalid choice: 'pt'" in err
