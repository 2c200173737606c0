"""Load a backbone (hub id, local directory, or an offline builder), add LoRA, save and restore adapters.

An adapter directory holds the peft LoRA adapter and, when some modules are trained in full (the random
vision tower of `smolvlm_offline`), their weights in `full_modules.safetensors`.
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from agent.offline_models import build_smolvlm_offline, build_tiny, image_only_qwen2vl_processor
from envs.files import cache_dir

log = logging.getLogger(__name__)

FULL_MODULES_FILE = "full_modules.safetensors"


def cpu_supports_bf16() -> bool:
    """True on CPUs with bf16 matrix instructions (AMX or AVX512-BF16), where bf16 beats fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_supports_bf16() else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def autocast(model: torch.nn.Module):
    """bf16 autocast when the frozen weights are bf16, so fp32 trainable adapters run in bf16 too."""
    if any(p.dtype == torch.bfloat16 for p in model.parameters()):
        return torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_pretrained(path: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """Load a VLM checkpoint from a hub id or a local directory."""
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    looks_local = path.startswith((".", "/", "~")) or Path(path).exists()
    if looks_local and not Path(path).expanduser().is_dir():
        raise FileNotFoundError(f"model directory {path!r} does not exist: pass model.source=<a local model "
                                "folder or a hub id>, or use model=smolvlm_offline / model=tiny offline")
    path = str(Path(path).expanduser()) if looks_local else path
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
        processor = AutoProcessor.from_pretrained(path)
    except OSError as e:
        raise FileNotFoundError(f"could not load model {path!r} ({e}). Without internet, point model.source "
                                "at a local folder, or use model=smolvlm_offline or model=tiny") from e
    if not hasattr(processor, "image_processor"):
        # AutoProcessor returns a bare tokenizer when the real processor cannot be built: Qwen2-VL's needs
        # torchvision for its video half. Images are all we feed it, so build an image-only one.
        if model.config.model_type not in ("qwen2_vl", "qwen2_5_vl"):
            raise RuntimeError(f"could not build an image processor for {path!r}")
        processor = image_only_qwen2vl_processor(
            AutoImageProcessor.from_pretrained(path), AutoTokenizer.from_pretrained(path),
            getattr(processor, "chat_template", None),
        )
    return model, processor


def offline_model_dir(cfg: DictConfig) -> Path:
    """Where model=smolvlm_offline is converted to: `model.cache_dir`, or smolvlm_offline/ in the r3v cache."""
    return Path(cfg.cache_dir).expanduser() if cfg.cache_dir else cache_dir() / "smolvlm_offline"


def load_backbone(cfg: DictConfig) -> tuple[Any, Any]:
    """The base model and processor named by the model config, on the training device."""
    dtype = resolve_dtype(cfg.dtype)
    if cfg.source == "tiny":
        model, processor = build_tiny(**OmegaConf.to_container(cfg.tiny))
        model = model.to(dtype)
    elif cfg.source == "smolvlm_offline":
        path = build_smolvlm_offline(offline_model_dir(cfg), OmegaConf.to_container(cfg.vision), cfg.image_size,
                                     cfg.scale_factor)
        model, processor = load_pretrained(str(path), dtype)
    else:
        model, processor = load_pretrained(cfg.source, dtype)
    model.requires_grad_(False)
    return model.to(device()), processor


def full_module_names(model: torch.nn.Module, patterns: list[str]) -> list[str]:
    """Parameter names of the modules trained in full (regexes matched against parameter names)."""
    return [n for n, _ in model.named_parameters() if any(re.search(p, n) for p in patterns)]


def add_adapter(model, cfg: DictConfig, init_from: str | Path | None = None, train_full: bool = True):
    """Wrap `model` with a trainable LoRA (fresh, or loaded from `init_from`) and unfreeze the model's
    `train_modules`. Trainable weights are kept in fp32 even when the frozen base is bf16."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if init_from is not None:
        load_full_modules(model, init_from)
        peft_model = PeftModel.from_pretrained(model, str(init_from), is_trainable=True)
    else:
        lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=cfg.lora.target_modules)
        peft_model = get_peft_model(model, lora)
    if train_full:
        names = set(full_module_names(peft_model, list(cfg.train_modules)))
        for n, p in peft_model.named_parameters():
            if n in names:
                p.requires_grad_(True)
    for p in peft_model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return peft_model


def save_adapter(peft_model, out_dir: Path, train_modules: list[str]) -> None:
    """Save the LoRA adapter and the fully trained modules into out_dir."""
    peft_model.save_pretrained(str(out_dir))
    base = peft_model.get_base_model()
    names = full_module_names(base, train_modules)
    if names:
        params = dict(base.named_parameters())
        save_file({n: params[n].detach().float().cpu().contiguous() for n in names}, str(out_dir / FULL_MODULES_FILE))


def load_full_modules(model: torch.nn.Module, adapter_dir: str | Path) -> None:
    """Copy fully trained module weights (if the adapter has any) into the base model, in place."""
    path = Path(adapter_dir) / FULL_MODULES_FILE
    if not path.exists():
        return
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, w in load_file(str(path)).items():
            params[n].copy_(w.to(params[n].dtype))


def load_for_inference(cfg: DictConfig, adapter_dir: str | Path | None):
    """Base model + (optionally) an adapter, ready to generate."""
    from peft import PeftModel

    model, processor = load_backbone(cfg)
    if adapter_dir is not None:
        load_full_modules(model, adapter_dir)
        # Merged, generation runs at the base model's speed (unmerged LoRA adds 2 matmuls per layer).
        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    model.eval()
    return model, processor
