"""``python -m vir_lightning benchmark streaming``: causal ViR on images of growing size, streamed in bands of patch
rows (``vir_lightning.models.streaming``) and whole, with time and peak memory.

Each point runs in a fresh process. The image is synthetic and made band by band (a smooth pattern plus noise,
the same pixels whichever way it is read): streamed, no more than one band of it ever exists, as when reading a
large file lazily; whole, the image tensor is part of what that path needs. Memory is the peak growth of the
process's resident memory over what the model already held, sampled every millisecond. Where both paths ran, the
largest difference between their logits is recorded. The whole-image path is skipped above ``--whole-max-side``
(the machine's memory is not for testing the out-of-memory killer); a point that dies anyway is recorded as OOM.
Results: JSON (every figure, device, versions, command), markdown and a plot of time and memory against size.
"""
import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from .benchmark import environment, heading, in_fresh_process, peak_memory


NOISE = torch.randn(3, 97, 89, generator=torch.Generator().manual_seed(0))  # tiled: cheap at any size


def synthetic_band(start: int, height: int, width: int) -> torch.Tensor:
    """Rows ``start`` .. ``start + height`` of a deterministic image as large as needed, [1, 3, height, width]:
    stripes plus a tiled noise, the same pixels however the image is cut into bands."""
    y = torch.arange(start, start + height)[:, None]
    x = torch.arange(width)[None]
    pattern = torch.sin(x / 37.0 + y / 53.0) + torch.cos((x - y) / 91.0)
    return (0.5 * pattern + NOISE[:, y % 97, x % 89])[None]


def build(name: str):
    import timm
    import vir_lightning  # noqa: F401  (registers ViR)
    torch.manual_seed(0)
    return timm.create_model(name, direction='causal', retention_mode='auto').eval()


def measure(name: str, side: int, width: int, rows: int, whole: bool) -> Dict:
    """One image size, one way (streamed in bands of ``rows`` patch rows, or whole)."""
    from ..models.streaming import RetentionStream
    model = build(name)
    patch = model.patch_size[0]
    record = dict(backbone=name, height=side, width=width, tokens=(side // patch) * (width // patch),
                  path='whole' if whole else f'streamed ({rows} rows a band)', status='ok')
    start = time.perf_counter()
    with torch.inference_mode(), peak_memory(torch.device('cpu')) as memory:
        if whole:
            logits = model(synthetic_band(0, side, width))
        else:
            stream = RetentionStream(model, (side, width))
            for top in range(0, side, rows * patch):
                stream.push(synthetic_band(top, min(rows * patch, side - top), width))
            logits = stream.finish()
    record.update(seconds=time.perf_counter() - start, peak_mb=memory['mb'], logits=logits[0].tolist())
    return record


def write(results: List[Dict], meta: Dict, output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / 'results.json').write_text(json.dumps({'meta': meta, 'results': results}, indent=1))
    lines = [*heading(meta), '| image | tokens | path | seconds | peak MiB | max logit difference |',
             '|---|---|---|---|---|---|']
    for r in results:
        figures = f"{r['seconds']:.1f} | {r['peak_mb']:.0f}" if r['status'] == 'ok' else f"{r['status']} |"
        diff = r.get('max_logit_difference')
        lines.append(f"| {r['height']}x{r['width']} | {r['tokens']} | {r['path']} | {figures} | "
                     f"{'' if diff is None else f'{diff:.1e}'} |")
    (output / 'results.md').write_text('\n'.join(lines) + '\n')
    plot(results, meta, output / 'results.png')


def plot(results: List[Dict], meta: Dict, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in ((axes[0], 'seconds', 'time per image (s)'), (axes[1], 'peak_mb', 'peak memory (MiB)')):
        for name in dict.fromkeys(r['path'] for r in results):
            points = [(r['tokens'], r[key]) for r in results if r['path'] == name and r['status'] == 'ok']
            if points:
                ax.plot(*zip(*points), marker='o', label=name, linestyle='--' if name == 'whole' else '-')
        ax.set_xscale('log', base=2)
        ax.set_yscale('log')
        ax.set_xlabel('patch tokens in the image')
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(f"{results[0]['backbone']} (causal), {meta['device']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> Path:
    from ..errors import UserError
    argv = list(sys.argv[3:] if argv is None else argv)
    p = argparse.ArgumentParser(prog='python -m vir_lightning benchmark streaming', description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--backbone', default='vir_tiny_patch16_224', help='a ViR model name (run causal, 1D)')
    p.add_argument('--sizes', nargs='+', type=int, default=[1024, 2048, 4096, 8192, 16384, 32768],
                   help='image heights in pixels')
    p.add_argument('--width', type=int, default=None, help='image width in pixels (default: square images)')
    p.add_argument('--rows', type=int, default=4, help='patch rows per streamed band')
    p.add_argument('--whole-max-side', type=int, default=8192,
                   help='run the whole-image path only up to this height (it needs the image and all its tokens)')
    p.add_argument('--output', default=f'benchmarks/results/streaming-cpu-{datetime.date.today()}')
    args = p.parse_args(argv)
    if args.rows < 1 or any(s < 16 or s % 16 for s in args.sizes) or (args.width or 16) % 16:
        raise UserError('--rows must be >= 1, --sizes and --width multiples of 16')
    meta = environment(torch.device('cpu'), torch.float32, argparse.Namespace(batch_size=1, **vars(args)), argv)
    meta['command'] = 'python -m vir_lightning benchmark streaming ' + ' '.join(argv)
    output, results = Path(args.output), []
    for side in args.sizes:
        width = args.width or side
        paths = [False] + ([True] if side <= args.whole_max_side else [])
        at_size = []
        for whole in paths:
            print(f"{side}x{width} {'whole' if whole else 'streamed'} ...", flush=True)
            record = in_fresh_process(measure, args.backbone, side, width, args.rows, whole) or dict(
                backbone=args.backbone, height=side, width=width, tokens=(side // 16) * (width // 16),
                path='whole' if whole else f'streamed ({args.rows} rows a band)', status='OOM (process killed)')
            at_size.append(record)
            print(f"  {record.get('seconds', 0):.1f} s, {record.get('peak_mb', 0):.0f} MiB, {record['status']}",
                  flush=True)
        if len(at_size) == 2 and all(r['status'] == 'ok' for r in at_size):
            diff = max(abs(a - b) for a, b in zip(at_size[0]['logits'], at_size[1]['logits']))
            for r in at_size:
                r['max_logit_difference'] = diff
        results += at_size
        write(results, meta, output)  # partial results survive an interrupted run
    print((output / 'results.md').read_text())
    return output

