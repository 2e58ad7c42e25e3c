"""``python -m vir_lightning benchmark layers``: QnA against local self-attention, layer by layer.

The QnA paper (Arar et al. 2022) claims up to 10x less memory and up to 5x the speed of existing
local attention as the window grows. This measures, on one map of [1, H, W, C] with the same
window side k, heads (head width 8, as QnA-ViT) and width:

* ``qna``: the QnA layer in its 'conv' form (vir_lightning.models.QnA, 2 queries per head);
* ``sliding``: sliding-window self-attention (every pixel's query attends to its k x k
  neighbourhood, relative position bias per offset; keys and values unfolded, the usual
  implementation without custom kernels; SASA, Ramachandran et al. 2019). No library provides it,
  so it is written here, as a baseline only;
* ``swin``: timm's Swin ``WindowAttention`` on non-overlapping k x k windows (the map zero-padded
  up to a multiple of k; cheaper by design: no overlap, a different receptive field).

For each: inference time and peak memory, and a training step's (forward, backward). Times are
medians of repeated runs after warm-up; memory is CUDA's allocator peak, or on CPU the peak growth
of resident memory in a fresh process per point (as the model benchmark).
"""
import argparse
import csv
import json
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .benchmark import _is_oom, device_and_dtype, environment, heading, in_fresh_process, median_seconds, peak_memory

LAYERS = ('qna', 'sliding', 'swin')
KERNELS = (3, 5, 7, 9, 11, 15)
MAPS = ('56x56x64', '112x112x128')
HEAD_DIM = 8


class SlidingWindowAttention(nn.Module):
    """Local self-attention over each pixel's k x k neighbourhood (zero padding masked), NHWC."""

    def __init__(self, dim: int, num_heads: int, kernel_size: int):
        super().__init__()
        self.num_heads, self.kernel_size = num_heads, kernel_size
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.rel_pos_bias = nn.Parameter(torch.zeros(num_heads, kernel_size * kernel_size))
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        h, d, k = self.num_heads, C // self.num_heads, self.kernel_size
        q, key, v = self.qkv(x).permute(0, 3, 1, 2).chunk(3, dim=1)
        unfold = dict(kernel_size=k, padding=(k - 1) // 2)
        key = F.unfold(key, **unfold).view(B, h, d, k * k, H * W)
        v = F.unfold(v, **unfold).view(B, h, d, k * k, H * W)
        inside = F.unfold(x.new_ones(1, 1, H, W), **unfold).view(1, 1, k * k, H * W) > 0
        logits = torch.einsum('bhdl,bhdal->bhal', q.reshape(B, h, d, H * W) * d ** -0.5, key)
        logits = (logits + self.rel_pos_bias.view(1, h, k * k, 1)).masked_fill(~inside, float('-inf'))
        out = torch.einsum('bhal,bhdal->bhdl', logits.softmax(dim=2), v).reshape(B, C, H, W)
        return self.proj(out.permute(0, 2, 3, 1))


class SwinWindows(nn.Module):
    """timm's Swin WindowAttention on non-overlapping k x k windows of the zero-padded map, NHWC."""

    def __init__(self, dim: int, num_heads: int, kernel_size: int):
        super().__init__()
        from timm.models.swin_transformer import WindowAttention
        self.kernel_size = kernel_size
        self.attn = WindowAttention(dim, num_heads, window_size=kernel_size, qkv_bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from timm.models.swin_transformer import window_partition, window_reverse
        B, H, W, C = x.shape
        k = self.kernel_size
        x = F.pad(x, (0, 0, 0, -W % k, 0, -H % k))
        windows = self.attn(window_partition(x, (k, k)).reshape(-1, k * k, C))
        return window_reverse(windows.view(-1, k, k, C), (k, k), x.shape[1], x.shape[2])[:, :H, :W]


def build_layer(layer: str, dim: int, kernel_size: int) -> nn.Module:
    from ..models import QnA
    heads = dim // HEAD_DIM
    if layer == 'qna':
        return QnA(dim, num_heads=heads, kernel_size=kernel_size, mode='conv')
    return (SlidingWindowAttention if layer == 'sliding' else SwinWindows)(dim, heads, kernel_size)


def _parse_map(text: str):
    try:
        h, w, c = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f"maps are HxWxC, e.g. 56x56x64; got {text!r}") from None
    return h, w, c


def measure(layer: str, shape: str, kernel_size: int, args, device: torch.device, dtype: torch.dtype) -> Dict:
    h, w, c = _parse_map(shape)
    record = dict(layer=layer, map=shape, kernel_size=kernel_size, heads=c // HEAD_DIM, batch_size=args.batch_size,
                  dtype=str(dtype).replace('torch.', ''), status='ok')
    torch.manual_seed(0)
    try:
        module = build_layer(layer, c, kernel_size).to(device)
        x = torch.randn(args.batch_size, h, w, c, device=device)
        autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
        module.eval()
        with torch.inference_mode(), autocast, peak_memory(device) as memory:
            times = median_seconds(lambda: module(x), device, args.warmup, args.repeats)
        record.update(infer_ms=1e3 * statistics.median(times), infer_peak_mb=memory['mb'])
        module.train()
        xg = x.clone().requires_grad_()

        def step():
            with autocast:
                loss = module(xg).float().square().mean()
            loss.backward()
            module.zero_grad(set_to_none=True)
            xg.grad = None

        with peak_memory(device) as memory:
            times = median_seconds(step, device, args.warmup, args.repeats)
        record.update(train_ms=1e3 * statistics.median(times), train_peak_mb=memory['mb'])
    except (RuntimeError, MemoryError) as error:
        record['status'] = 'OOM' if _is_oom(error) or isinstance(error, MemoryError) else \
            f'error: {str(error).splitlines()[0]}'
    return record


def ratios(results: List[Dict]) -> List[Dict]:
    """Per map and k: sliding-window attention's time and memory over QnA's (> 1: QnA better)."""
    index = {(r['layer'], r['map'], r['kernel_size']): r for r in results if r['status'] == 'ok'}
    rows = []
    for (layer, shape, k), qna in index.items():
        other = index.get(('sliding', shape, k))
        if layer != 'qna' or other is None:
            continue
        rows.append(dict(map=shape, kernel_size=k, **{
            f'{key}_ratio': other[key] / qna[key] if qna.get(key) else None
            for key in ('infer_ms', 'train_ms', 'infer_peak_mb', 'train_peak_mb')}))
    return rows


def markdown(results: List[Dict], meta: Dict) -> str:
    lines = [*heading(meta),
             '| map | k | layer | inference ms | train step ms | inference peak MiB | train peak MiB |',
             '|---|---|---|---|---|---|---|']
    for r in results:
        cells = [f"{r.get(key, 0):.1f}" if r['status'] == 'ok' else r['status']
                 for key in ('infer_ms', 'train_ms', 'infer_peak_mb', 'train_peak_mb')]
        lines.append(f"| {r['map']} | {r['kernel_size']} | {r['layer']} | " + ' | '.join(cells) + ' |')
    lines += ['', 'Sliding-window attention over QnA (> 1: QnA faster / smaller):', '',
              '| map | k | inference time | train time | inference memory | train memory |',
              '|---|---|---|---|---|---|']
    for row in ratios(results):
        cells = [f"{row[f'{key}_ratio']:.1f}x" if row[f'{key}_ratio'] else ''
                 for key in ('infer_ms', 'train_ms', 'infer_peak_mb', 'train_peak_mb')]
        lines.append(f"| {row['map']} | {row['kernel_size']} | " + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def plot(results: List[Dict], meta: Dict, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    maps = list(dict.fromkeys(r['map'] for r in results))
    panels = [('train_ms', 'training step (ms)'), ('infer_ms', 'inference (ms)'),
              ('train_peak_mb', 'training peak memory (MiB)'), ('infer_peak_mb', 'inference peak memory (MiB)')]
    fig, axes = plt.subplots(len(maps), len(panels), figsize=(4.2 * len(panels), 3.4 * len(maps)), squeeze=False)
    for row, shape in zip(axes, maps):
        for ax, (key, title) in zip(row, panels):
            for layer in LAYERS:
                points = sorted((r['kernel_size'], r[key]) for r in results
                                if r['map'] == shape and r['layer'] == layer and r['status'] == 'ok' and r.get(key))
                if points:
                    ax.plot(*zip(*points), marker='o', label=layer)
            ax.set_yscale('log')
            ax.set_xlabel('window side k')
            ax.set_title(f'{shape}: {title}', fontsize=9)
            ax.grid(True, which='both', alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{meta['device']}, {meta['dtype']}, batch {meta['batch_size']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(results: List[Dict], meta: Dict, output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / 'layers.json').write_text(json.dumps({'meta': meta, 'results': results, 'ratios': ratios(results)},
                                                   indent=1))
    columns = ['map', 'kernel_size', 'layer', 'heads', 'batch_size', 'dtype', 'status', 'infer_ms', 'train_ms',
               'infer_peak_mb', 'train_peak_mb']
    with open(output / 'layers.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, columns, extrasaction='ignore')
        writer.writeheader()
        writer.writerows(results)
    (output / 'layers.md').write_text(markdown(results, meta))
    plot(results, meta, output / 'layers.png')


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python -m vir_lightning benchmark layers', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--layers', nargs='+', default=list(LAYERS), choices=LAYERS,
                   help='layers to compare (default: all)')
    p.add_argument('--kernel-sizes', nargs='+', type=int, default=list(KERNELS),
                   help=f"odd window sides k (default: {' '.join(map(str, KERNELS))})")
    p.add_argument('--maps', nargs='+', default=list(MAPS),
                   help=f"map shapes HxWxC, heads C / 8 (default: {' '.join(MAPS)})")
    p.add_argument('--batch-size', type=int, default=1, help='maps per batch (default: 1)')
    p.add_argument('--device', default='auto', help="'auto' (cuda if available), 'cpu', 'cuda', ...")
    p.add_argument('--dtype', default='auto', choices=['auto', 'float32', 'bfloat16', 'float16'],
                   help='autocast dtype; auto: bfloat16 on GPU, float32 on CPU')
    p.add_argument('--warmup', type=int, default=1, help='untimed runs first (default: 1)')
    p.add_argument('--repeats', type=int, default=3, help='timed runs, the median reported (default: 3)')
    p.add_argument('--isolate', action=argparse.BooleanOptionalAction, default=None,
                   help='a fresh process per point (default on CPU, where it makes the memory figures exact)')
    p.add_argument('--output', default=None, help='output folder (default: benchmarks/results/layers-<device>-<date>)')
    return p


def main(argv: Optional[List[str]] = None) -> Path:
    from rich.progress import Progress

    from ..errors import UserError
    argv = list(sys.argv[3:] if argv is None else argv)
    args = parser().parse_args(argv)
    for shape in args.maps:
        try:
            _parse_map(shape)
        except argparse.ArgumentTypeError as error:
            raise UserError(f"--maps: {error}") from None
    if any(k < 1 or k % 2 == 0 for k in args.kernel_sizes):
        raise UserError(f"--kernel-sizes must be odd (centred windows), got {args.kernel_sizes}")
    device, dtype = device_and_dtype(args)
    meta = environment(device, dtype, args, argv)
    meta['command'] = meta['command'].replace('benchmark ', 'benchmark layers ', 1)
    output = Path(args.output) if args.output else Path('benchmarks/results') / \
        f"layers-{meta['device_type']}-{meta['date'][:10]}"
    points = [(layer, shape, k) for shape in args.maps for k in args.kernel_sizes for layer in args.layers]
    isolate = args.isolate if args.isolate is not None else device.type == 'cpu'
    results = []
    with Progress() as progress:
        task = progress.add_task('layers', total=len(points))
        for layer, shape, k in points:
            progress.update(task, description=f'{layer} k={k} {shape}')
            point = (layer, shape, k, args, device, dtype)
            record = (in_fresh_process(measure, *point) or dict(layer=layer, map=shape, kernel_size=k, status='OOM')) \
                if isolate else measure(*point)
            results.append(record)
            write_outputs(results, meta, output)  # partial results survive an interrupted run
            progress.advance(task)
    print(markdown(results, meta))
    print(f'wrote {output}/layers.{{json,csv,md,png}}')
    return output
