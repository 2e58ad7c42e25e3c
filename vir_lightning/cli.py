"""``python -m vir_lightning {fit,validate,test,predict} --config NAME.yaml``: LightningCLI with
packaged configs, linked class counts, TensorBoard and a Rich progress bar by default, and
one-line errors for user mistakes. ``python -m vir_lightning benchmark --help``: throughput and
memory of ViR against ViT by resolution; ``python -m vir_lightning study --help``: ViR against ViT
on the demo tasks."""
import importlib.util
import re
import sys
from pathlib import Path
from typing import List, Optional

from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info

from .checkpoints import check_fits, read_checkpoint
from .errors import UserError, find_user_error, user_message

CONFIG_FLAGS = ('--config', '-c')


def config_dir() -> Path:
    """The packaged configs: ``vir_lightning.configs`` (the repository's configs/ in an editable install)."""
    return Path(importlib.util.find_spec('vir_lightning.configs').submodule_search_locations[0])


def resolve_config(name: str) -> str:
    """A path that exists is used as is; otherwise a bare name is looked up in the packaged configs."""
    if Path(name).exists():
        return name
    for candidate in (config_dir() / name, config_dir() / f'{name}.yaml'):
        if candidate.is_file():
            return str(candidate)
    available = sorted(str(p.relative_to(config_dir())) for p in config_dir().rglob('*.yaml'))
    raise UserError(f"config '{name}' not found in the working directory nor among the packaged configs: "
                    f"{', '.join(available)}")


def resolve_config_args(argv: List[str]) -> List[str]:
    out = list(argv)
    for i, arg in enumerate(out):
        if arg in CONFIG_FLAGS and i + 1 < len(out):
            out[i + 1] = resolve_config(out[i + 1])
        elif arg.startswith('--config='):
            out[i] = '--config=' + resolve_config(arg.split('=', 1)[1])
    return out


# What a task takes from its DataModule, linked once both are instantiated. A task without the
# argument (a classifier has no palette) skips the link; a DataModule without the value gives None.
DATA_LINKS = ('num_classes', 'class_names', 'palette', 'ignore_index', 'category_ids')


class VirLightningCLI(LightningCLI):
    """Links data-derived values (``DATA_LINKS``) into the task; TensorBoard and Rich by default;
    ``--ckpt_path last`` resumes the run's latest ``last.ckpt`` in its own logger folder; a checkpoint
    is checked (readable, this task, these weights) before any work, and read with ``weights_only``."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({f'trainer.{key}': value for key, value in TRAINER_DEFAULTS.items()})
        for name in DATA_LINKS:
            parser.link_arguments(f'data.{name}', f'model.init_args.{name}', apply_on='instantiate')

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        if config.get('ckpt_path') != 'last':
            return
        found = latest_last_checkpoint(config.trainer)
        if found is None:
            if self.subcommand != 'fit':
                raise UserError(f"--ckpt_path last: no last.ckpt under {describe_run(config.trainer)}; "
                                f"pass the path of a checkpoint")
            rank_zero_info(f"--ckpt_path last: no earlier run under {describe_run(config.trainer)}, "
                           f"training from scratch")
            config.ckpt_path = None
            return
        config.ckpt_path = str(found)
        logger = config.trainer.get('logger')
        if self.subcommand == 'fit' and _logger_args(logger) is not None and found.parent.name == 'checkpoints':
            version = found.parent.parent.name  # log on in the same folder: one continuous TensorBoard curve
            match = re.fullmatch(r'version_(\d+)', version)
            logger.init_args.version = int(match.group(1)) if match else version
        rank_zero_info(f"--ckpt_path last: resuming {found}")

    def _check_checkpoint(self) -> None:
        config = self.config_init[self.subcommand]
        if config.get('ckpt_path'):
            check_fits(read_checkpoint(config.ckpt_path), self.model, config.ckpt_path)
            if config.get('weights_only') is None:
                config.weights_only = True  # a checkpoint never runs code while it is read

    before_fit = before_validate = before_test = before_predict = _check_checkpoint


def _logger_args(logger):
    """A file logger's init_args (save_dir, name) from the trainer config, or None."""
    init_args = getattr(logger, 'init_args', None)
    return init_args if init_args is not None and init_args.get('save_dir') is not None else None


def _run_folders(trainer_config) -> List[Path]:
    """Where a run's checkpoints can be: the logger's ``save_dir/name/*/checkpoints``, the callbacks'
    ``dirpath``, or ``default_root_dir/checkpoints`` when there is no logger."""
    folders = []
    args = _logger_args(trainer_config.get('logger'))
    if args is not None:
        folders += (Path(args.save_dir) / (args.get('name') or '')).glob('*/checkpoints')
    elif not trainer_config.get('logger'):
        folders.append(Path(trainer_config.get('default_root_dir') or '.') / 'checkpoints')
    for callback in trainer_config.get('callbacks') or []:
        dirpath = getattr(getattr(callback, 'init_args', None), 'dirpath', None)
        if dirpath:
            folders.append(Path(dirpath))
    return folders


def latest_last_checkpoint(trainer_config) -> Optional[Path]:
    """The newest ``last.ckpt`` of the run that this trainer config writes (same root and name)."""
    found = [folder / 'last.ckpt' for folder in _run_folders(trainer_config) if (folder / 'last.ckpt').is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def describe_run(trainer_config) -> str:
    args = _logger_args(trainer_config.get('logger'))
    if args is not None:
        return f"'{Path(args.save_dir) / (args.get('name') or '')}'"
    return f"'{Path(trainer_config.get('default_root_dir') or '.') / 'checkpoints'}'"


class SaveConfigBeside(SaveConfigCallback):
    """Saves the run's ``config.yaml``; a run resumed in the same folder, or a second validate there,
    writes ``config-1.yaml``, ... beside it instead of stopping (Lightning's default) or overwriting."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if not self.already_saved and trainer.log_dir is not None:
            name = None
            if trainer.is_global_zero:
                folder, original = Path(trainer.log_dir), Path(self.config_filename)
                name, n = self.config_filename, 0
                while (folder / name).exists():
                    n += 1
                    name = f'{original.stem}-{n}{original.suffix}'
            self.config_filename = trainer.strategy.broadcast(name)
        super().setup(trainer, pl_module, stage)


TRAINER_DEFAULTS = {
    'logger': {
        'class_path': 'lightning.pytorch.loggers.TensorBoardLogger',
        'init_args': {'save_dir': 'runs', 'name': 'vir_lightning'},
    },
    'callbacks': [
        {'class_path': 'lightning.pytorch.callbacks.RichProgressBar'},
        {'class_path': 'lightning.pytorch.callbacks.LearningRateMonitor', 'init_args': {'logging_interval': 'step'}},
    ],
}


def cli_main(args: Optional[List[str]] = None) -> VirLightningCLI:
    from .datamodules import VisionDataModule
    from .tasks import VisionTask

    return VirLightningCLI(
        VisionTask,
        VisionDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        parser_kwargs={'description': __doc__},
        save_config_callback=SaveConfigBeside,
    )


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point; ``argv`` defaults to the command line (rewritten in place so DDP workers see the same)."""
    try:
        args = sys.argv[1:] if argv is None else argv
        if args[:1] == ['benchmark']:
            from .tools.benchmark import main as benchmark_main
            benchmark_main(args[1:])
        elif args[:1] == ['study']:
            from .tools.study import main as study_main
            study_main(args[1:])
        elif args[:1] == ['export']:
            from .tools.export import main as export_main
            export_main(args[1:])
        elif argv is None:
            sys.argv[1:] = resolve_config_args(sys.argv[1:])
            cli_main()
        else:
            cli_main(resolve_config_args(argv))
    except Exception as error:
        user_error = find_user_error(error)
        if user_error is None:
            raise
        print(f'error: {user_message(user_error)}', file=sys.stderr)
        sys.exit(2)
