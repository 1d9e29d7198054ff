"""Which jobs of a sweep can train together as one stacked model, and why one cannot.

Jobs stack when their resolved configs differ only in `STACKABLE_KEYS`: the seed, the fold, the
compression targets, the distillation weights and the per-model learning rate and weight decay.
Anything else (the architecture, the recipe's length, the method's pipeline, ...) makes another
stack. Some jobs have no stacked form at all (`alone_because`): they run on their own, as the
default launcher runs them.

Kept free of torch and Lightning imports: the launcher plans before it trains.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from compresslab.configs import flatten

STACKABLE_KEYS = ("seed", "data.cv.fold", "method.rate", "method.threshold", "method.bits", "method.scale",
                  "method.soft_weight", "method.temperature", "train.optimizer.lr",
                  "train.optimizer.weight_decay",
                  # keys that follow the seed by default: random pruning's draws, a student's teacher
                  "method.seed", "method.compress.seed", "method.teacher.seed")
# Keys that say where a job's files go or how it is shown, not what it computes.
NOT_COMPARED = ("paths", "logger", "force", "tags")

# Architectures whose stacked form would be wrong or slow (vmap has no per-model running statistics).
NO_STACKED_FORM = {"resnet": "its BatchNorm running statistics have no stacked form",
                   "mnist1d_gru": "its GRU has no stacked form under vmap"}


def stack_key(config: dict) -> str:
    """What must be equal for two jobs to share a stack: the config without its stackable keys."""
    flat = {k: v for k, v in flatten(config).items()
            if k not in STACKABLE_KEYS and k.split(".", 1)[0] not in NOT_COMPARED}
    return json.dumps(flat, sort_keys=True, default=str)


def alone_because(config: dict) -> str | None:
    """Why a job of this config cannot be part of a stack, or None if it can."""
    method, model, trainer = config.get("method", {}), config.get("model", {}), config.get("trainer", {})
    if method.get("kind") == "distill" and config.get("data", {}).get("shift_px"):
        return "method.kind=distill with data.shift_px > 0: the teacher runs on each augmented batch"
    if model.get("arch") in NO_STACKED_FORM:
        return f"model.arch={model['arch']}: {NO_STACKED_FORM[model['arch']]}"
    if trainer.get("strategy") not in (None, "auto") or trainer.get("devices") not in (1, "1", None):
        return f"trainer.devices={trainer.get('devices')}, trainer.strategy={trainer.get('strategy')}: " \
               "a stack trains on one device"
    return None


def partition(configs: list[dict], max_models: int) -> tuple[list[list[int]], dict[int, str]]:
    """Stacks (lists of indices into `configs`, each at most `max_models` long) and the jobs that
    run alone, each with the reason (a key that kept it out, or why it has no stacked form)."""
    groups: dict[str, list[int]] = {}
    alone: dict[int, str] = {}
    for i, config in enumerate(configs):
        reason = alone_because(config)
        if reason:
            alone[i] = reason
        else:
            groups.setdefault(stack_key(config), []).append(i)
    stacks = []
    singles = [members[0] for members in groups.values() if len(members) == 1]
    for members in groups.values():
        if len(members) > 1:
            stacks += [members[j:j + max_models] for j in range(0, len(members), max_models)]
    for i in singles:
        alone[i] = nearest_difference(configs, i, [s[0] for s in stacks] + [j for j in singles if j != i])
    # a chunk of one left over by max_models runs alone too
    for s in [s for s in stacks if len(s) == 1]:
        stacks.remove(s)
        alone[s[0]] = f"hydra.launcher.max_models={max_models} left it in a stack of its own"
    return stacks, alone


def nearest_difference(configs: list[dict], i: int, others: Iterable[int]) -> str:
    """The keys (outside STACKABLE_KEYS) in which job i differs from the most similar other job."""
    mine = flatten(configs[i])
    best = None
    for j in others:
        theirs = flatten(configs[j])
        differ = sorted(k for k in set(mine) | set(theirs)
                        if k not in STACKABLE_KEYS and k.split(".", 1)[0] not in NOT_COMPARED
                        and mine.get(k) != theirs.get(k))
        if best is None or len(differ) < len(best):
            best = differ
    if not best:
        return "no other job of the sweep to stack with"
    shown = ", ".join(f"{k}={mine.get(k)}" for k in best[:3])
    return f"{shown} differs from every other job" + (f" (and {len(best) - 3} more keys)" if len(best) > 3 else "")
