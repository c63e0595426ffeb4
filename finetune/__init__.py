"""LoRA fine-tuning of llm_core models: data formats, rendering with loss masking, peft LoRA, background jobs.

Public API (see docs in each module):

- ``FinetuneConfig``                       every setting of a run (``finetune/config.py``)
- ``FinetuneJob(cfg).start(callback)``      background run; ``.stop()``, ``.status()``, ``.wait()``, ``.run()``
- ``TrainEvent``, ``JobStatus``             what callbacks receive / what ``status()`` returns
- ``load_dataset(path, format="auto")``     validated Dataset or ``DatasetError`` (file, line, field)
- ``preview``, ``format_preview``, ``prepare``   examples as the model sees them (masked parts marked)
- ``apply_lora``, ``save_adapter``, ``load_adapter``, ``load_adapted``, ``merge_adapter``, ``AdapterSwitch``
- ``write_demo``, ``demo_data_path``, ``exact_match``   the built-in demo skill (sentence -> JSON)
"""

from finetune.config import DEFAULT_TARGETS, FinetuneConfig
from finetune.data import Dataset, DatasetError, DatasetIssue, Example, load_dataset
from finetune.device import DeviceChoice, resolve_device
from finetune.lora import (
    AdapterSwitch,
    adapter_base,
    apply_lora,
    list_adapters,
    load_adapted,
    load_adapter,
    merge_adapter,
    save_adapter,
    trainable_summary,
)
from finetune.render import IGNORE_INDEX, RenderStats, format_preview, prepare, preview
from finetune.trainer import FinetuneJob, JobStatus, TrainEvent


def __getattr__(name: str):
    # demo names load lazily so `python -m finetune.demo` does not import its own module twice
    if name in ("demo_data_path", "exact_match", "write_demo"):
        from finetune import demo

        return getattr(demo, name)
    raise AttributeError(f"module 'finetune' has no attribute {name!r}")


__all__ = [
    "DEFAULT_TARGETS", "FinetuneConfig", "Dataset", "DatasetError", "DatasetIssue", "Example", "load_dataset",
    "demo_data_path", "exact_match", "write_demo", "DeviceChoice", "resolve_device", "AdapterSwitch",
    "adapter_base", "apply_lora", "list_adapters", "load_adapted", "load_adapter", "merge_adapter", "save_adapter",
    "trainable_summary", "IGNORE_INDEX", "RenderStats", "format_preview", "prepare", "preview", "FinetuneJob",
    "JobStatus", "TrainEvent",
]
