"""The benchmark command: every output written, OOM points recorded and skipped, ratios computed."""
import csv
import json

import pytest

from vir_lightning.tools import benchmark
from vir_lightning.cli import main

QUICK = ['--sizes', '32', '64', '--repeats', '1', '--warmup', '0', '--no-isolate']


def test_benchmark_writes_json_csv_table_and_plot(tmp_path, capsys):
    out = tmp_path / 'bench'
    main(['benchmark', *QUICK, '--modes', 'chunkwise', 'recurrent', '--recurrent-max-tokens', '4',
          '--output', str(out)])
    data = json.loads((out / 'results.json').read_text())
    meta = data['meta']
    assert {'device', 'dtype', 'batch_size', 'versions', 'command', 'date'} <= set(meta)
    assert meta['command'].startswith('python -m vir_lightning benchmark') and 'torch' in meta['versions']
    rows = data['results']
    # recurrent only where it has at most 4 tokens (32 px); ViT once per size
    assert [(r['backbone'][:3], r['retention_mode'], r['size']) for r in rows] == [
        ('vir', 'chunkwise', 32), ('vir', 'recurrent', 32), ('vit', None, 32), ('vir', 'chunkwise', 64),
        ('vit', None, 64)]
    assert all(r['status'] == 'ok' and r['infer_images_per_s'] > 0 and r['train_images_per_s'] > 0 for r in rows)
    assert all(len(r['infer_times']) == 1 for r in rows)
    vit = [r for r in rows if r['family'] == 'ViT']
    assert {r['sdpa_backend'] for r in vit} <= {'flash_attention', 'efficient_attention', 'math'}
    with open(out / 'results.csv') as f:
        assert len(list(csv.DictReader(f))) == 5
    table = (out / 'results.md').read_text()
    assert 'ViR / ViT inference' in table and '| 64 |' in table
    assert (out / 'results.png').stat().st_size > 10_000
    assert 'wrote' in capsys.readouterr().out


def test_out_of_memory_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    real = benchmark.build_model

    def build(name, size, head, mode, args):
        if size == 64 and name.startswith('vit'):
            raise RuntimeError('CUDA out of memory. Tried to allocate 20.00 GiB')
        return real(name, size, head, mode, args)

    monkeypatch.setattr(benchmark, 'build_model', build)
    out = benchmark.main([*QUICK, '--modes', 'chunkwise', '--no-train', '--output', str(tmp_path)])
    rows = json.loads((out / 'results.json').read_text())['results']
    assert [r['status'] for r in rows] == ['ok', 'ok', 'ok', 'OOM']
    assert 'train_images_per_s' not in rows[0]
    assert 'OOM' in (out / 'results.md').read_text()


@pytest.mark.parametrize('head', ['uper', 'faster_rcnn'])
def test_dense_heads_are_timed_too(tmp_path, head):
    out = benchmark.main(['--sizes', '64', '--repeats', '1', '--warmup', '0', '--no-isolate', '--modes',
                          'chunkwise', '--head', head, '--output', str(tmp_path)])
    rows = json.loads((out / 'results.json').read_text())['results']
    assert [r['status'] for r in rows] == ['ok', 'ok'] and all(r['head'] == head for r in rows)
    assert all(r['train_images_per_s'] > 0 for r in rows)


def test_bad_options_end_in_one_message(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(['benchmark', '--sizes', '100'])
    assert exit_.value.code == 2 and 'multiples of 16' in capsys.readouterr().err
