"""``python -m vir_lightning export``: a trained checkpoint as files that load without this project.

A ``.ckpt`` is Lightning's training state (weights under task prefixes, optimizer state,
hyperparameters) that only ``vir_lightning`` can rebuild. Export writes what other tools load:

* ``--format safetensors``: the backbone alone, in timm's state-dict naming, as ``<stem>.safetensors``
  (no pickle: loading it runs no code), and ``<stem>.json``, the ``timm.create_model`` arguments
  that rebuild it (``import vir_lightning`` first: it registers the ViR models)::

      timm.create_model(c['model_name'], pretrained=True, pretrained_cfg_overlay=c['pretrained_cfg_overlay'],
                        **c['kwargs'])  # c: the JSON; its overlay names the file beside it

  The overlay carries a classifier's ``num_classes``: without it timm re-initialises a classifier
  whose class count differs from the default config's 1000. A segmentation or detection backbone
  is timm's ``features_only`` model (blocks after the last used one, final norm and classifier were
  never trained), rebuilt with ``features_only`` and its ``out_indices``. In mmseg:
  ``backbone=dict(type='ViR', ..., init_cfg=dict(type='Pretrained', checkpoint='<stem>.safetensors'))``.
* ``--format onnx``: the whole model for its task as ``<stem>.onnx``. Input ``images``, float32
  [batch, 3, H, W], normalised as in training (the DataModule's mean/std, ImageNet's by default).
  Outputs: classification ``logits`` [batch, classes]; segmentation ``logits`` [batch, classes, H, W]
  (whole image, at the input size); detection the backbone and simple feature pyramid only,
  ``pyramid_0`` .. ``pyramid_3``, ``pyramid_pool`` (strides patch/4, /2, x1, x2, x4), without
  torchvision's anchors, box heads and NMS. ViR runs its pure-PyTorch ``--retention_mode`` form
  (MambaVision and VMamba need custom CUDA/Triton selective-scan kernels, which ONNX cannot express).
  What is dynamic: the batch, always; H and W in the ``parallel`` form (multiples of the printed
  stride, at least two strides), unless the head pools to fixed grids (UPerNet); the ``chunkwise``
  form's scan over chunks is a Python loop that the exporter unrolls for the traced token count, so
  there H and W are fixed at ``--image_size``. The file is then run in onnxruntime at the traced
  size (and, when dynamic, at a second one) against PyTorch: a mismatch removes it and says why.

Files are named after the checkpoint (``last.ckpt`` -> ``last.onnx``). An export never overwrites:
a file already there is an error, raised with the other checks of ``--output`` before any work.
"""
import argparse
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from ..checkpoints import load_task
from ..errors import UserError
from ..tasks.backbone import patch_size, timm_model

FORMATS = ('safetensors', 'onnx')
ONNX_RETENTION_MODES = ('chunkwise', 'parallel')
ONNX_PACKAGES = ('onnx', 'onnxscript', 'onnxruntime')
# The self-check looks for a wrong graph (a shape traced as a constant, a misread op), not for
# float rounding, which grows with the model: absolute and relative, as torch.allclose.
CHECK_ATOL = CHECK_RTOL = 1e-3


def output_names(ckpt_path: str, fmt: str) -> List[str]:
    """The files an export writes, named after the checkpoint (``last.ckpt`` -> ``last.onnx``).

    ``.onnx.data`` is written only for models over ONNX's 2 GB limit, but is checked all the same.
    """
    stem = Path(ckpt_path).stem
    return [f'{stem}.safetensors', f'{stem}.json'] if fmt == 'safetensors' else [f'{stem}.onnx', f'{stem}.onnx.data']


def check_output(output: Path, names: List[str]) -> None:
    """A UserError unless ``output`` is, or can be created as, a writable folder holding none of ``names``."""
    if output.exists() and not output.is_dir():
        raise UserError(f"--output '{output}' is a file: pass a folder")
    existing = next(p for p in (output, *output.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"--output '{output}' cannot be created: '{existing}' is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--output '{output}' cannot be written: no write permission in '{existing}'")
    for name in names:
        if (output / name).exists():
            raise UserError(f"--output '{output}' already holds {name}: export never overwrites; remove it "
                            f"or pass another --output")


def timm_recipe(task: nn.Module, weights_name: str) -> Dict:
    """What ``timm.create_model`` needs to rebuild the task's backbone from the exported weights."""
    import timm

    hp = task.hparams
    kwargs = dict(hp.get('backbone_kwargs') or {})
    overlay = {'file': weights_name}
    if isinstance(task.backbone.feature_info, timm.models.FeatureInfo):  # a features_only model
        kwargs.update(features_only=True, out_indices=list(task.backbone.feature_info.out_indices))
    else:
        kwargs['num_classes'] = overlay['num_classes'] = task.backbone.num_classes
    return {'model_name': hp.backbone, 'kwargs': kwargs, 'pretrained_cfg_overlay': overlay,
            'task': type(task).__name__}


def export_safetensors(task: nn.Module, output: Path, names: List[str]) -> List[Path]:
    from safetensors.torch import save_file

    weights, recipe = output / names[0], output / names[1]
    output.mkdir(parents=True, exist_ok=True)
    save_file(timm_model(task.backbone).state_dict(), str(weights))
    recipe.write_text(json.dumps(timm_recipe(task, names[0]), indent=2) + '\n')
    return [weights, recipe]


class SegmentationLogits(nn.Module):
    """Whole-image segmentation logits at the input size (what ``predict`` computes with inference 'whole')."""

    def __init__(self, task: nn.Module):
        super().__init__()
        self.task = task

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.task._logits(images)


def onnx_module(task: nn.Module) -> Tuple[nn.Module, int]:
    """The module to export and the stride its input sides must be multiples of."""
    from ..tasks import ClassificationTask, DetectionTask, SegmentationTask

    if isinstance(task, ClassificationTask):
        return task, patch_size(task.backbone)
    if isinstance(task, SegmentationTask):
        return SegmentationLogits(task).eval(), task.patch_size
    if isinstance(task, DetectionTask):  # the detector pads its batches to the pyramid's coarsest stride
        return task.detector.backbone, task.detector.backbone.max_stride
    raise UserError(f"--format onnx does not know the outputs of a {type(task).__name__}")


def image_size(task: nn.Module, requested: Optional[List[int]], stride: int) -> Tuple[int, int]:
    """``--image_size`` (one side, or H W), checked against ``stride``; default: the backbone's img_size."""
    if requested is None:
        from timm.data import resolve_model_data_config
        patch_embed = getattr(timm_model(task.backbone), 'patch_embed', None)
        size = tuple(patch_embed.img_size) if getattr(patch_embed, 'img_size', None) else \
            tuple(resolve_model_data_config(timm_model(task.backbone))['input_size'][1:])
        return tuple(-(-s // stride) * stride for s in size)
    if len(requested) > 2:
        raise UserError(f"--image_size takes one side or H W, got {len(requested)} numbers")
    size = tuple(requested) * (2 // len(requested))
    if any(s < stride or s % stride for s in size):
        fixed = ' '.join(str(max(stride, -(-s // stride) * stride)) for s in size)
        raise UserError(f"--image_size {' '.join(map(str, requested))}: the sides must be multiples of this "
                        f"model's stride {stride}, e.g. {fixed}")
    return size


def _outputs(module: nn.Module, images: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The module's outputs by ONNX output name (a pyramid's levels, or 'logits')."""
    with torch.no_grad():
        out = module(images)
    return {f'pyramid_{k}': v for k, v in out.items()} if isinstance(out, dict) else {'logits': out}


def export_onnx(task: nn.Module, paths: List[Path], mode: str, requested: Optional[List[int]]) -> List[str]:
    """Export to ``paths[0]``, then check it in onnxruntime against PyTorch; returns the check's lines."""
    module, stride = onnx_module(task)
    size = image_size(task, requested, stride)
    model = timm_model(task.backbone)
    dynamic_hw = hasattr(model, 'set_retention_mode') and mode == 'parallel'
    if hasattr(model, 'set_retention_mode'):
        model.set_retention_mode(mode, kernel='torch')  # fla's Triton kernels cannot be exported
    if dynamic_hw:  # torch.export fixes a size of one stride (its 0/1 specialisation): trace at least two
        size = tuple(max(s, 2 * stride) for s in size)
    images = torch.randn(2, 3, *size)
    names = list(_outputs(module, images))  # this first run also fills the model's caches
    dims = {0: torch.export.Dim('batch')}
    if dynamic_hw:
        dims.update({2: stride * torch.export.Dim('height'), 3: stride * torch.export.Dim('width')})
    # The dynamo exporter (torch.export + onnxscript) rather than the legacy TorchScript tracer: the
    # tracer turns Python arithmetic on sizes (token counts, position-embedding grids) into constants
    # without a word, so a graph declared dynamic is wrong at other sizes; torch.export tracks them
    # symbolically. torch.onnx.export, not LightningModule.to_onnx: only a classifier's forward is
    # the function to export.
    with torch.no_grad():
        program = torch.onnx.export(module, (images,), dynamo=True, input_names=['images'], output_names=names,
                                    dynamic_shapes={'images': dims}, verbose=False)
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    program.save(str(paths[0]))  # weights inside the file, or beside it (.onnx.data) past ONNX's 2 GB
    lines = []
    for sample in [images] + ([torch.randn(1, 3, size[0] + stride, size[1] + 2 * stride)] if dynamic_hw else []):
        where, expected = f'{sample.shape[-2]}x{sample.shape[-1]}', list(_outputs(module, sample).values())
        try:
            got = program(sample)  # onnxruntime
            if [g.shape for g in got] != [e.shape for e in expected]:
                raise ValueError(f'output shapes {[tuple(g.shape) for g in got]}, expected '
                                 f'{[tuple(e.shape) for e in expected]}')
            diff = max((g - e).abs().max().item() for g, e in zip(got, expected))
            matches = all(torch.allclose(g, e, rtol=CHECK_RTOL, atol=CHECK_ATOL) for g, e in zip(got, expected))
            detail = f'max abs difference {diff:.2e}'
        except Exception as error:  # onnxruntime's own, or the shapes above: a graph that cannot take this size
            matches, detail = False, str(error).strip().splitlines()[0][:200]
        if not matches:
            for path in paths:
                path.unlink(missing_ok=True)
            hint = 'this model cannot take other sizes (e.g. UPerNet pools to fixed grids): export with ' \
                '--retention_mode chunkwise, which fixes H and W at --image_size' if sample is not images else \
                'please report it'
            raise UserError(f"the exported graph does not match PyTorch at {where} ({detail}); the file was "
                            f"removed: {hint}")
        lines.append(f'onnxruntime vs PyTorch at {where}: {detail}')
    hw = f'dynamic (multiples of {stride})' if dynamic_hw else f'fixed at {size[0]}x{size[1]}'
    lines.append(f"input images [batch, 3, H, W]: batch dynamic, H and W {hw}; outputs {', '.join(names)}")
    return lines


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python -m vir_lightning export', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--ckpt_path', required=True, help='a .ckpt written by vir_lightning fit')
    p.add_argument('--format', required=True, choices=FORMATS,
                   help='safetensors: the backbone for timm/mmseg; onnx: the whole model for onnxruntime')
    p.add_argument('--output', required=True,
                   help='folder for the files, created if needed; files already there are never overwritten')
    p.add_argument('--retention_mode', default='chunkwise', choices=ONNX_RETENTION_MODES,
                   help='onnx, ViR backbones: chunkwise (linear cost; H and W fixed) or parallel (N x N scores; '
                        'H and W dynamic) (default: %(default)s)')
    p.add_argument('--image_size', type=int, nargs='+', metavar='SIDE',
                   help="onnx: the traced input size, one side or H W (default: the backbone's img_size)")
    return p


def main(argv: Optional[List[str]] = None) -> List[Path]:
    args = parser().parse_args(sys.argv[2:] if argv is None else argv)
    output = Path(args.output).expanduser()
    names = output_names(args.ckpt_path, args.format)
    check_output(output, names)
    if args.format == 'onnx':
        import importlib.util
        missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
        if missing:
            raise UserError(f"--format onnx needs {', '.join(missing)}: pip install 'vir-lightning[export]'")
    task = load_task(args.ckpt_path)
    if hasattr(task, 'adapt_backbone'):  # AdaViT's tasks: per-image decisions, data-dependent control flow
        raise UserError(f"--ckpt_path '{args.ckpt_path}' is an AdaViT checkpoint ({type(task).__name__}): export "
                        f"writes plain timm models and fixed ONNX graphs, which cannot skip per image; run it with "
                        f"vir_lightning predict, or export the checkpoint it was fine-tuned from")
    if args.format == 'onnx':
        for line in export_onnx(task, [output / name for name in names], args.retention_mode, args.image_size):
            print(line)
        written = [output / name for name in names if (output / name).exists()]
    else:
        written = export_safetensors(task, output, names)
    print(f"wrote {', '.join(str(p) for p in written)}")
    return written
