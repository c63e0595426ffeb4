"""FinetuneJob: a LoRA run as a background job with callbacks, a stop request, checkpoints and resume.

    job = FinetuneJob(FinetuneConfig(data="my.jsonl", out_dir="data/adapters/mine")).start(callback)
    job.status()        # JobStatus snapshot: state, step/total, loss, eval loss, tokens/s, ETA, loss history
    job.stop()          # finish the current optimizer step, save a resumable checkpoint + the adapter, stop
    job.wait()          # block until finished; FinetuneJob(same cfg).start() resumes a stopped run

``callback(event)`` gets ``llm_core.training.train_events`` events (``ev.kind``: info, step, eval, checkpoint, then done,
stopped or error; ``ev.message`` in words) from the training thread. ``run()`` does the same work in the calling
thread (CLI, tests, the app's job runner). Under ``torchrun --nproc_per_node=N -m finetune`` each process trains on
its own share of every batch with DistributedDataParallel, and only rank 0 writes files and reports.

There is no loop here: the loop is ``llm_core.training.train_loop``'s, the one pretraining runs on. This module supplies
what LoRA fine-tuning trains: the LoRA-wrapped model, the masked dataset in a seeded order, its schedule and
defaults, and its checkpoint layout (``checkpoints/step-N``: the adapter files + the shared training state).
Data order is a pure function of (seed, epoch), and checkpoints store the adapter, AdamW state, the counters and
the torch RNG, so stop + resume ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from finetune.config import FinetuneConfig
from finetune.data import Dataset, load_dataset
from finetune.device import DeviceChoice, resolve_device
from finetune.lora import apply_lora, save_adapter, trainable_summary
from finetune.render import IGNORE_INDEX, Rendered, collate, pad_id_of, prepare, train_val_split
from llm_core.atomic import staged_dir, write_json
from llm_core.training.heap import eager_release
from llm_core.training.lr_schedule import schedule_lr
from llm_core.training.train_events import EndEvent, EvalEvent, StatusEvent, StepEvent
from llm_core.training.train_events import TrainEvent as TrainEvent  # the one event family (re-exported)
from llm_core.training.train_loop import Dist, LoopConfig, LoopResult, Micro, Task, distributed, run_loop
from llm_core.training.train_state import TrainState, load_state_files, restore_rng, save_state_files

CKPT_DIR = "checkpoints"
STATE_FILE = "finetune.json"
# settings a resumed run must share with the checkpoint (others, like lr or eval_interval, may change)
RESUME_KEYS = ("model", "data", "rank", "alpha", "target_modules", "batch_size", "grad_accum", "seed", "max_length")


@dataclass
class JobStatus:
    state: str = "idle"  # idle | preparing | running | stopping | stopped | done | error
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    loss: float | None = None
    eval_loss: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    elapsed_s: float = 0.0
    trainable_params: int = 0
    total_params: int = 0
    message: str = ""
    error: str | None = None
    out_dir: str | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, train loss)
    eval_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, validation loss)
    best_step: int | None = None  # early stopping: the step whose adapter was kept
    best_eval_loss: float | None = None


def default_out_dir(cfg: FinetuneConfig) -> Path:
    from finetune.paths import adapters_dir

    data = "demo" if cfg.data == "demo" else Path(cfg.data).stem
    return adapters_dir() / f"{Path(cfg.model).name}-{data}"


def resolve_data(cfg: FinetuneConfig) -> tuple[Dataset, Dataset | None]:
    """Load (and validate) the training file and the optional validation file."""
    from finetune.demo import demo_data_path

    path = demo_data_path()["train"] if cfg.data == "demo" else Path(cfg.data)
    ds = load_dataset(path, cfg.data_format)
    val = load_dataset(cfg.val_data, cfg.data_format) if cfg.val_data else None
    return ds, val


def lr_at(cfg: FinetuneConfig, step: int, total: int) -> float:
    """The shared schedule (``llm_core.training.lr_schedule``) with LoRA's defaults: warmup 5% of the run unless set,
    peaking on its last step, then cosine / linear decay to 0, or constant."""
    warm = cfg.warmup_steps or max(1, int(0.05 * total))
    return schedule_lr(step, cfg.lr, 0.0, warm, total, cfg.schedule, peak_in_warmup=True)


def _n_labels(mb: list[Rendered]) -> int:
    return sum(sum(lab != IGNORE_INDEX for lab in r.labels[1:]) for r in mb)


def _legacy_state(ck: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], TrainState, dict[str, Any]]:
    """A checkpoint written before the shared loop (``trainer_state.json``; RNG inside optimizer.safetensors),
    read into the shared format so old runs still resume."""
    meta = json.loads((ck / "trainer_state.json").read_text())
    opt_state: dict[int, dict[str, Any]] = {}
    rng: dict[str, torch.Tensor] = {}
    for key, v in load_file(str(ck / "optimizer.safetensors")).items():
        if key.startswith("rng_"):
            rng[{"rng_cpu": "torch_cpu", "rng_cuda": "cuda"}[key]] = v
            continue
        i, k = key.split(".", 1)
        opt_state.setdefault(int(i), {})[k] = v
    return ({"state": opt_state, "param_groups": meta["param_groups"]}, rng, TrainState(step=int(meta["step"])),
            meta["config"])


class FinetuneJob:
    """One LoRA run. Pass ``model``/``tokenizer`` to train an already loaded model (LoRA layers are injected
    into it in place); otherwise ``cfg.model`` is loaded with ``llm_core.weights.hub.load_model``. ``stop_event``: an
    outside stop request (the app's job runner passes its own), else the job makes one for :meth:`stop`."""

    def __init__(self, cfg: FinetuneConfig, model: torch.nn.Module | None = None, tokenizer=None,
                 stop_event: threading.Event | None = None):
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer
        self.peft_model = None
        self.render_stats = None
        self.ddp = Dist()
        self._status = JobStatus()
        self._lock = threading.Lock()
        self._stop = stop_event or threading.Event()
        self._thread: threading.Thread | None = None
        self._callback: Callable[[TrainEvent], None] | None = None
        self._epoch_per_step = 0.0
        self.exception: Exception | None = None  # what ended the run in state 'error'

    # ---- public API ----------------------------------------------------------------------------------------
    def start(self, callback: Callable[[TrainEvent], None] | None = None) -> FinetuneJob:
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("this job is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, args=(callback,), name="finetune", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the run to stop after the current optimizer step (it saves a checkpoint first)."""
        self._stop.set()
        self._update(state="stopping" if self._status.state in ("preparing", "running") else self._status.state)

    def status(self) -> JobStatus:
        with self._lock:
            s = dataclasses.replace(self._status)
            s.losses, s.eval_losses = list(s.losses), list(s.eval_losses)
            return s

    def is_alive(self) -> bool:
        """True while the background thread started by ``start()`` is working."""
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> JobStatus:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.status()

    def run(self, callback: Callable[[TrainEvent], None] | None = None) -> JobStatus:
        """Train in the calling thread; errors end in state 'error' (message in status().error), not raised."""
        self._callback = callback
        try:
            with eager_release(self.cfg.gradient_checkpointing):  # low memory: freed activations go to the OS
                self._run()
        except Exception as e:  # reported to the UI/CLI through status and an error event
            self.exception = e
            msg = str(e) if isinstance(e, (ValueError, FileNotFoundError)) else f"{type(e).__name__}: {e}"
            self._update(state="error", error=msg, message=msg)
            self._emit(EndEvent("error", self._status.step, self._status.total_steps, message=msg))
        return self.status()

    # ---- events and status ---------------------------------------------------------------------------------
    def _update(self, **kw) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self._status, k, v)

    def _emit(self, ev: TrainEvent) -> None:
        if self._callback is None or not self.ddp.master:  # under torchrun only rank 0 reports
            return
        try:
            self._callback(ev)
        except Exception as e:  # a broken UI callback must not kill a long run
            self._update(message=f"callback failed: {e}")

    def _info(self, msg: str) -> None:
        self._update(message=msg)
        self._emit(StatusEvent(msg))

    def _on_event(self, ev: TrainEvent) -> None:
        """What the shared loop reports: kept in the status, then passed on (steps every ``log_every``)."""
        if isinstance(ev, StepEvent):
            with self._lock:
                self._status.losses.append((ev.step, ev.loss))
            self._update(step=ev.step, epoch=ev.step * self._epoch_per_step, loss=ev.loss,
                         tokens_per_s=ev.tokens_per_s, eta_s=ev.eta_s, elapsed_s=ev.elapsed_s)
            if ev.step % self.cfg.log_every and ev.step != ev.max_steps:
                return
        elif isinstance(ev, EvalEvent):
            with self._lock:
                self._status.eval_losses.append((ev.step, ev.val_loss))
            self._update(eval_loss=ev.val_loss)
        elif isinstance(ev, StatusEvent):
            self._update(message=ev.message)
        self._emit(ev)

    # ---- setup: data, model, the task the shared loop trains -------------------------------------------------
    def _run(self) -> None:
        cfg = self.cfg
        self._update(state="preparing", error=None)
        with distributed(cfg.device, cfg.num_threads) as (ddp, device):
            self.ddp = ddp
            dev = resolve_device(str(device), cfg.precision)
            out = Path(cfg.out_dir) if cfg.out_dir else default_out_dir(cfg)
            if ddp.master:
                out.mkdir(parents=True, exist_ok=True)
            self._update(out_dir=str(out))
            train, val = self._load_data(dev)
            pm = self._wrap_model(dev)
            opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=cfg.lr,
                                    weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
            per_epoch = math.ceil(len(train) / cfg.batch_size)  # micro-batches per epoch
            micro_per_step = cfg.grad_accum * ddp.world_size  # the global batch: every process's micro-batches
            total = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch / micro_per_step))
            self._epoch_per_step = micro_per_step / per_epoch
            state = self._resume(out, pm, opt, dev.device)
            patience = cfg.patience if val else 0
            if cfg.patience and not val:
                self._info("early stopping is off: there is no validation data to watch")
            self._update(state="running", total_steps=total, step=state.step)
            task = Task(pm, opt, self._batches(train, per_epoch, dev.device), lambda step, _: lr_at(cfg, step, total),
                        lambda: self.evaluate(val) if val else None,
                        lambda reason: self._save(out, pm, opt, state, reason),
                        keep_best=lambda: self._keep_best(out, pm, state), forward_kwargs={"loss_only": True})
            loop = LoopConfig(max_steps=total, grad_clip=cfg.grad_clip, eval_interval=cfg.eval_interval if val else 0,
                              eval_at_start=cfg.eval_at_start and bool(val), checkpoint_interval=cfg.checkpoint_interval,
                              patience=patience, dtype=dev.dtype_name())
            res = run_loop(task, loop, state, ddp, dev.device, self._on_event, self._stop)
            if ddp.master:
                self._finish(res, out, state, total)

    def _load_data(self, dev: DeviceChoice) -> tuple[list[Rendered], list[Rendered]]:
        """Validated records rendered with loss masks, split into training and validation sequences."""
        cfg = self.cfg
        ds, val_ds = resolve_data(cfg)
        self._info(f"dataset {ds.path}: {len(ds)} {ds.format} records")
        if self.model is None:
            from llm_core.weights.hub import load_model

            self._info(f"loading {cfg.model} ...")
            self.model, self.tokenizer = load_model(cfg.model)
        if self.tokenizer is None:
            raise ValueError("a tokenizer is needed with a preloaded model")
        max_len = min(cfg.max_length, self.model.config.block_size + 1)  # the model sees max_len - 1 positions
        seqs, st = prepare(ds, self.tokenizer, max_len)
        self.render_stats = st
        self._info(f"rendered: {st.summary()}")
        if val_ds is not None:
            train, (val, _) = seqs, prepare(val_ds, self.tokenizer, max_len)
        else:
            train, val = train_val_split(seqs, cfg.val_fraction, cfg.seed)
        if not train:
            raise ValueError(f"{ds.path}: no training sequences left after rendering ({st.summary()})")
        procs = f", {self.ddp.world_size} processes" if self.ddp.world_size > 1 else ""
        self._info(f"{len(train)} training / {len(val)} validation sequences on {dev.describe()}{procs}")
        return train, val

    def _wrap_model(self, dev: DeviceChoice):
        cfg = self.cfg
        base_name = cfg.model if not Path(cfg.model).exists() else str(Path(cfg.model).resolve())
        torch.manual_seed(cfg.seed)  # the same LoRA initialisation on every process
        pm = apply_lora(self.model, cfg.rank, cfg.alpha, cfg.dropout, cfg.target_modules, base_name=base_name)
        self.peft_model = pm
        pm.to(dev.device)
        if hasattr(pm.get_base_model(), "gradient_checkpointing"):  # only in training mode: chat is unaffected
            pm.get_base_model().gradient_checkpointing = cfg.gradient_checkpointing
        n_tr, n_all, pct = trainable_summary(pm)
        self._update(trainable_params=n_tr, total_params=n_all)
        self._info(f"trainable params: {n_tr:,} of {n_all:,} ({pct:.3f}%)")
        return pm

    def _batches(self, train: list[Rendered], per_epoch: int, device: torch.device) -> Callable[[int], list[Micro]]:
        """This process's micro-batches of a step. Micro-batch ``i`` of the run is a slice of a seeded shuffle of
        its epoch; step ``s`` takes ``grad_accum * world_size`` of them and process ``r`` every ``r``-th, so N
        processes see exactly the sequences one process sees with N times the accumulation. Each is weighted by
        its label tokens over the whole step's (all processes): a token-weighted mean, as one process computes."""
        cfg, ddp, pad = self.cfg, self.ddp, pad_id_of(self.tokenizer)
        perms: dict[int, list[int]] = {}

        def micro_batch(i: int) -> list[Rendered]:
            ep, j = divmod(i, per_epoch)
            if ep not in perms:
                order = list(range(len(train)))
                random.Random(cfg.seed * 1000 + ep).shuffle(order)
                perms.clear()
                perms[ep] = order
            return [train[k] for k in perms[ep][j * cfg.batch_size:(j + 1) * cfg.batch_size]]

        def batches(step: int) -> list[Micro]:
            mine = [micro_batch((step * cfg.grad_accum + a) * ddp.world_size + ddp.rank)
                    for a in range(cfg.grad_accum)]
            n_lab = [_n_labels(mb) for mb in mine]
            n_all = max(1.0, ddp.reduce([float(sum(n_lab))], device)[0])
            out = []
            for mb, nl in zip(mine, n_lab):
                if nl == 0:  # cannot happen after prepare() (it drops such sequences); a NaN loss would poison LoRA
                    continue
                idx, tgt = collate(mb, pad)
                out.append(Micro(idx.to(device), tgt.to(device), nl * ddp.world_size / n_all,
                                 sum(len(r.input_ids) - 1 for r in mb)))
            return out

        return batches

    @torch.no_grad()
    def evaluate(self, seqs: list[Rendered]) -> float | None:
        """Token-weighted mean loss on up to ``eval_batches`` batches (dropout off); None if stopped.
        (Every process computes the same number on the same weights: no collective needed.)"""
        cfg, pm = self.cfg, self.peft_model
        dev = resolve_device(str(next(pm.parameters()).device), cfg.precision)
        was_training = pm.training
        pm.eval()
        tot = n = 0.0
        try:
            for b in range(min(cfg.eval_batches, math.ceil(len(seqs) / cfg.batch_size))):
                if self._stop.is_set():
                    return None
                idx, tgt = collate(seqs[b * cfg.batch_size:(b + 1) * cfg.batch_size], pad_id_of(self.tokenizer))
                with dev.autocast():
                    _, loss = pm(idx.to(dev.device), tgt.to(dev.device), loss_only=True)
                k = int((tgt != IGNORE_INDEX).sum())
                tot += loss.item() * k
                n += k
        finally:
            pm.train(was_training)
        return tot / max(1.0, n)

    # ---- checkpoints, the best adapter, the end ----------------------------------------------------------------
    def _save(self, out: Path, pm, opt: torch.optim.Optimizer, state: TrainState, reason: str) -> str | None:
        """The loop's save (rank 0): a resumable checkpoint at intervals and on stop; at the end the adapter."""
        keeps_best = bool(self.cfg.patience) and state.best_step >= 0
        if reason in ("interval", "stopped"):
            if state.step == 0:
                return None
            ck = self._checkpoint(out, pm, opt, state)
            if reason == "stopped" and not keeps_best:
                save_adapter(pm, out)
            return str(ck)
        if keeps_best and state.best_step != state.step:  # the adapter in `out` is the best one: train no further
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(pm, load_file(str(out / "adapter_model.safetensors")))
        elif not keeps_best:
            save_adapter(pm, out)
        shutil.rmtree(out / CKPT_DIR, ignore_errors=True)  # finished: the adapter is the result, nothing to resume
        return None

    def _keep_best(self, out: Path, pm, state: TrainState) -> None:
        save_adapter(pm, out)
        self._update(best_step=state.step, best_eval_loss=state.best_val_loss)
        self._info(f"best validation loss so far ({state.best_val_loss:.4f}) at step {state.step}: "
                   f"adapter saved to {out}")

    def _checkpoint(self, out: Path, pm, opt: torch.optim.Optimizer, state: TrainState) -> Path:
        """Adapter + AdamW state + RNG + counters in ``checkpoints/step-N`` (staged, then swapped in); older
        checkpoints are removed afterwards."""
        root = out / CKPT_DIR
        final = root / f"step-{state.step:06d}"
        with staged_dir(final) as tmp:
            save_adapter(pm, tmp)
            save_state_files(tmp, opt, state, {**self.cfg.to_dict(), "world_size": self.ddp.world_size})
        for old in root.glob("step-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def _resume(self, out: Path, pm, opt: torch.optim.Optimizer, device: torch.device) -> TrainState:
        """The counters to start from: those of the latest checkpoint in ``out`` (adapter, optimizer and RNG
        restored), or a fresh start."""
        ckpts = sorted((out / CKPT_DIR).glob("step-*")) if self.cfg.resume else []
        if not ckpts:
            return TrainState()
        ck = ckpts[-1]
        if (ck / "state.json").is_file():
            opt_state, rng, state, saved_cfg = load_state_files(ck)
        elif (ck / "trainer_state.json").is_file():
            opt_state, rng, state, saved_cfg = _legacy_state(ck)
        else:
            raise ValueError(f"{ck} holds no training state; use another out_dir or resume=False to start over")
        saved = FinetuneConfig.from_dict(saved_cfg)
        diff = [k for k in RESUME_KEYS if getattr(saved, k) != getattr(self.cfg, k)]
        if saved_cfg.get("world_size", 1) != self.ddp.world_size:
            diff.append(f"{saved_cfg.get('world_size', 1)} processes then, {self.ddp.world_size} now")
        if diff:
            raise ValueError(f"{ck} was made with different settings ({', '.join(diff)}); use another out_dir "
                             "or resume=False to start over")
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(pm, load_file(str(ck / "adapter_model.safetensors")))
        opt.load_state_dict(opt_state)
        restore_rng(rng, device)
        self._info(f"resumed from {ck} (step {state.step})")
        return state

    def _finish(self, res: LoopResult, out: Path, state: TrainState, total: int) -> None:
        s = self.status()
        if res.stop_reason == "stopped":
            self._write_state(out, state, total, "stopped")
            msg = f"stopped at step {state.step}/{total}; run again with the same settings to resume"
            self._update(state="stopped", message=msg)
            self._emit(EndEvent("stopped", state.step, total, s.loss, s.eval_loss, msg))
            return
        msg = f"adapter saved to {out}"
        if self.cfg.patience and state.best_step >= 0:
            why = (f"early stopping: no lower validation loss in {self.cfg.patience} evaluations; "
                   if res.stop_reason == "early_stop" else "")
            msg = (f"{why}kept the best adapter, from step {state.best_step} (validation loss "
                   f"{state.best_val_loss:.4f}); {msg}")
        self._write_state(out, state, total, "done")
        self._update(state="done", eta_s=0.0, message=msg)
        self._emit(EndEvent("done", state.step, total, s.loss, s.eval_loss, msg))

    def _write_state(self, out: Path, state: TrainState, total: int, status: str) -> None:
        s = self.status()
        info = {"state": status, "step": state.step, "total_steps": total, "config": self.cfg.to_dict(),
                "base_model": self.cfg.model, "train_loss": s.loss, "eval_loss": s.eval_loss,
                "eval_losses": s.eval_losses, "trainable_params": s.trainable_params,
                "total_params": s.total_params, "processes": self.ddp.world_size,
                "best_step": state.best_step if self.cfg.patience and state.best_step >= 0 else None,
                "best_eval_loss": state.best_val_loss if self.cfg.patience else None,
                "render_stats": dataclasses.asdict(self.render_stats) if self.render_stats else None}
        write_json(out / STATE_FILE, info)
