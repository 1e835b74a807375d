"""A resumable training loop: AdamW (torch), linear warmup + decay, gradient accumulation and clipping, autocast
on CUDA (fp32 on CPU), fixed seeds. Checkpoints: ``out/checkpoint-{step}/`` in colbert-ai layout (safetensors) plus
``trainer_state.safetensors`` (optimizer moments, RNG state) and ``trainer_state.json`` (step, config)."""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from tqdm import tqdm

from ..config import _Config
from ..errors import InvalidArgument
from ..model.checkpoints import warn_missing_markers, write_colbert_ai
from ..model.encoder import ColBERT
from .data import Example, load_examples
from .losses import batch_loss


@dataclass(frozen=True)
class TrainConfig(_Config):
    """``train_layers``: None trains everything; n trains the projection and the last n transformer layers
    (0: the projection only), which is what a 2-core CPU can afford."""

    steps: int = 1000
    batch_size: int = 16
    lr: float = 3e-5
    warmup_steps: Optional[int] = None  # None: 10% of steps
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    seed: int = 12345
    in_batch_negatives: bool = True
    ce_weight: float = 1.0
    kl_weight: float = 1.0
    temperature: float = 1.0
    save_every: int = 500
    keep_checkpoints: int = 2
    train_layers: Optional[int] = None
    log_file: Optional[str] = None

    def __post_init__(self):
        for name in ("steps", "batch_size", "grad_accum", "save_every"):
            if getattr(self, name) <= 0:
                raise InvalidArgument(f"TrainConfig.{name} must be > 0, got {getattr(self, name)}")


def _trainable(model: ColBERT, train_layers: Optional[int]):
    if train_layers is None:
        return [p for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(model.linear.parameters())
    layers = None
    for name in ("encoder.layer", "layers", "encoder.layers"):
        obj = model.backbone
        try:
            for part in name.split("."):
                obj = getattr(obj, part)
            layers = obj
            break
        except AttributeError:
            continue
    if train_layers and layers is None:
        raise InvalidArgument("cannot find the backbone's transformer layers to train the last ones")
    if train_layers:
        for layer in list(layers)[-train_layers:]:
            params += list(layer.parameters())
    for p in params:
        p.requires_grad_(True)
    return params


def _latest_checkpoint(out: Path) -> Optional[Path]:
    cks = sorted((p for p in out.glob("checkpoint-*") if (p / "trainer_state.json").exists()),
                 key=lambda p: int(p.name.split("-")[1]))
    return cks[-1] if cks else None


def _save(model, opt, step, out: Path, cfg: TrainConfig, rng_state) -> Path:
    from safetensors.torch import save_file

    final = out / f"checkpoint-{step}"
    tmp = out / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if model.linear.bias is not None:
        raise InvalidArgument("this model's projection has a bias, which the colbert-ai layout cannot hold")
    # no marker warning here: it would name the temporary folder, at every checkpoint (``train`` warns once)
    write_colbert_ai(tmp, model.backbone, model.hf_tokenizer, model.linear, model.config, warn=False)
    tensors = {"rng.torch": rng_state}
    for i, p in enumerate(opt.param_groups[0]["params"]):
        st = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in st:
                tensors[f"opt.{i}.{key}"] = st[key].detach().cpu().contiguous()
        if "step" in st:
            tensors[f"opt.{i}.step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1).cpu()
    save_file(tensors, str(tmp / "trainer_state.safetensors"))
    (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "config": cfg.to_dict()}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    old = sorted((p for p in out.glob("checkpoint-*")), key=lambda p: int(p.name.split("-")[1]))
    for p in old[: -cfg.keep_checkpoints]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def _restore(ck: Path, opt) -> tuple[int, torch.Tensor]:
    from safetensors.torch import load_file

    state = json.loads((ck / "trainer_state.json").read_text())
    tensors = load_file(str(ck / "trainer_state.safetensors"))
    for i, p in enumerate(opt.param_groups[0]["params"]):
        if f"opt.{i}.exp_avg" in tensors:
            opt.state[p] = {"exp_avg": tensors[f"opt.{i}.exp_avg"].to(p.device),
                            "exp_avg_sq": tensors[f"opt.{i}.exp_avg_sq"].to(p.device),
                            "step": tensors[f"opt.{i}.step"].reshape(()).clone()}
    return int(state["step"]), tensors["rng.torch"]


def train(model: Union[ColBERT, str], data: Union[str, Path, list[Example]], out_dir: Union[str, Path],
          config: TrainConfig = TrainConfig(), *, device=None, resume: bool = True, show_progress: bool = True,
          score_fn=None) -> dict:
    """Train ``model`` (a ColBERT, "default", or a checkpoint path) on ``data`` (a file, see ``data.py``, or a
    list of ``Example``). Resumes from the newest checkpoint in ``out_dir`` when ``resume``. Returns a summary with
    the final checkpoint path and the mean loss of the first and last 10% of steps."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    examples = data if isinstance(data, list) else load_examples(data)
    if len(examples) < config.batch_size:
        raise InvalidArgument(f"{len(examples)} examples are fewer than batch_size={config.batch_size}")
    ck = _latest_checkpoint(out) if resume else None
    source = str(ck) if ck else model
    if isinstance(source, str):
        model = ColBERT.from_pretrained(source, device=device, dtype="float32")
    elif model.dtype != torch.float32:
        raise InvalidArgument("train a float32 model: load it with dtype='float32'")
    params = _trainable(model, config.train_layers)
    opt = torch.optim.AdamW([p for p in params if p.requires_grad], lr=config.lr)
    warmup = config.warmup_steps if config.warmup_steps is not None else max(1, config.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (config.steps - s) / max(1, config.steps - warmup))))
    start = 0
    torch.manual_seed(config.seed)
    if ck:
        start, rng = _restore(ck, opt)
        torch.set_rng_state(rng)
        # fast-forward the schedule to the restored step (the optimizer's state came back above): torch would warn
        # that the scheduler steps before the optimizer, which is what is meant here
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
            for _ in range(start):
                sched.step()
    use_amp = model.device.type == "cuda"
    losses = []
    log = open(config.log_file, "a") if config.log_file else None
    bar = tqdm(total=config.steps, initial=start, desc="training", disable=not show_progress)
    model.train()
    t0 = time.perf_counter()
    per_epoch = len(examples) // config.batch_size
    for step in range(start, config.steps):
        opt.zero_grad(set_to_none=True)
        total = 0.0
        parts = {}
        for micro in range(config.grad_accum):
            idx = step * config.grad_accum + micro
            epoch, pos = divmod(idx, per_epoch)
            order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(config.seed + epoch))
            batch = [examples[int(i)] for i in order[pos * config.batch_size:(pos + 1) * config.batch_size]]
            with torch.autocast(device_type=model.device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss, parts = batch_loss(model, batch, config.ce_weight, config.kl_weight,
                                         config.in_batch_negatives, config.temperature, score_fn)
            (loss / config.grad_accum).backward()
            total += float(loss.detach()) / config.grad_accum
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        opt.step()
        sched.step()
        losses.append(total)
        bar.set_postfix(loss=f"{total:.4f}")
        bar.update(1)
        if log:
            log.write(json.dumps({"step": step + 1, "loss": total, **parts, "lr": sched.get_last_lr()[0]}) + "\n")
            log.flush()
        if (step + 1) % config.save_every == 0 or step + 1 == config.steps:
            model.eval()
            _save(model, opt, step + 1, out, config, torch.get_rng_state())
            model.train()
    bar.close()
    if log:
        log.close()
    model.eval()
    model.refresh_identity()
    final = _latest_checkpoint(out)
    if losses and final is not None:  # once, naming the checkpoint the user gets
        warn_missing_markers(final, model.config)
    n = max(1, len(losses) // 10)
    return {"checkpoint": str(final), "steps": config.steps, "trained_steps": len(losses),
            "seconds": round(time.perf_counter() - t0, 2),
            "seconds_per_step": round((time.perf_counter() - t0) / max(1, len(losses)), 3),
            "loss_first": sum(losses[:n]) / n if losses else None,
            "loss_last": sum(losses[-n:]) / n if losses else None, "model": model}
