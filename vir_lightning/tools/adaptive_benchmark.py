"""``python -m vir_lightning benchmark adaptive CKPT [CKPT ...]``: what AdaViT saves, measured.

For each checkpoint of a classification or segmentation run (AdaViT's ``AdaptiveClassificationTask`` /
``AdaptiveSegmentationTask`` or the plain task it started from), on the validation images of the data it
was trained on (read from the run's ``config.yaml``, written beside the checkpoints' folder by
``vir_lightning fit``): top-1 accuracy or mIoU, the backbone's GFLOPs and GMACs per image (an AdaViT
model's from its kept counts, averaged over the images; a plain model's from torch.utils.flop_counter),
the kept fractions, and real images/s at each batch size, on real images (decisions depend on the
image), median of repeated passes after warm-up, in the run's inference retention form. An AdaViT
checkpoint is also timed with every decision ignored (its backbone alone), pass by pass in turn with
it: the speed-up is the median of the paired ratios.
Results: JSON (every raw figure, device, versions, command), a markdown table and a plot of the score
against GFLOPs.
"""
import argparse
import importlib
import json
import statistics
import time
from pathlib import Path
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
import yaml

from ..errors import UserError
from .benchmark import environment

def run_config(checkpoint: Path) -> Dict:
    """The ``config.yaml`` of the run that wrote ``checkpoint`` (runs/<name>/version_N/checkpoints/x.ckpt)."""
    path = checkpoint.resolve().parent.parent / 'config.yaml'
    if not path.is_file():
        raise UserError(f"no config.yaml beside '{checkpoint}' (expected '{path}'): pass a checkpoint written by "
                        f"vir_lightning fit, inside its run folder")
    return yaml.safe_load(path.read_text())


def validation_images(config: Dict, count: int) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """The first ``count`` images [C, H, W] of the run's validation data and their targets (sizes may differ)."""
    data = config['data']
    module, name = data['class_path'].rsplit('.', 1)
    datamodule = getattr(importlib.import_module(module), name)(**{**data.get('init_args', {}), 'num_workers': 0})
    datamodule.setup('validate')
    images, targets = [], []
    for batch_images, batch_targets in datamodule.val_dataloader():
        images.extend(batch_images)
        targets.extend(batch_targets)
        if len(images) >= count:
            break
    return images[:count], targets[:count]


def equal_size_batches(images: List[torch.Tensor], targets: List[torch.Tensor], size: int):
    """(images, targets) batches of at most ``size`` consecutive images of one shape."""
    start = 0
    while start < len(images):
        end = start + 1
        while end < len(images) and end - start < size and images[end].shape == images[start].shape:
            end += 1
        yield torch.stack(images[start:end]), torch.stack(targets[start:end])
        start = end


def timing_images(images: List[torch.Tensor], multiple: int) -> torch.Tensor:
    """The images as one tensor, centre-cropped to the smallest height and width, rounded down to a ``multiple``
    (segmentation data differ in size, and batches need one)."""
    h, w = (min(i.shape[dim] for i in images) // multiple * multiple for dim in (-2, -1))
    def crop(image):
        top, left = (image.shape[-2] - h) // 2, (image.shape[-1] - w) // 2
        return image[..., top:top + h, left:left + w]
    return torch.stack([crop(image) for image in images])


def pass_seconds(forwards: List, images: torch.Tensor, batch_size: int, warmup: int,
                 repeats: int) -> Tuple[int, List[List[float]]]:
    """The images one pass covers, and the seconds of each pass of each forward over them in batches, the forwards
    interleaved pass by pass: this machine's speed drifts by 10-30% within minutes, so two models timed one after
    the other compare moments."""
    batches = list(images.split(batch_size))
    if len(batches[-1]) < batch_size and len(batches) > 1:
        batches = batches[:-1]
    times: List[List[float]] = [[] for _ in forwards]
    with torch.inference_mode():
        for repeat in range(warmup + repeats):
            for forward, seconds in zip(forwards, times):
                start = time.perf_counter()
                for batch in batches:
                    forward(batch)
                if repeat >= warmup:
                    seconds.append(time.perf_counter() - start)
    return sum(len(batch) for batch in batches), times


def counted_macs(model, images: List[torch.Tensor], multiple: int) -> float:
    """Mean multiply-adds per image that torch.utils.flop_counter counts for ``model`` (once per image size; padded
    to a ``multiple`` of the patch size as whole-image inference pads)."""
    from torch.utils.flop_counter import FlopCounterMode
    shapes = [tuple(image.shape) for image in images]
    per_shape = {}
    for shape in set(shapes):
        image = images[shapes.index(shape)][None]
        with FlopCounterMode(display=False) as counter:
            model(F.pad(image, (0, -shape[-1] % multiple, 0, -shape[-2] % multiple)))
        per_shape[shape] = counter.get_total_flops() / 2.0
    return sum(per_shape[shape] for shape in shapes) / len(shapes)


def _predict(task, batch: torch.Tensor):
    """The task's validation logits for ``batch`` and the decisions behind them (None: a plain model)."""
    from ..models.adavit import AdaptiveVisionTransformer
    model = task.backbone
    if task.task == 'segmentation':
        if not isinstance(model, AdaptiveVisionTransformer):
            return task.predict_logits(batch), None
        with task.collecting_decisions() as seen:
            return task.predict_logits(batch), seen
    if not isinstance(model, AdaptiveVisionTransformer):
        return task(batch), None
    features, decisions = model.forward_adaptive(batch)
    return task.head(model.forward_head(features)), [decisions]


def _score(task, batches) -> float:
    """Top-1 accuracy, or mIoU at the annotations' size (the task's ignore index), over (logits, targets) batches."""
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex
    if task.task == 'classification':
        metric = MulticlassAccuracy(task.num_classes, average='micro')
    else:
        metric = MulticlassJaccardIndex(task.num_classes, average='macro', ignore_index=task.hparams.ignore_index)
    for logits, targets in batches:
        if targets.dim() == 3:
            logits = torch.nn.functional.interpolate(logits, size=targets.shape[-2:], mode='bilinear',
                                                     align_corners=False)
        metric.update(logits.argmax(1), targets)
    return float(metric.compute())


def _forwards(task):
    """The forward that timing runs (images -> logits), and for an AdaViT model the plain forward of the same
    weights with every decision ignored (None for a plain model)."""
    from ..models.adavit import AdaptiveVisionTransformer
    model = task.backbone
    if not isinstance(model, AdaptiveVisionTransformer):
        return task, None
    if task.task == 'segmentation':
        return task, lambda batch: task.head(model.backbone.forward_intermediates(
            batch, indices=task.out_indices, intermediates_only=True))
    return task, lambda batch: task.head(model.backbone(batch))


def measure(path: Path, images: List[torch.Tensor], targets: List[torch.Tensor], args) -> Dict:
    from ..checkpoints import load_task
    from ..tasks.adaptive import TARGET_OPTIONS
    from ..tasks.backbone import patch_size
    task = load_task(path, 'checkpoint')
    task._set_retention_mode(training=False)  # the form the run infers with
    timed_forward, plain = _forwards(task)
    adaptive = plain is not None
    record: Dict = {'checkpoint': str(path), 'task': type(task).__name__, 'backbone': task.hparams.backbone,
                    'images': len(images), 'metric': 'mIoU' if task.task == 'segmentation' else 'top-1'}
    scored, used, macs = [], [], []
    with torch.inference_mode():
        for batch, batch_targets in equal_size_batches(images, targets, 16):
            logits, decisions = _predict(task, batch)
            scored.append((logits, batch_targets))
            if decisions:  # the forwards of this batch (one per window): usage averaged, cost per image summed
                used.append({k: sum(float(d.usage()[k]) for d in decisions) / len(decisions) * len(batch)
                             for k in decisions[0].kinds()})
                macs.append(sum(task.backbone.macs(d) for d in decisions))
        if adaptive:
            macs = torch.cat(macs)
            record['usage'] = {k: sum(u[k] for u in used) / len(images) for k in used[0]}
            record['targets'] = {k: task.hparams[TARGET_OPTIONS[k]] for k in record['usage']}
        else:
            macs = torch.tensor([counted_macs(task.backbone, images, patch_size(task.backbone))])
    record['score'] = _score(task, scored)
    record['gmacs'] = float(macs.double().mean()) / 1e9
    record['gflops'] = 2 * record['gmacs']
    timed = timing_images(images, patch_size(task.backbone))
    record['timed_size'] = list(timed.shape[-2:])
    record['images_per_s'], record['full_images_per_s'], record['speed_up'] = {}, {}, {}
    for batch_size in args.batch_sizes:
        # an AdaViT model beside the same weights with every decision ignored: what the adaptation saves
        count, times = pass_seconds([timed_forward, plain] if adaptive else [timed_forward], timed, batch_size,
                                    args.warmup, args.repeats)
        record['images_per_s'][batch_size] = count / statistics.median(times[0])
        if adaptive:
            record['full_images_per_s'][batch_size] = count / statistics.median(times[1])
            record['speed_up'][batch_size] = statistics.median(f / a for a, f in zip(*times))
    return record


def markdown_table(results: List[Dict], meta: Dict) -> str:
    sizes = sorted({b for r in results for b in r['images_per_s']}, key=int)
    head = ['checkpoint', 'targets (patch/head/block)', 'kept (patch/head/block)', results[0]['metric'],
            'backbone GFLOPs', 'GMACs'] + \
        [f'img/s at batch {b} (speed-up)' for b in sizes]
    lines = [f"{meta['device']}, torch {meta['versions']['torch']}, {results[0]['images']} validation images "
             f"(timed at {'x'.join(map(str, results[0]['timed_size']))}); `{meta['command']}`", '',
             '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    def fractions(values):
        return '/'.join(f"{values[k]:.2f}" if k in values else '-' for k in ('patches', 'heads', 'blocks')) \
            if values else '-'
    for r in results:
        speeds = [f"{r['images_per_s'][b]:.1f}" + (f" ({r['speed_up'][b]:.2f}x)" if r['speed_up'] else '')
                  for b in sizes]
        lines.append(f"| {Path(r['checkpoint']).name} | {fractions(r.get('targets'))} | {fractions(r.get('usage'))} "
                     f"| {100 * r['score']:.1f}% | {r['gflops']:.4f} | {r['gmacs']:.4f} | " + ' | '.join(speeds) + ' |')
    return '\n'.join(lines)


def plot(results: List[Dict], path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for r in results:
        ax.scatter(r['gflops'], 100 * r['score'], color='C1' if r.get('usage') else 'C0')
        tag = 'full' if not r.get('targets') else f"target {r['targets'].get('patches', r['targets'].get('heads'))}"
        ax.annotate(tag, (r['gflops'], 100 * r['score']), textcoords='offset points', xytext=(4, 4), fontsize=8)
    ax.set_xlabel('backbone GFLOPs per image')
    ax.set_ylabel(f"val {results[0]['metric']} (%)")
    ax.set_title(f"AdaViT: {results[0]['metric']} against compute", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python -m vir_lightning benchmark adaptive', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('checkpoints', nargs='+', help='classification checkpoints (AdaViT or plain) to compare')
    p.add_argument('--images', type=int, default=1000, help='validation images to score and time on')
    p.add_argument('--batch-sizes', nargs='+', type=int, default=[1, 32])
    p.add_argument('--warmup', type=int, default=1, help='untimed passes before timing')
    p.add_argument('--repeats', type=int, default=5,
                   help='timed passes of each model, interleaved with its plain twin; medians are reported')
    p.add_argument('--output', default='benchmarks/results/adaptive', help='output folder')
    return p


def main(argv: List[str]) -> Path:
    args = parser().parse_args(argv)
    if args.images < 1 or args.repeats < 1 or args.warmup < 0 or any(b < 1 for b in args.batch_sizes):
        raise UserError('--images, --repeats and --batch-sizes must be >= 1, --warmup >= 0')
    paths = [Path(p) for p in args.checkpoints]
    images, targets = validation_images(run_config(paths[0]), args.images)
    args.batch_size = args.batch_sizes
    meta = environment(torch.device('cpu'), torch.float32, args, ['adaptive', *argv])
    results = []
    for path in paths:
        results.append(measure(path, images, targets, args))
        print(markdown_table(results[-1:], meta).splitlines()[-1], flush=True)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / 'results.json').write_text(json.dumps({'meta': meta, 'results': results}, indent=1))
    (output / 'results.md').write_text(markdown_table(results, meta) + '\n')
    plot(results, output / 'accuracy_gflops.png')
    print(markdown_table(results, meta))
    print(f'wrote {output}/results.{{json,md}} and accuracy_gflops.png')
    return output
