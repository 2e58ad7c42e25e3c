"""``python -m vir_lightning {fit,validate,test,predict} --config NAME.yaml``: LightningCLI with
packaged configs, linked class counts, TensorBoard and a Rich progress bar by default, and
one-line errors for user mistakes. ``python -m vir_lightning benchmark --help``: throughput and
memory of ViR against ViT by resolution; ``python -m vir_lightning study --help``: ViR against ViT
on the demo tasks; ``python -m vir_lightning export --help``: a checkpoint as safetensors or ONNX."""
import importlib.util
import re
import sys
from pathlib import Path
from typing import List, Optional

import yaml
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info

from .checkpoints import (
    check_fits, check_task, describe_run, is_local_file_path, latest_last_checkpoint, logger_args, read_checkpoint,
)
from .errors import UserError, find_user_error, user_message, worker_death

CONFIG_FLAGS = ('--config', '-c')
INFERENCE_OPTIONS = ('streaming_rows',)  # model options that say how to run a checkpoint, not what it trained


def config_dir() -> Path:
    """The packaged configs: ``vir_lightning.configs`` (the repository's configs/ in an editable install)."""
    return Path(importlib.util.find_spec('vir_lightning.configs').submodule_search_locations[0])


def resolve_config(name: str) -> str:
    """A path that exists is used as is; otherwise a bare name is looked up in the packaged configs."""
    for candidate in (Path(name), config_dir() / name, config_dir() / f'{name}.yaml'):
        if candidate.is_file():
            check_yaml(candidate)
            return str(candidate)
    available = sorted(str(p.relative_to(config_dir())) for p in config_dir().rglob('*.yaml'))
    raise UserError(f"config '{name}' not found in the working directory nor among the packaged configs: "
                    f"{', '.join(available)}")


def check_yaml(path: Path) -> None:
    """jsonargparse reports a YAML syntax error without the file's name; this names the file and line."""
    try:
        yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, 'problem_mark', None)
        where = f' at line {mark.line + 1}, column {mark.column + 1}' if mark else ''
        problem = getattr(error, 'problem', None) or str(error).splitlines()[0]
        raise UserError(f"--config '{path}' is not valid YAML ({problem}{where}): fix the file") from None


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

    def _parse_ckpt_path(self) -> None:
        """Before Lightning reads the checkpoint's hyperparameters into the model config: ``last`` resolved,
        the file checked, and its task compared with the config's."""
        subcommand = self.config.get('subcommand')
        config = self.config[subcommand] if subcommand else {}
        if config.get('ckpt_path') == 'last':
            self._resolve_last(subcommand, config)
        if is_local_file_path(config.get('ckpt_path')):
            self._checkpoint = read_checkpoint(config.ckpt_path)  # memory-mapped: cheap to keep
            configured = getattr(config.get('model'), 'class_path', None)
            if configured:
                check_task(self._checkpoint, configured.rsplit('.', 1)[-1], config.ckpt_path)
        init_args = getattr(config.get('model'), 'init_args', None) or {}
        given = {k: init_args[k] for k in INFERENCE_OPTIONS if init_args.get(k) is not None}
        super()._parse_ckpt_path()  # the checkpoint's hyperparameters replace the model's options...
        for key, value in given.items():  # ...but how to run inference is the command line's to say
            self.config[subcommand].model.init_args[key] = value

    def _resolve_last(self, subcommand: str, config) -> None:
        found = latest_last_checkpoint(config.trainer)
        if found is None:
            if subcommand != 'fit':
                raise UserError(f"--ckpt_path last: no last.ckpt under {describe_run(config.trainer)}; "
                                f"pass the path of a checkpoint")
            rank_zero_info(f"--ckpt_path last: no earlier run under {describe_run(config.trainer)}, "
                           f"training from scratch")
            config.ckpt_path = None
            return
        config.ckpt_path = str(found)
        logger = config.trainer.get('logger')
        if subcommand == 'fit' and logger_args(logger) is not None and found.parent.name == 'checkpoints':
            version = found.parent.parent.name  # log on in the same folder: one continuous TensorBoard curve
            match = re.fullmatch(r'version_(\d+)', version)
            logger.init_args.version = int(match.group(1)) if match else version
        rank_zero_info(f"--ckpt_path last: resuming {found}")

    def _check_before_run(self) -> None:
        """Mistakes that would otherwise surface deep inside a run, or after work was done and written."""
        from .tasks.base import check_data_kind
        check_data_kind(self.model, self.datamodule)
        config = self.config_init[self.subcommand]
        if is_local_file_path(config.get('ckpt_path')):
            check_fits(getattr(self, '_checkpoint', None) or read_checkpoint(config.ckpt_path), self.model,
                       config.ckpt_path)
        if config.get('ckpt_path') and config.get('weights_only') is None:
            config.weights_only = True  # a checkpoint never runs code while it is read (Lightning: remote ones do)
        if not self.trainer.loggers:  # e.g. --trainer.logger false: the lr monitor has nowhere to log
            monitors = [c for c in self.trainer.callbacks if isinstance(c, LearningRateMonitor)]
            for monitor in monitors:
                self.trainer.callbacks.remove(monitor)
            if monitors:
                rank_zero_info("no logger: LearningRateMonitor dropped")

    before_fit = before_validate = before_test = before_predict = _check_before_run


class SaveConfigBeside(SaveConfigCallback):
    """Saves the run's ``config.yaml``; a run resumed in the same folder, or a second validate there,
    writes ``config-1.yaml``, ... beside it instead of stopping (Lightning's default) or overwriting."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every rank calls it, once
        if not self.already_saved and log_dir is not None:
            name = None
            if trainer.is_global_zero:
                folder, original = Path(log_dir), Path(self.config_filename)
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
        if user_error is not None:
            print(f'error: {user_message(user_error)}', file=sys.stderr)
            sys.exit(2)
        died = worker_death(error)
        if died is None:
            raise
        print(f'error: {died}', file=sys.stderr)
        sys.exit(1)
