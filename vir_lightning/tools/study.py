"""``python -m vir_lightning study``: ViR (1D and 2D), QnA-ViT and ViT on the demo tasks at two resolutions.

Every backbone gets the same head, schedule, batch and number of optimizer steps (the packaged seg_demo /
det_demo recipes). ViR, ViR-2D and ViT have the same width, depth, heads and patch: only the token mixer
differs (ViR-2D: the same ViR with geometry='2d', decay by grid distance instead of raster order). QnA-ViT-T
is the paper's Tiny as is (four stages, 16M parameters; its maps feed the head without neck, and torchvision's
FPN), the local linear-cost point beside ViR's global linear and ViT's global quadratic one. Each run is a
normal ``python -m vir_lightning fit`` in its own process, validated once at the end. Reported per run: the
validation metric (mIoU for segmentation, mAP50 for detection), training throughput (images/s over the logged
training steps, validation excluded) and the process's peak resident memory. Written to
``<output>/study.{json,csv,md}``, TensorBoard logs under ``<output>/runs``.

``--minutes M``, the equal wall-clock mode: what a user gets in the same time. Each backbone trains M
minutes on the tree-crown demo at full resolution (1024-pixel crops of the 10 cm images, the held-out
1249x1035 image validated whole) and on the segmentation demo at 512 px. A short calibration run
(``CALIBRATION_STEPS`` steps, not counted) measures each backbone's step time, which sets its schedule's
length (warm-up and decay over the steps it can do in M minutes: the same schedule shape for both);
``--trainer.max_time`` stops it at M minutes in any case, and it is validated once, the same way.
Reported besides: the steps each did and the minutes they took.

The demo sets are small and the budgets short: quality figures say how they compare after the
same few minutes of training, not what either reaches when trained to convergence.
"""
import argparse
import csv
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import torch

# per task: config, metric, and per resolution (steps, global batch)
TASKS = {
    'seg': dict(config='seg_demo.yaml', metric='val/mIoU', patch=8,
                budgets={128: (80, 8), 512: (30, 2)}),
    'det': dict(config='det_demo.yaml', metric='val/mAP50', patch=16,
                budgets={256: (120, 8), 1024: (30, 2)}),
}
# the equal wall-clock mode: per task, input size, global batch and extra data arguments
TIMED = {
    'seg': dict(size=512, batch=2, data=[]),
    'det': dict(size=1024, batch=2, data=['--data.keep_resolution=true', '--data.tile_size=1024',
                                          '--data.stride=512', '--data.root=data/det_demo_tiles1024']),
}
CALIBRATION_STEPS = 8
WIDTH = dict(embed_dim=128, num_heads=4, depth=6, init_values=0.1)
BACKBONES = {'ViR': 'vir_tiny_patch16_224', 'ViR-2D': 'vir_tiny_patch16_224', 'ViT': 'vit_tiny_patch16_224',
             'QnA': 'qna_vit_tiny'}
QNA = {}  # qna_vit_tiny as registered


def backbone_kwargs(family: str, task: str, size: int) -> Dict:
    if family == 'QnA':
        return dict(QNA, img_size=size)
    kwargs = dict(WIDTH, img_size=size, patch_size=TASKS[task]['patch'])
    if family.startswith('ViR'):  # the default form: parallel up to 448 tokens, the linear-cost chunkwise one above
        kwargs.update(direction='bidirectional', retention_mode='auto', geometry='2d' if family == 'ViR-2D' else '1d')
    else:
        kwargs['dynamic_img_size'] = True  # images of other sizes (evaluation) resample positions
    return kwargs


def command(task: str, family: str, size: int, output: Path, steps: int, batch: int, name: str,
            extra: Sequence[str] = ()) -> List[str]:
    spec = TASKS[task]
    args = [
        sys.executable, '-m', 'vir_lightning', 'fit', '--config', spec['config'],
        f'--model.backbone={BACKBONES[family]}',
        f'--model.backbone_kwargs={json.dumps(backbone_kwargs(family, task, size))}',
        f'--data.image_size={size}', f'--data.batch_size={batch}',
        f'--trainer.max_steps={steps}', '--trainer.max_epochs=-1', '--trainer.check_val_every_n_epoch=null',
        f'--trainer.val_check_interval={steps}', '--trainer.num_sanity_val_steps=0',
        '--trainer.callbacks=[]', '--trainer.enable_checkpointing=false',  # no image logging or checkpoints
        f'--trainer.logger.init_args.save_dir={output / "runs"}',
        f'--trainer.logger.init_args.name={name}',
    ]
    if task == 'det':
        args.append('--data.keep_resolution=false')  # resize every image to a longest side of `size`
    return args + list(extra)  # last: an extra argument overrides the ones above


def read_scalars(log_dir: Path) -> Dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(log_dir)).Reload()
    return {tag: events.Scalars(tag) for tag in events.Tags()['scalars']}


def run(task: str, family: str, size: int, output: Path, steps: int = None, batch: int = None,
        extra: Sequence[str] = (), name: str = None) -> Dict:
    """One training run in its own process; steps and batch default to the task's budget at ``size``."""
    if steps is None:
        steps, batch = TASKS[task]['budgets'][size]
    name = name or f'{task}_{size}_{family}'
    record = dict(task=task, backbone=family, size=size, steps=steps, batch_size=batch, status='ok')
    start = time.perf_counter()
    process = subprocess.Popen(command(task, family, size, output, steps, batch, name, extra),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, 'NO_ALBUMENTATIONS_UPDATE': '1'})
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    record['wall_seconds'] = time.perf_counter() - start
    record['peak_rss_mb'] = usage.ru_maxrss / 1024
    if process.returncode:
        record['status'] = f'error (exit {process.returncode}): {stderr.strip().splitlines()[-1] if stderr else ""}'
        return record
    scalars = read_scalars(output / 'runs' / name / 'version_0')
    metric = scalars.get(TASKS[task]['metric'], [])
    record[TASKS[task]['metric']] = metric[-1].value if metric else None
    losses = scalars.get('train/loss', [])
    if len(losses) >= 2:  # logged steps carry wall times: the rate between the first and last excludes validation
        first, last = losses[0], losses[-1]
        record['train_images_per_s'] = (last.step - first.step) * batch / (last.wall_time - first.wall_time)
        record['steps_done'] = last.step + 1  # logged every step in the timed mode
        record['train_minutes'] = (last.wall_time - first.wall_time) / 60  # first logged step to last
    return record


def run_timed(task: str, family: str, minutes: float, output: Path) -> Dict:
    """``minutes`` of training: a calibration run measures the step time, which sets the schedule's length."""
    spec = TIMED[task]
    every_step = ['--trainer.log_every_n_steps=1']
    calibration = run(task, family, spec['size'], output, CALIBRATION_STEPS, spec['batch'],
                      [*spec['data'], *every_step, '--trainer.limit_val_batches=0'],
                      name=f'timed_{task}_{family}_calibration')
    if calibration['status'] != 'ok' or not calibration.get('train_images_per_s'):
        return {**calibration, 'mode': 'equal time', 'minutes': minutes}
    steps = max(1, int(calibration['train_images_per_s'] / spec['batch'] * minutes * 60))
    limit = f'00:00:{int(minutes):02d}:{round(60 * (minutes % 1)):02d}'  # DD:HH:MM:SS
    record = run(task, family, spec['size'], output, steps, spec['batch'],
                 [*spec['data'], *every_step, f'--trainer.max_time={limit}'], name=f'timed_{task}_{family}')
    return {**record, 'mode': 'equal time', 'minutes': minutes, 'planned_steps': steps,
            'calibration_images_per_s': calibration['train_images_per_s']}


def write(results: List[Dict], meta: Dict, output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / 'study.json').write_text(json.dumps({'meta': meta, 'results': results}, indent=1))
    columns = ['task', 'backbone', 'size', 'mode', 'minutes', 'steps', 'steps_done', 'train_minutes', 'batch_size',
               'status', 'val/mIoU', 'val/mAP50', 'train_images_per_s', 'peak_rss_mb', 'wall_seconds']
    with open(output / 'study.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, columns, extrasaction='ignore')
        writer.writeheader()
        writer.writerows(results)
    timed = any(r.get('mode') == 'equal time' for r in results)
    lines = [f"{meta['device']}, {meta['date']}, `{meta['command']}`", '',
             '| task | input | ' + ('minutes | steps done x batch' if timed else 'steps x batch') +
             ' | backbone | quality | train img/s | peak RSS MiB | wall s |',
             '|---|---|---|---|---|---|---|---|' + ('---|' if timed else '')]
    for r in results:
        name = TASKS[r['task']]['metric']
        quality = f"{name.split('/')[1]} {100 * r[name]:.1f}%" if r.get(name) is not None else r['status']
        budget = f"{r['minutes']:g} | {r.get('steps_done', 0)} x {r['batch_size']}" if timed else \
            f"{r['steps']} x {r['batch_size']}"
        lines.append(f"| {r['task']} | {r['size']} | {budget} | {r['backbone']} | {quality} | "
                     f"{r.get('train_images_per_s', 0):.2f} | {r['peak_rss_mb']:.0f} | {r['wall_seconds']:.0f} |")
    (output / 'study.md').write_text('\n'.join(lines) + '\n')


def main(argv: List[str] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog='python -m vir_lightning study', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--tasks', nargs='+', default=list(TASKS), choices=list(TASKS))
    p.add_argument('--backbones', nargs='+', default=list(BACKBONES), choices=list(BACKBONES))
    p.add_argument('--minutes', type=float, default=None,
                   help='equal wall-clock mode: every backbone trains this many minutes, on the detection demo at '
                        'full resolution and the segmentation demo at 512 px')
    p.add_argument('--output', default=f'benchmarks/results/study-cpu-{datetime.date.today()}')
    args = p.parse_args(argv)
    if args.minutes is not None and not 0 < args.minutes < 60 * 24:
        p.error('--minutes must be more than 0 and less than a day')
    output = Path(args.output)
    meta = {'device': f'{platform.machine()} CPU, {os.cpu_count()} cores' if not torch.cuda.is_available()
            else torch.cuda.get_device_name(), 'date': datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec='seconds'), 'torch': torch.__version__,
            'command': 'python -m vir_lightning study ' + ' '.join(argv)}
    results = []
    for task in args.tasks:
        for size in [TIMED[task]['size']] if args.minutes else TASKS[task]['budgets']:
            for family in args.backbones:
                print(f'{task} {size}px {family} ...', flush=True)
                results.append(run_timed(task, family, args.minutes, output) if args.minutes else
                               run(task, family, size, output))
                print(f'  {results[-1]}', flush=True)
                write(results, meta, output)
    print((output / 'study.md').read_text())


if __name__ == '__main__':
    main()
