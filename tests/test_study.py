"""The ViR-vs-ViT study runner: its fit commands parse and run, and it reports what it measured."""
import json

from vir_lightning.tools import study


def test_study_runs_both_backbones_and_reports_quality_speed_and_memory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(study.TASKS, 'seg', {**study.TASKS['seg'], 'budgets': {64: (10, 2)}})
    monkeypatch.setattr(study, 'WIDTH', dict(embed_dim=32, num_heads=2, depth=6, init_values=0.1))
    study.main(['--tasks', 'seg', '--output', str(tmp_path / 'out')])
    results = json.loads((tmp_path / 'out' / 'study.json').read_text())['results']
    assert [(r['backbone'], r['size'], r['status']) for r in results] == [('ViR', 64, 'ok'), ('ViT', 64, 'ok')]
    for r in results:
        assert 0 <= r['val/mIoU'] <= 1 and r['train_images_per_s'] > 0 and r['peak_rss_mb'] > 100
    assert '| seg | 64 | 10 x 2 | ViT | mIoU' in (tmp_path / 'out' / 'study.md').read_text()
