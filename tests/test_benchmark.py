"""The benchmark command: every output written, OOM points recorded and skipped, ratios computed."""
import csv
import json
import subprocess
import sys

import pytest
import torch

from vir_lightning.tools import benchmark
from vir_lightning.cli import main

QUICK = ['--sizes', '32', '64', '--repeats', '1', '--warmup', '0', '--min-sample-seconds', '0', '--no-isolate']


def test_benchmark_writes_json_csv_table_and_plot(tmp_path, capsys):
    out = tmp_path / 'bench'
    main(['benchmark', *QUICK, '--modes', 'chunkwise', 'recurrent', '--recurrent-max-tokens', '4',
          '--output', str(out)])
    data = json.loads((out / 'results.json').read_text())
    meta = data['meta']
    assert {'device', 'dtype', 'batch_size', 'versions', 'command', 'date', 'environment'} <= set(meta)
    assert meta['command'].startswith('python -m vir_lightning benchmark') and 'torch' in meta['versions']
    rows = data['results']
    # recurrent only where it has at most 4 tokens (32 px); ViT and QnA-ViT once per size
    assert [(r['backbone'][:3], r['retention_mode'], r['size']) for r in rows] == [
        ('vir', 'chunkwise', 32), ('vir', 'recurrent', 32), ('vit', None, 32), ('qna', None, 32),
        ('vir', 'chunkwise', 64), ('vit', None, 64), ('qna', None, 64)]
    assert [r['family'] for r in rows[:4]] == ['ViR', 'ViR', 'ViT', 'QnA']
    assert all(r['status'] == 'ok' and r['infer_images_per_s'] > 0 and r['train_images_per_s'] > 0 for r in rows)
    assert all(len(r['infer_times']) == 1 and r['infer_tensor_peak_mb'] > 0 and r['infer_warm_peak_mb'] is not None
               for r in rows)
    vit = [r for r in rows if r['family'] == 'ViT']
    assert {r['sdpa_backend'] for r in vit} <= {'flash_attention', 'efficient_attention', 'math'}
    with open(out / 'results.csv') as f:
        assert len(list(csv.DictReader(f))) == 7
    table = (out / 'results.md').read_text()
    assert '/ ViT inference' in table and '/ ViT warm memory' in table and '/ ViT tensor memory' in table
    assert '| 64 | vir_tiny_patch16_224 (' in table and '| 64 | qna_vit_tiny |' in table
    assert (out / 'results.png').stat().st_size > 10_000
    assert 'wrote' in capsys.readouterr().out


def test_out_of_memory_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    real = benchmark.build_model

    def build(name, size, head, mode, args, geometry='1d'):
        if size == 64 and name.startswith('vit'):
            raise RuntimeError('CUDA out of memory. Tried to allocate 20.00 GiB')
        return real(name, size, head, mode, args, geometry)

    monkeypatch.setattr(benchmark, 'build_model', build)
    out = benchmark.main([*QUICK, '--modes', 'chunkwise', '--no-train', '--output', str(tmp_path)])
    rows = json.loads((out / 'results.json').read_text())['results']
    assert [r['status'] for r in rows] == ['ok', 'ok', 'ok', 'ok', 'OOM', 'ok']
    assert 'train_images_per_s' not in rows[0]
    assert 'OOM' in (out / 'results.md').read_text()


def test_both_geometries_are_measured_and_each_has_its_ratio_row(tmp_path):
    out = benchmark.main([*QUICK, '--backbones', 'vir_tiny_patch16_224', 'vit_tiny_patch16_224', '--modes', 'auto',
                          'recurrent', '--geometries', '1d', '2d', '--no-train', '--output', str(tmp_path)])
    rows = json.loads((out / 'results.json').read_text())['results']
    # recurrent is 1D only
    assert [(r['retention_mode'], r['geometry']) for r in rows if r['size'] == 32] == [
        ('auto', '1d'), ('recurrent', '1d'), ('auto', '2d'), (None, None)]
    assert all(r['status'] == 'ok' for r in rows)
    table = (out / 'results.md').read_text()
    assert '| 64 | vir_tiny_patch16_224 (auto) |' in table and '| 64 | vir_tiny_patch16_224 (auto, 2d) |' in table
    assert '2D / 1D inference time' in table


@pytest.mark.parametrize('head', ['uper', 'faster_rcnn'])
def test_dense_heads_are_timed_too(tmp_path, head):
    out = benchmark.main(['--sizes', '64', '--repeats', '1', '--warmup', '0', '--no-isolate', '--modes',
                          'chunkwise', '--head', head, '--output', str(tmp_path)])
    rows = json.loads((out / 'results.json').read_text())['results']
    assert [r['status'] for r in rows] == ['ok', 'ok', 'ok'] and all(r['head'] == head for r in rows)
    assert all(r['train_images_per_s'] > 0 for r in rows)


def test_bad_options_end_in_one_message(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(['benchmark', '--sizes', '100'])
    assert exit_.value.code == 2 and 'multiples of 16' in capsys.readouterr().err


def test_layer_benchmark_writes_its_table_ratios_and_plot(tmp_path, capsys):
    out = tmp_path / 'layers'
    main(['benchmark', 'layers', '--maps', '8x10x16', '--kernel-sizes', '3', '5', '--repeats', '1', '--warmup', '0',
          '--no-isolate', '--output', str(out)])
    data = json.loads((out / 'layers.json').read_text())
    assert data['meta']['command'].startswith('python -m vir_lightning benchmark layers')
    rows = data['results']
    assert [(r['layer'], r['kernel_size']) for r in rows] == [
        ('qna', 3), ('sliding', 3), ('swin', 3), ('qna', 5), ('sliding', 5), ('swin', 5)]
    assert all(r['status'] == 'ok' and r['infer_ms'] > 0 and r['train_ms'] > 0 for r in rows)
    assert [(r['map'], r['kernel_size']) for r in data['ratios']] == [('8x10x16', 3), ('8x10x16', 5)]
    assert 'Sliding-window attention over QnA' in (out / 'layers.md').read_text()
    assert (out / 'layers.png').stat().st_size > 10_000


def test_sliding_window_baseline_is_attention_over_each_neighbourhood():
    """With a window that reaches the whole map from every pixel (and no bias) it is global attention."""
    import torch
    from vir_lightning.tools.layer_benchmark import SlidingWindowAttention
    torch.manual_seed(0)
    layer = SlidingWindowAttention(16, 2, kernel_size=9).double()
    x = torch.randn(1, 4, 5, 16, dtype=torch.float64)
    q, k, v = layer.qkv(x.reshape(1, 20, 16)).reshape(1, 20, 3, 2, 8).permute(2, 0, 3, 1, 4)
    mixed = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    expected = layer.proj(mixed.transpose(1, 2).reshape(1, 4, 5, 16))
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)


def test_layer_benchmark_bad_options_end_in_one_message(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(['benchmark', 'layers', '--kernel-sizes', '4'])
    assert exit_.value.code == 2 and '--kernel-sizes must be odd' in capsys.readouterr().err


def test_interleaved_rounds_rotate_the_order_and_ratios_pair_rounds(monkeypatch):
    calls, clock = [], iter(range(1000))
    monkeypatch.setattr(benchmark.time, 'perf_counter', lambda: float(next(clock)))
    steps = [lambda i=i: calls.append(i) for i in range(3)]
    times = benchmark.interleaved_seconds(steps, torch.device('cpu'), warmup=2, repeats=3)
    assert calls == [0, 0, 1, 1, 2, 2] + [0, 1, 2] + [1, 2, 0] + [2, 0, 1]  # warm-up, then rotating rounds
    assert times == [[1.0] * 3] * 3
    ours = {'timing': 'interleaved', 'infer_times': [1.0, 2.0, 4.0]}
    base = {'timing': 'interleaved', 'infer_times': [3.0, 4.0, 4.0]}  # round ratios 3, 2, 1
    assert benchmark.paired_ratio(ours, base, 'infer') == 2.0
    assert benchmark.paired_ratio({**ours, 'timing': None}, base, 'infer') == 2.0  # medians 4 / 2
    assert benchmark.paired_ratio(ours, {**base, 'infer_times': [9.0, 1.0, 1.0]}, 'infer') == 0.5  # 9, 1/2, 1/4
    assert benchmark.paired_ratio(ours, base, 'train') is None


def test_a_short_pass_is_timed_as_many_passes_as_last_the_minimum_sample(monkeypatch):
    calls, clock = [], iter(range(1000))
    monkeypatch.setattr(benchmark.time, 'perf_counter', lambda: float(next(clock)))  # each reading 1 s later
    steps = [lambda i=i: calls.append(i) for i in range(2)]
    times = benchmark.interleaved_seconds(steps, torch.device('cpu'), warmup=1, repeats=2, min_seconds=3.0)
    # warm-up, one calibration pass each (1 s: 3 passes a sample), then 3 passes per sample in rotating rounds
    assert calls == [0, 1] + [0, 1] + [0] * 3 + [1] * 3 + [1] * 3 + [0] * 3
    assert times == [[1 / 3] * 2] * 2  # per pass
    calls.clear()
    assert benchmark.median_seconds(steps[0], torch.device('cpu'), warmup=0, repeats=2) == [1.0, 1.0]
    assert calls == [0, 0]  # without a minimum: one pass a sample, no calibration pass


def test_tensor_peak_counts_what_is_live_at_once_and_nothing_that_existed():
    x = torch.ones(256, 1024)  # 1 MiB, made before: not counted

    def step():
        a = x * 2
        b = a + 1  # a and b live: 2 MiB
        del a
        b.mul_(3)  # in place: nothing new
        c = b.t().contiguous()  # b and c: 2 MiB
        return c[:10], x.view(-1)  # views: nothing new

    assert benchmark.tensor_peak_mb(step) == 2.0


def test_the_package_and_the_benchmark_need_none_of_the_dense_task_extras(tmp_path):
    """The GPU image (benchmarks/gpu/run.sh) has no mmseg, mmcv, albumentations, jsonargparse or pycocotools. (Not
    blocked here: jsonargparse, which Lightning imports when its metadata says it is installed, and skips otherwise,
    as a venv without it showed.)"""
    blocked = ['mmseg', 'mmcv', 'mmengine', 'albumentations', 'pycocotools']
    script = (f"import sys\nsys.modules.update(dict.fromkeys({blocked!r}))  # importing any of them fails\n"
              "import vir_lightning\nfrom vir_lightning.cli import main\n"
              f"main(['benchmark', '--sizes', '32', '--repeats', '1', '--warmup', '0', '--no-isolate', '--modes', "
              f"'auto', '--no-train', '--backbones', 'vir_tiny_patch16_224', '--output', {str(tmp_path)!r}])\n"
              f"assert not any(sys.modules.get(name) for name in {blocked!r})\n")
    done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / 'results.json').read_text())['results'][0]['status'] == 'ok'


def test_streaming_benchmark_measures_both_paths_and_they_agree(tmp_path):
    from vir_lightning.tools import streaming_benchmark
    out = benchmark.main(['streaming', '--sizes', '64', '--width', '96', '--rows', '2', '--output', str(tmp_path)])
    data = json.loads((out / 'results.json').read_text())
    rows = data['results']
    assert [(r['height'], r['path'], r['status']) for r in rows] == [
        (64, 'streamed (2 rows a band)', 'ok'), (64, 'whole', 'ok')]
    assert rows[0]['tokens'] == 4 * 6 and all(r['seconds'] > 0 and r['peak_mb'] >= 0 for r in rows)
    assert rows[0]['max_logit_difference'] < 1e-4  # the same logits either way
    assert data['meta']['command'].startswith('python -m vir_lightning benchmark streaming')
    assert (out / 'results.png').stat().st_size > 10_000 and '| 64x96 |' in (out / 'results.md').read_text()
    band = streaming_benchmark.synthetic_band(5, 3, 96)  # any band is the same pixels as the whole image's rows
    assert torch.equal(band, streaming_benchmark.synthetic_band(0, 10, 96)[..., 5:8, :])
