"""AdamW with (optional) layer-wise learning-rate decay and a warm-up + cosine/poly/step schedule.

Built from timm's parameter-group and scheduler helpers: layer decay follows the backbone's
``group_matcher``, no weight decay on biases, norms and ``no_weight_decay()`` parameters.
Schedules are stepped per optimizer step, so warm-up and decay are expressed in steps.
"""
from typing import Iterable, List, Literal, Optional, Sequence

import torch.nn as nn
from timm.optim import create_optimizer_v2, param_groups_layer_decay, param_groups_weight_decay
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler, PolyLRScheduler

Schedule = Literal['cosine', 'poly', 'step']


def param_groups(
        backbone: nn.Module, others: Iterable[nn.Module], weight_decay: float, layer_decay: Optional[float],
) -> List[dict]:
    """Backbone groups (layer-decayed when ``layer_decay`` is set) plus full-lr groups for heads."""
    if not hasattr(backbone, 'group_matcher') and hasattr(getattr(backbone, 'model', None), 'group_matcher'):
        backbone = backbone.model  # timm's features_only wrapper: the layer structure is the inner model's
    no_decay = backbone.no_weight_decay() if hasattr(backbone, 'no_weight_decay') else ()
    if layer_decay is not None and layer_decay < 1.0:
        groups = param_groups_layer_decay(
            backbone, weight_decay, no_weight_decay_list=no_decay, layer_decay=layer_decay)
    else:
        groups = param_groups_weight_decay(backbone, weight_decay, no_weight_decay_list=no_decay)
    in_backbone = {id(p) for p in backbone.parameters()}
    for module in others:  # a head may hold the backbone too (torchvision detectors do): counted once
        for group in param_groups_weight_decay(module, weight_decay):
            groups.append({**group, 'params': [p for p in group['params'] if id(p) not in in_backbone]})
    return [g for g in groups if len(list(g['params']))]


def build_optimizer(groups: List[dict], lr: float, weight_decay: float, opt: str = 'adamw'):
    return create_optimizer_v2(groups, opt=opt, lr=lr, weight_decay=weight_decay)


def build_scheduler(
        optimizer, schedule: Schedule, total_steps: int, warmup_steps: int, min_lr: float, warmup_lr: float = 1e-6,
        power: float = 1.0, milestones: Sequence[float] = (0.889, 0.963), gamma: float = 0.1,
):
    """A timm scheduler to step with ``step_update(global_step)``; warm-up comes before the decay.

    'step' multiplies the lr by ``gamma`` at each of ``milestones`` (fractions of all steps; the
    default is the ViTDet / Detectron2 schedule, decays at 88.9% and 96.3%).
    """
    warmup_steps = max(0, min(int(warmup_steps), total_steps - 1))
    if schedule == 'step':
        if not all(0 < m < 1 for m in milestones):
            raise ValueError(f"step milestones are fractions of the schedule in (0, 1), got {list(milestones)}")
        # timm decays once t + 1 reaches a milestone, t counted after the warm-up
        decay_t = [max(1, round(m * total_steps) - warmup_steps + 1) for m in sorted(milestones)]
        return MultiStepLRScheduler(optimizer, decay_t=decay_t, decay_rate=gamma, warmup_t=warmup_steps,
                                    warmup_lr_init=warmup_lr, warmup_prefix=True, t_in_epochs=False)
    kwargs = dict(
        t_initial=max(1, total_steps - warmup_steps), lr_min=min_lr, warmup_t=warmup_steps,
        warmup_lr_init=warmup_lr, warmup_prefix=True, t_in_epochs=False,
    )
    if schedule == 'cosine':
        return CosineLRScheduler(optimizer, **kwargs)
    return PolyLRScheduler(optimizer, power=power, **kwargs)
