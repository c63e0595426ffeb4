"""Training: ``data.py`` (text to token batches) -> ``lr_schedule.py`` -> ``train_loop.py`` (the one loop
that pretraining and LoRA fine-tuning both run: accumulation, clipping, precision, compile, DDP, evaluation, events,
checkpoints) -> ``trainer.py`` (pretraining: TrainConfig, recipes, ``train``) -> ``train.py`` (the CLI,
``python -m llm_core.training``). ``train_events.py`` and ``train_state.py`` are the loop's events and exact-resume
state.
"""

from __future__ import annotations

from llm_core.lazy import lazy_exports

_EXPORTS = {
    "prepare_dataset": "llm_core.training.data",
    "TokenData": "llm_core.training.data",
    "shakespeare_text": "llm_core.training.data",
    "schedule_lr": "llm_core.training.lr_schedule",
    "run_loop": "llm_core.training.train_loop",
    "LoopConfig": "llm_core.training.train_loop",
    "LoopResult": "llm_core.training.train_loop",
    "pick_device": "llm_core.training.train_loop",
    "TrainConfig": "llm_core.training.trainer",
    "TrainResult": "llm_core.training.trainer",
    "PRETRAIN_PRESETS": "llm_core.training.trainer",
    "recipe": "llm_core.training.trainer",
    "train": "llm_core.training.trainer",
}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
