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

from agent.offline_models import build_smolvlm_offline, build_tiny
from envs.files import cache_dir

log = logging.getLogger(__name__)

FULL_MODULES_FILE = "full_modules.safetensors"
BASE_MODEL_FILE = "base_model.json"  # the signature of the base model an adapter was trained on


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


# LoRA targets per family: the attention and MLP projections of the language model's decoder layers, never the
# vision tower's or the projector's (Qwen2.5-VL's vision blocks also have gate/up/down_proj, LLaVA's CLIP tower
# q/k/v_proj). Regexes over module names (peft full-matches a string `target_modules`), checked against each
# family's real module names by tests/test_backbones.py. `model.lora.target_modules: auto` picks one by model type.
LM_PROJECTIONS = r"\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"
LORA_TARGETS = {
    "qwen2_vl": r"(.*\.)?language_model" + LM_PROJECTIONS,
    "qwen2_5_vl": r"(.*\.)?language_model" + LM_PROJECTIONS,
    "llava": r"(.*\.)?language_model" + LM_PROJECTIONS,
    "llava_next": r"(.*\.)?language_model" + LM_PROJECTIONS,
    "idefics3": r"(.*\.)?text_model" + LM_PROJECTIONS,  # SmolVLM-256M/500M/2.2B-Instruct are Idefics3
    "smolvlm": r"(.*\.)?text_model" + LM_PROJECTIONS,  # SmolVLM2
}
# What an image processor takes when it has a pixel budget per image (model.min_pixels / model.max_pixels):
# the Qwen2-VL family's.
PIXEL_BUDGET_KWARGS = {"min_pixels", "max_pixels"}


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"  # transformers' messages span lines


def _architecture(config) -> str:
    return ", ".join(getattr(config, "architectures", None) or []) or type(config).__name__


def lora_targets(model, target_modules: str | list[str]) -> str | list[str]:
    """`model.lora.target_modules`, with `auto` resolved: the preset of the model's family (LORA_TARGETS), else the
    same projections under the module the model names as its language model (`get_decoder()`)."""
    if target_modules != "auto":
        return target_modules if isinstance(target_modules, str) else list(target_modules)
    model_type = getattr(model.config, "model_type", None)
    if model_type in LORA_TARGETS:
        return LORA_TARGETS[model_type]
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    prefix = next((n for n, m in model.named_modules() if m is decoder and n), None)
    if prefix is not None:
        pattern = re.escape(prefix) + LM_PROJECTIONS
        if any(re.fullmatch(pattern, n) for n, _ in model.named_modules()):
            log.info("LoRA on %s (%s has no preset: the projections of its language model)", pattern, model_type)
            return pattern
    raise ValueError(f"model.lora.target_modules=auto has no LoRA preset for {_architecture(model.config)} "
                     f"(model type {model_type!r}; presets: {', '.join(sorted(LORA_TARGETS))}) and found no "
                     "q/k/v/o/gate/up/down_proj layers under its language model: set model.lora.target_modules to "
                     "a regex over the language model's module names")


def set_pixel_budget(processor, min_pixels: int | None, max_pixels: int | None, architecture: str = "") -> None:
    """Cap the pixels of each image (Qwen2-VL family: `min_pixels` <= height x width <= `max_pixels` after
    resizing; one image token per 28x28 pixels). None keeps the checkpoint's value."""
    import dataclasses

    if min_pixels is None and max_pixels is None:
        return
    image_processor = processor.image_processor
    accepted = set(getattr(getattr(image_processor, "valid_kwargs", None), "__annotations__", {}))
    if not PIXEL_BUDGET_KWARGS <= accepted:
        raise ValueError(f"model.min_pixels / model.max_pixels set, but the image processor of "
                         f"{architecture or 'this model'} ({type(image_processor).__name__}) takes no pixel budget "
                         "(Qwen2-VL-family processors do): leave them null")
    size = image_processor.size
    new = {"shortest_edge": size["shortest_edge"] if min_pixels is None else int(min_pixels),
           "longest_edge": size["longest_edge"] if max_pixels is None else int(max_pixels)}
    if not 0 < new["shortest_edge"] <= new["longest_edge"]:
        raise ValueError(f"model.min_pixels={new['shortest_edge']} / model.max_pixels={new['longest_edge']}: need "
                         "0 < min_pixels <= max_pixels")
    image_processor.size = dataclasses.replace(size, **new) if dataclasses.is_dataclass(size) else {**size, **new}
    for key, value in (("min_pixels", new["shortest_edge"]), ("max_pixels", new["longest_edge"])):
        if getattr(image_processor, key, None) is not None:  # processors that keep them as attributes too
            setattr(image_processor, key, value)


def _processor_class(config):
    import transformers
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    name = PROCESSOR_MAPPING_NAMES.get(config.model_type)
    return getattr(transformers, name, None) if isinstance(name, str) else None


def load_processor(path: str, config) -> Any:
    """The checkpoint's processor (image processor + tokenizer + chat template).

    `AutoProcessor` first. Processors that own a video processor (Qwen2-VL, Qwen2.5-VL, SmolVLM2) cannot be built
    without torchvision: AutoProcessor then raises, or returns a bare tokenizer. Images are all this project feeds
    a model, so such a processor is built again without its video half (`image_only_processor`), from the
    checkpoint's own image processor (the PIL one when torchvision is missing), tokenizer, settings and chat
    template."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    from agent.offline_models import image_only_processor

    architecture = _architecture(config)
    try:
        processor = AutoProcessor.from_pretrained(path)
        failure: Exception | None = None
    except Exception as e:  # noqa: BLE001 - the image-only processor below may still work; its failure says why
        processor, failure = None, e
    if processor is not None and hasattr(processor, "image_processor") and hasattr(processor, "tokenizer"):
        return processor
    processor_class = _processor_class(config)
    if processor_class is None or "video_processor" not in processor_class.get_attributes():
        why = f"AutoProcessor failed: {_why(failure)}" if failure else \
            f"AutoProcessor returned a {type(processor).__name__}, not an image + text processor"
        raise RuntimeError(f"could not build the processor of {path!r} ({architecture}): {why}") from failure
    try:
        settings, _ = processor_class.get_processor_dict(path)
        image_processor = AutoImageProcessor.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        return image_only_processor(processor_class, image_processor, tokenizer, settings.pop("chat_template", None),
                                    settings)
    except Exception as e:
        raise RuntimeError(f"could not build the processor of {path!r} ({architecture}, {processor_class.__name__}), "
                           f"nor an image-only one: {_why(e)}"
                           + (f" (AutoProcessor: {_why(failure)})" if failure else "")) from e


def check_chat_template(processor, path: str, architecture: str) -> None:
    """The project's prompts are multimodal chat messages rendered by the checkpoint's own chat template: make sure
    it has one (the processor's, else the tokenizer's), and that it renders an image part as the processor's image
    placeholder and keeps the text."""
    if not getattr(processor, "chat_template", None):
        processor.chat_template = getattr(processor.tokenizer, "chat_template", None)
    if not processor.chat_template:
        raise ValueError(f"{path!r} ({architecture}) has no chat template (chat_template.jinja / chat_template.json "
                         "/ tokenizer_config.json): an instruction-tuned checkpoint ships one")
    probe = [{"role": "user", "content": [{"type": "image", "path": "probe.png"}, {"type": "text", "text": "PROBE"}]}]
    text = processor.apply_chat_template(probe, add_generation_prompt=True)
    image_token = getattr(processor, "image_token", None)
    if "PROBE" not in text or (image_token and image_token not in text):
        raise ValueError(f"the chat template of {path!r} ({architecture}) renders a user message with an image and "
                         f"text as {text!r}: the image placeholder {image_token!r} or the text is missing")


def load_pretrained(path: str, dtype: torch.dtype, min_pixels: int | None = None,
                    max_pixels: int | None = None) -> tuple[Any, Any]:
    """Load a VLM checkpoint (model, processor) from a hub id or a local directory: any architecture that
    AutoModelForImageTextToText covers, with or without torchvision. `min_pixels` / `max_pixels` cap the image
    size of Qwen2-VL-family processors (None: the checkpoint's)."""
    from transformers import AutoConfig, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    looks_local = path.startswith((".", "/", "~")) or Path(path).exists()
    if looks_local and not Path(path).expanduser().is_dir():
        raise FileNotFoundError(f"model directory {path!r} does not exist: pass model.source=<a local model "
                                "folder or a hub id>, or use model=smolvlm_offline / model=tiny offline")
    path = str(Path(path).expanduser()) if looks_local else path
    try:
        config = AutoConfig.from_pretrained(path)
    except OSError as e:
        raise FileNotFoundError(f"could not load model {path!r} ({e}). Without internet, point model.source "
                                "at a local folder, or use model=smolvlm_offline or model=tiny") from e
    except ValueError as e:  # a model type this transformers does not know
        raise ValueError(f"{path!r} is not a checkpoint this transformers can load: {e}") from e
    architecture = _architecture(config)
    if config.model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise ValueError(f"{path!r} is a {architecture} checkpoint (model type {config.model_type!r}), which is not an "
                         "image-text-to-text model that AutoModelForImageTextToText loads: use a VLM such as "
                         "Qwen2-VL, Qwen2.5-VL, LLaVA, LLaVA-NeXT or Idefics3/SmolVLM")
    processor = load_processor(path, config)  # before the weights: it fails fast
    set_pixel_budget(processor, min_pixels, max_pixels, architecture)
    check_chat_template(processor, path, architecture)
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
    except OSError as e:
        raise FileNotFoundError(f"could not load the weights of {path!r} ({architecture}): {e}") from e
    return model, processor


def end_of_turn_token_id(processor) -> int | None:
    """The token that ends an assistant turn in the checkpoint's chat template: the first special token after
    the assistant's text (Qwen's <|im_end|>, SmolVLM's <end_of_utterance>), else the tokenizer's eos token
    (LLaVA-1.5's </s>: its template ends a turn with text only)."""
    tokenizer = processor.tokenizer
    marker = "R3V_END_OF_TURN_PROBE"
    turns = [{"role": "user", "content": [{"type": "text", "text": "q"}]},
             {"role": "assistant", "content": [{"type": "text", "text": marker}]}]
    text = processor.apply_chat_template(turns)
    special = set(tokenizer.all_special_ids)
    after = tokenizer(text[text.rindex(marker) + len(marker):], add_special_tokens=False)["input_ids"]
    return next((t for t in after if t in special), tokenizer.eos_token_id)


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
        model, processor = load_pretrained(cfg.source, dtype, cfg.get("min_pixels"), cfg.get("max_pixels"))
    model.requires_grad_(False)
    return model.to(device()), processor


def full_module_names(model: torch.nn.Module, patterns: list[str]) -> list[str]:
    """Parameter names of the modules trained in full (regexes matched against parameter names)."""
    return [n for n, _ in model.named_parameters() if any(re.search(p, n) for p in patterns)]


def add_adapter(model, cfg: DictConfig, init_from: str | Path | None = None, train_full: bool = True):
    """Wrap `model` with a trainable LoRA (fresh, or loaded from `init_from`) and unfreeze the model's
    `train_modules`. Trainable weights are kept in fp32 even when the frozen base is bf16. The LoRA goes on
    `cfg.lora.target_modules` (`auto`: the family's preset, LORA_TARGETS), with gradient checkpointing when
    `cfg.gradient_checkpointing`."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if cfg.get("gradient_checkpointing", False):
        # Activations are recomputed in the backward pass instead of stored: a 2-3B model's LoRA step then
        # needs ~1/10 of the memory (see conf/model/*.yaml) for ~30% more time. Only the trained copy has it.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if init_from is not None:
        check_adapter_base(model, init_from)
        load_full_modules(model, init_from)
        peft_model = PeftModel.from_pretrained(model, str(init_from), is_trainable=True)
    else:
        lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=lora_targets(model, cfg.lora.target_modules))
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


def base_signature(model: torch.nn.Module) -> dict[str, Any]:
    """What identifies a base model for its adapters: its type and the name and shape of every base weight (a
    digest), so an adapter cannot be put on another checkpoint's weights, whatever dtype or path either has."""
    import hashlib

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    shapes = sorted((n.replace("base_layer.", ""), tuple(p.shape)) for n, p in base.named_parameters()
                    if "lora_" not in n)
    return {"model_type": getattr(base.config, "model_type", type(base).__name__),
            "name_or_path": str(getattr(base.config, "_name_or_path", "") or ""),
            "parameters": sum(int(torch.Size(s).numel()) for _, s in shapes),
            "weights_digest": hashlib.sha1(repr(shapes).encode()).hexdigest()[:16]}


def check_adapter_base(model: torch.nn.Module, adapter_dir: str | Path) -> None:
    """Refuse an adapter trained on another base model (its `base_model.json` disagrees with `model`), with a
    message naming both; an adapter saved before base_model.json existed is accepted as it is."""
    import json

    file = Path(adapter_dir) / BASE_MODEL_FILE
    if not file.exists():
        log.warning("%s has no %s: cannot check that it belongs to this base model", adapter_dir, BASE_MODEL_FILE)
        return
    try:
        saved = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: unreadable ({e}); the adapter folder is corrupt") from e
    here = base_signature(model)
    if (saved.get("model_type"), saved.get("weights_digest")) != (here["model_type"], here["weights_digest"]):
        raise ValueError(f"adapter {adapter_dir} was trained on another base model: {saved.get('model_type')} "
                         f"{saved.get('name_or_path')!r} with {saved.get('parameters')} parameters, but this run's "
                         f"model is {here['model_type']} {here['name_or_path']!r} with {here['parameters']}: pass the "
                         "model=... it was trained with, or an adapter of this model")


def save_adapter(peft_model, out_dir: Path, train_modules: list[str]) -> None:
    """Save the LoRA adapter, the fully trained modules and the base model's signature (base_model.json) into
    out_dir."""
    import json

    peft_model.save_pretrained(str(out_dir))
    (Path(out_dir) / BASE_MODEL_FILE).write_text(json.dumps(base_signature(peft_model), indent=1) + "\n")
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
        check_adapter_base(model, adapter_dir)
        load_full_modules(model, adapter_dir)
        # Merged, generation runs at the base model's speed (unmerged LoRA adds 2 matmuls per layer).
        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    model.eval()
    return model, processor
