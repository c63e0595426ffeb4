"""FinetuneJob: a LoRA run as a background job with callbacks, a stop request, checkpoints and resume.

    job = FinetuneJob(FinetuneConfig(data="my.jsonl", out_dir="data/adapters/mine")).start(callback)
    job.status()        # JobStatus snapshot: state, step/total, loss, eval loss, tokens/s, ETA, loss history
    job.stop()          # finish the current optimizer step, save a resumable checkpoint + the adapter, stop
    job.wait()          # block until finished; FinetuneJob(same cfg).start() resumes a stopped run

``callback(event: TrainEvent)`` is called from the training thread for every log line, step, eval,
checkpoint and the final state. ``run()`` does the same work in the calling thread (CLI, tests).

Data order is a pure function of (seed, epoch), and checkpoints store adapter weights, AdamW state, the
step and the torch RNG, so stop + resume ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from finetune.config import FinetuneConfig
from finetune.data import Dataset, load_dataset
from finetune.device import resolve_device
from finetune.lora import apply_lora, save_adapter, trainable_summary
from finetune.render import IGNORE_INDEX, Rendered, collate, pad_id_of, prepare, train_val_split
from llm_core.heap import eager_release

CKPT_DIR = "checkpoints"
STATE_FILE = "finetune.json"


@dataclass
class TrainEvent:
    kind: str  # info | step | eval | checkpoint | done | stopped | error
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    loss: float | None = None
    eval_loss: float | None = None
    lr: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    elapsed_s: float = 0.0
    message: str = ""


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
    """Linear warmup, then cosine / linear decay to 0 or constant."""
    warm = cfg.warmup_steps or max(1, int(0.05 * total))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.schedule == "constant":
        return cfg.lr
    frac = min(1.0, (step - warm) / max(1, total - warm))
    if cfg.schedule == "linear":
        return cfg.lr * (1.0 - frac)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * frac))


class FinetuneJob:
    """One LoRA run. Pass ``model``/``tokenizer`` to train an already loaded model (LoRA layers are injected
    into it in place); otherwise ``cfg.model`` is loaded with ``llm_core.hub.load_model``."""

    def __init__(self, cfg: FinetuneConfig, model: torch.nn.Module | None = None, tokenizer=None):
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer
        self.peft_model = None
        self.render_stats = None
        self._status = JobStatus()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._callback: Callable[[TrainEvent], None] | None = None
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
            self._emit(TrainEvent("error", message=msg))
        return self.status()

    # ---- internals -----------------------------------------------------------------------------------------
    def _update(self, **kw) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self._status, k, v)

    def _emit(self, ev: TrainEvent) -> None:
        if self._callback is None:
            return
        try:
            self._callback(ev)
        except Exception as e:  # a broken UI callback must not kill a long run
            self._update(message=f"callback failed: {e}")

    def _info(self, msg: str) -> None:
        self._update(message=msg)
        self._emit(TrainEvent("info", message=msg))

    def _run(self) -> None:
        cfg = self.cfg
        self._update(state="preparing", error=None)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        out = Path(cfg.out_dir) if cfg.out_dir else default_out_dir(cfg)
        out.mkdir(parents=True, exist_ok=True)
        self._update(out_dir=str(out))
        dev = resolve_device(cfg.device, cfg.precision)

        ds, val_ds = resolve_data(cfg)
        self._info(f"dataset {ds.path}: {len(ds)} {ds.format} records")
        if self.model is None:
            from llm_core.hub import load_model

            self._info(f"loading {cfg.model} ...")
            self.model, self.tokenizer = load_model(cfg.model)
        if self.tokenizer is None:
            raise ValueError("a tokenizer is needed with a preloaded model")
        model, tok = self.model, self.tokenizer
        block = model.config.block_size
        max_len = min(cfg.max_length, block + 1)  # the model sees max_len - 1 positions
        seqs, st = prepare(ds, tok, max_len)
        self.render_stats = st
        self._info(f"rendered: {st.summary()}")
        if val_ds is not None:
            train, (val, _) = seqs, prepare(val_ds, tok, max_len)
        else:
            train, val = train_val_split(seqs, cfg.val_fraction, cfg.seed)
        if not train:
            raise ValueError(f"{ds.path}: no training sequences left after rendering ({st.summary()})")
        self._info(f"{len(train)} training / {len(val)} validation sequences on {dev.describe()}")

        base_name = cfg.model if not Path(cfg.model).exists() else str(Path(cfg.model).resolve())
        torch.manual_seed(cfg.seed)
        pm = apply_lora(model, cfg.rank, cfg.alpha, cfg.dropout, cfg.target_modules, base_name=base_name)
        self.peft_model = pm
        pm.to(dev.device)
        if hasattr(pm.get_base_model(), "gradient_checkpointing"):  # only in training mode: chat is unaffected
            pm.get_base_model().gradient_checkpointing = cfg.gradient_checkpointing
        n_tr, n_all, pct = trainable_summary(pm)
        self._update(trainable_params=n_tr, total_params=n_all)
        self._info(f"trainable params: {n_tr:,} of {n_all:,} ({pct:.3f}%)")
        params = [p for p in pm.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))

        per_epoch = math.ceil(len(train) / cfg.batch_size)  # micro-batches per epoch
        total = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch / cfg.grad_accum))
        step = self._maybe_resume(out, pm, opt)
        self._update(state="running", total_steps=total, step=step)
        pad = pad_id_of(tok)

        perms: dict[int, list[int]] = {}

        def micro_batch(i: int) -> list[Rendered]:
            ep, j = divmod(i, per_epoch)
            if ep not in perms:
                order = list(range(len(train)))
                random.Random(cfg.seed * 1000 + ep).shuffle(order)
                perms.clear()
                perms[ep] = order
            return [train[k] for k in perms[ep][j * cfg.batch_size:(j + 1) * cfg.batch_size]]

        t_run, n_tok_run, steps_run = time.perf_counter(), 0, 0
        if val and cfg.eval_at_start and step == 0:
            self._eval_and_report(val, 0, total, 0.0, None, t_run)
        t_train = 0.0  # time spent in optimizer steps (excludes eval/checkpoints) for tokens/s and ETA
        pm.train()
        while step < total:
            if self._stop.is_set():
                self._finish_stopped(out, pm, opt, step, total)
                return
            t0 = time.perf_counter()
            lr = lr_at(cfg, step, total)
            for g in opt.param_groups:
                g["lr"] = lr
            mbs = [micro_batch(step * cfg.grad_accum + a) for a in range(cfg.grad_accum)]
            n_lab = [sum(sum(lab != IGNORE_INDEX for lab in r.labels[1:]) for r in mb) for mb in mbs]
            n_total = max(1, sum(n_lab))
            loss_sum = 0.0
            for mb, nl in zip(mbs, n_lab):
                if nl == 0:  # cannot happen after prepare() (it drops such sequences); a NaN loss would poison LoRA
                    continue
                idx, tgt = collate(mb, pad)
                idx, tgt = idx.to(dev.device), tgt.to(dev.device)
                with dev.autocast():
                    _, loss = pm(idx, tgt, loss_only=True)  # logits only where labels count
                (loss * (nl / n_total)).backward()  # token-weighted mean over the whole optimizer step
                loss_sum += loss.item() * nl
                n_tok_run += sum(len(r.input_ids) - 1 for r in mb)
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            steps_run += 1
            t_train += time.perf_counter() - t0
            train_loss = loss_sum / n_total
            tps = n_tok_run / max(1e-9, t_train)
            eta = (total - step) * t_train / steps_run
            epoch = step * cfg.grad_accum / per_epoch
            with self._lock:
                self._status.losses.append((step, train_loss))
            self._update(step=step, epoch=epoch, loss=train_loss, tokens_per_s=tps, eta_s=eta,
                         elapsed_s=time.perf_counter() - t_run)
            if step % cfg.log_every == 0 or step == total:
                self._emit(TrainEvent("step", step, total, epoch, loss=train_loss, lr=lr, tokens_per_s=tps,
                                      eta_s=eta, elapsed_s=time.perf_counter() - t_run))
            if val and (step % cfg.eval_every == 0 or step == total):
                self._eval_and_report(val, step, total, epoch, train_loss, t_run)
            if step % cfg.save_every == 0 and step < total:
                self._checkpoint(out, pm, opt, step)
        save_adapter(pm, out)
        shutil.rmtree(out / CKPT_DIR, ignore_errors=True)  # finished: the adapter is the result, nothing to resume
        self._write_state(out, step, total, "done")
        self._update(state="done", eta_s=0.0, message=f"adapter saved to {out}")
        self._emit(TrainEvent("done", step, total, self._status.epoch, loss=self._status.loss,
                              eval_loss=self._status.eval_loss, elapsed_s=time.perf_counter() - t_run,
                              message=f"adapter saved to {out}"))

    def _eval_and_report(self, val: list[Rendered], step: int, total: int, epoch: float, train_loss: float | None,
                         t_run: float) -> None:
        ev = self.evaluate(val)
        if ev is None:  # stopped during evaluation
            return
        with self._lock:
            self._status.eval_losses.append((step, ev))
        self._update(eval_loss=ev)
        self._emit(TrainEvent("eval", step, total, epoch, loss=train_loss, eval_loss=ev,
                              elapsed_s=time.perf_counter() - t_run))

    @torch.no_grad()
    def evaluate(self, seqs: list[Rendered]) -> float | None:
        """Token-weighted mean loss on up to ``max_eval_batches`` batches (dropout off); None if stopped."""
        cfg, pm = self.cfg, self.peft_model
        dev = resolve_device(cfg.device, cfg.precision)
        was_training = pm.training
        pm.eval()
        tot = n = 0.0
        try:
            for b in range(min(cfg.max_eval_batches, math.ceil(len(seqs) / cfg.batch_size))):
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

    # ---- checkpoints ----------------------------------------------------------------------------------------
    def _checkpoint(self, out: Path, pm, opt: torch.optim.Optimizer, step: int) -> Path:
        """Adapter + AdamW state + RNG in ``checkpoints/step-N`` (written to a temp folder, then renamed);
        older checkpoints are removed afterwards."""
        root = out / CKPT_DIR
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"step-{step:06d}"
        tmp = root / f".tmp-step-{step:06d}"
        shutil.rmtree(tmp, ignore_errors=True)
        save_adapter(pm, tmp)
        sd = opt.state_dict()
        tensors = {"rng_cpu": torch.get_rng_state()}
        device = next(pm.parameters()).device
        if device.type == "cuda":  # LoRA dropout on the GPU draws from the CUDA generator
            tensors["rng_cuda"] = torch.cuda.get_rng_state(device)
        for i, st in sd["state"].items():
            for k, v in st.items():
                tensors[f"{i}.{k}"] = v.detach().cpu().contiguous() if torch.is_tensor(v) else torch.tensor(v)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "trainer_state.json").write_text(json.dumps({
            "step": step, "param_groups": sd["param_groups"], "config": self.cfg.to_dict()}, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in root.glob("step-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        self._emit(TrainEvent("checkpoint", step, self._status.total_steps, message=str(final)))
        return final

    def _maybe_resume(self, out: Path, pm, opt: torch.optim.Optimizer) -> int:
        ckpts = sorted((out / CKPT_DIR).glob("step-*")) if self.cfg.resume else []
        if not ckpts:
            return 0
        ck = ckpts[-1]
        state = json.loads((ck / "trainer_state.json").read_text())
        saved = FinetuneConfig.from_dict(state["config"])
        keys = ("model", "data", "rank", "alpha", "target_modules", "batch_size", "grad_accum", "seed", "max_length")
        diff = [k for k in keys if getattr(saved, k) != getattr(self.cfg, k)]
        if diff:
            raise ValueError(f"{ck} was made with different settings ({', '.join(diff)}); use another out_dir "
                             "or resume=False to start over")
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(pm, load_file(str(ck / "adapter_model.safetensors")))
        tensors = load_file(str(ck / "optimizer.safetensors"))
        opt_state: dict[int, dict] = {}
        for key, v in tensors.items():
            if key.startswith("rng_"):
                continue
            i, k = key.split(".", 1)
            opt_state.setdefault(int(i), {})[k] = v
        opt.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
        torch.set_rng_state(tensors["rng_cpu"])
        device = next(pm.parameters()).device
        if device.type == "cuda" and "rng_cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng_cuda"], device)
        self._info(f"resumed from {ck} (step {state['step']})")
        return int(state["step"])

    def _finish_stopped(self, out: Path, pm, opt, step: int, total: int) -> None:
        if step > 0:
            self._checkpoint(out, pm, opt, step)
            save_adapter(pm, out)
        self._write_state(out, step, total, "stopped")
        msg = f"stopped at step {step}/{total}; run again with the same settings to resume"
        self._update(state="stopped", message=msg)
        self._emit(TrainEvent("stopped", step, total, self._status.epoch, loss=self._status.loss,
                              eval_loss=self._status.eval_loss, message=msg))

    def _write_state(self, out: Path, step: int, total: int, state: str) -> None:
        s = self.status()
        info = {"state": state, "step": step, "total_steps": total, "config": self.cfg.to_dict(),
                "base_model": self.cfg.model, "train_loss": s.loss, "eval_loss": s.eval_loss,
                "eval_losses": s.eval_losses, "trainable_params": s.trainable_params,
                "total_params": s.total_params,
                "render_stats": dataclasses.asdict(self.render_stats) if self.render_stats else None}
        tmp = out / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(info, indent=2))
        os.replace(tmp, out / STATE_FILE)
