"""LoRA fine-tuning of llm_core models: data formats, rendering with loss masking, peft LoRA, background jobs.

Public API (see docs in each module):

- ``FinetuneConfig``                       every setting of a run (``finetune/config.py``)
- ``FinetuneJob(cfg).start(callback)``      background run; ``.stop()``, ``.status()``, ``.wait()``, ``.run()``
- ``TrainEvent``, ``JobStatus``             what callbacks receive / what ``status()`` returns
- ``load_dataset(path, format="auto")``     validated Dataset or ``DatasetError`` (file, line, field)
- ``preview``, ``format_preview``, ``prepare``   examples as the model sees them (masked parts marked)
- ``apply_lora``, ``save_adapter``, ``load_adapter``, ``load_adapted``, ``merge_adapter``, ``AdapterSwitch``
- ``write_demo``, ``demo_data_path``, ``exact_match``   the built-in demo skill (sentence -> JSON)
- ``compare_adapter(folder)`` -> ``Comparison``   validation prompts answered by the base model and the adapter
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llm_core.lazy import lazy_exports

if TYPE_CHECKING:
    from finetune.compare import Comparison, compare_adapter
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

# names load on first use (PEP 562): `import finetune.config` does not import torch (the UI builds without it)
_EXPORTS = {
    'DEFAULT_TARGETS': 'finetune.config',
    'FinetuneConfig': 'finetune.config',
    'Dataset': 'finetune.data',
    'DatasetError': 'finetune.data',
    'DatasetIssue': 'finetune.data',
    'Example': 'finetune.data',
    'load_dataset': 'finetune.data',
    'DeviceChoice': 'finetune.device',
    'resolve_device': 'finetune.device',
    'AdapterSwitch': 'finetune.lora',
    'adapter_base': 'finetune.lora',
    'apply_lora': 'finetune.lora',
    'list_adapters': 'finetune.lora',
    'load_adapted': 'finetune.lora',
    'load_adapter': 'finetune.lora',
    'merge_adapter': 'finetune.lora',
    'save_adapter': 'finetune.lora',
    'trainable_summary': 'finetune.lora',
    'IGNORE_INDEX': 'finetune.render',
    'RenderStats': 'finetune.render',
    'format_preview': 'finetune.render',
    'prepare': 'finetune.render',
    'preview': 'finetune.render',
    'Comparison': 'finetune.compare',
    'compare_adapter': 'finetune.compare',
    'FinetuneJob': 'finetune.trainer',
    'JobStatus': 'finetune.trainer',
    'TrainEvent': 'finetune.trainer',
    'demo_data_path': 'finetune.demo',
    'exact_match': 'finetune.demo',
    'write_demo': 'finetune.demo',
}


__all__ = [
    "DEFAULT_TARGETS", "FinetuneConfig", "Dataset", "DatasetError", "DatasetIssue", "Example", "load_dataset",
    "demo_data_path", "exact_match", "write_demo", "DeviceChoice", "resolve_device", "AdapterSwitch",
    "adapter_base", "apply_lora", "list_adapters", "load_adapted", "load_adapter", "merge_adapter", "save_adapter",
    "trainable_summary", "IGNORE_INDEX", "RenderStats", "format_preview", "prepare", "preview", "FinetuneJob",
    "JobStatus", "TrainEvent", "Comparison", "compare_adapter",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
