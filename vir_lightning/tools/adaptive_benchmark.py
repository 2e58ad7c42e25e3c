"""``python -m vir_lightning benchmark adaptive CKPT [CKPT ...]``: what AdaViT saves, measured.

For each classification checkpoint (AdaViT's ``AdaptiveClassificationTask`` or the plain
``ClassificationTask`` it started from), on the validation images of the data it was trained on (read
from the run's ``config.yaml``, written beside the checkpoints' folder by ``vir_lightning fit``):
top-1 accuracy, GFLOPs and GMACs per image (an AdaViT model's from its kept counts, averaged over the
images; a plain model's from torch.utils.flop_counter), the kept fractions, and real images/s at each
batch size, on real images (decisions depend on the image), median of repeated passes after warm-up.
An AdaViT checkpoint is also timed with every decision ignored (its backbone alone): the speed-up is
the ratio. Results: JSON (every raw figure, device, versions, command), a markdown table and a plot of
accuracy against GFLOPs.
"""
import argparse
import importlib
import json
import statistics
from pathlib import Path
from typing import Dict, List

import torch
import yaml

from ..errors import UserError
from .benchmark import environment, median_seconds

TARGET_OPTIONS = {'patches': 'patch_target', 'heads': 'head_target', 'blocks': 'block_target'}


def run_config(checkpoint: Path) -> Dict:
    """The ``config.yaml`` of the run that wrote ``checkpoint`` (runs/<name>/version_N/checkpoints/x.ckpt)."""
    path = checkpoint.resolve().parent.parent / 'config.yaml'
    if not path.is_file():
        raise UserError(f"no config.yaml beside '{checkpoint}' (expected '{path}'): pass a checkpoint written by "
                        f"vir_lightning fit, inside its run folder")
    return yaml.safe_load(path.read_text())


def validation_images(config: Dict, count: int) -> List[tuple]:
    """(images, targets) batches of the run's validation data, ``count`` images in all."""
    data = config['data']
    module, name = data['class_path'].rsplit('.', 1)
    datamodule = getattr(importlib.import_module(module), name)(**{**data.get('init_args', {}), 'num_workers': 0})
    datamodule.setup('validate')
    images, targets = [], []
    for batch_images, batch_targets in datamodule.val_dataloader():
        images.append(batch_images)
        targets.append(batch_targets)
        if sum(len(t) for t in targets) >= count:
            break
    return torch.cat(images)[:count], torch.cat(targets)[:count]


def images_per_s(model: torch.nn.Module, images: torch.Tensor, batch_size: int, warmup: int, repeats: int) -> float:
    """Real throughput of ``model`` over ``images`` in batches (median of ``repeats`` passes)."""
    batches = list(images.split(batch_size))
    if len(batches[-1]) < batch_size and len(batches) > 1:
        batches = batches[:-1]

    def run():
        for batch in batches:
            model(batch)
    with torch.inference_mode():
        times = median_seconds(run, torch.device('cpu'), warmup, repeats)
    return sum(len(b) for b in batches) / statistics.median(times)


def measure(path: Path, images: torch.Tensor, targets: torch.Tensor, args) -> Dict:
    from torch.utils.flop_counter import FlopCounterMode

    from ..checkpoints import load_task
    from ..models.adavit import AdaptiveVisionTransformer
    task = load_task(path, 'checkpoint')
    model = task.backbone
    adaptive = isinstance(model, AdaptiveVisionTransformer)
    record: Dict = {'checkpoint': str(path), 'task': type(task).__name__, 'backbone': task.hparams.backbone,
                    'images': len(images)}
    with torch.inference_mode():
        if adaptive:
            logits, used, macs = [], [], []
            for batch in images.split(64):
                features, decisions = model.forward_adaptive(batch)
                logits.append(task.head(model.forward_head(features)))
                used.append({k: float(v) * len(batch) for k, v in decisions.usage().items()})
                macs.append(model.macs(decisions))
            logits, macs = torch.cat(logits), torch.cat(macs)
            record['usage'] = {k: sum(u[k] for u in used) / len(images) for k in used[0]}
            record['targets'] = {k: task.hparams[TARGET_OPTIONS[k]] for k in record['usage']}
        else:
            logits = task(images)
            with FlopCounterMode(display=False) as counter:
                task(images[:1])
            macs = torch.tensor([counter.get_total_flops() / 2.0])
    record['acc1'] = float((logits.argmax(1) == targets).float().mean())
    record['gmacs'] = float(macs.double().mean()) / 1e9
    record['gflops'] = 2 * record['gmacs']
    record['images_per_s'] = {}
    record['full_images_per_s'] = {}
    for batch_size in args.batch_sizes:
        record['images_per_s'][batch_size] = images_per_s(task, images, batch_size, args.warmup, args.repeats)
        if adaptive:  # the same weights with every decision ignored: what the adaptation saves
            plain = torch.nn.Sequential(model.backbone, task.head)
            record['full_images_per_s'][batch_size] = images_per_s(plain, images, batch_size, args.warmup,
                                                                   args.repeats)
    return record


def markdown_table(results: List[Dict], meta: Dict) -> str:
    sizes = sorted({b for r in results for b in r['images_per_s']}, key=int)
    head = ['checkpoint', 'targets (patch/head/block)', 'kept (patch/head/block)', 'top-1', 'GFLOPs', 'GMACs'] + \
        [f'img/s at batch {b} (speed-up)' for b in sizes]
    lines = [f"{meta['device']}, torch {meta['versions']['torch']}, {results[0]['images']} validation images; "
             f"`{meta['command']}`", '', '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    def fractions(values):
        return '/'.join(f"{values[k]:.2f}" for k in ('patches', 'heads', 'blocks') if k in values) if values else '-'
    for r in results:
        speeds = [f"{r['images_per_s'][b]:.1f}" + (f" ({r['images_per_s'][b] / r['full_images_per_s'][b]:.2f}x)"
                                                   if r['full_images_per_s'] else '') for b in sizes]
        lines.append(f"| {Path(r['checkpoint']).name} | {fractions(r.get('targets'))} | {fractions(r.get('usage'))} "
                     f"| {100 * r['acc1']:.1f}% | {r['gflops']:.4f} | {r['gmacs']:.4f} | " + ' | '.join(speeds) + ' |')
    return '\n'.join(lines)


def plot(results: List[Dict], path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for r in results:
        ax.scatter(r['gflops'], 100 * r['acc1'], color='C1' if r.get('usage') else 'C0')
        tag = 'full' if not r.get('targets') else f"target {r['targets'].get('patches', r['targets'].get('heads'))}"
        ax.annotate(tag, (r['gflops'], 100 * r['acc1']), textcoords='offset points', xytext=(4, 4), fontsize=8)
    ax.set_xlabel('GFLOPs per image')
    ax.set_ylabel('val top-1 (%)')
    ax.set_title('AdaViT: accuracy against compute', fontsize=10)
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
    p.add_argument('--repeats', type=int, default=3, help='timed passes; the median is reported')
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
