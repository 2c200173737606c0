"""Real VLM families load from hub-format folders without torchvision, generate, train, and run the loop.

Tiny random checkpoints of each family (Qwen2-VL, Qwen2.5-VL, LLaVA-1.5, LLaVA-NeXT, Idefics3 = SmolVLM) are built
from configs and saved in the layout the hub serves them in: `model.save_pretrained`, the processor's files
(`processor.save_pretrained`, or for Qwen, whose processor cannot be built without torchvision, the hub's own
`preprocessor_config.json` + `chat_template.json`), the family's real chat template, and a tiny byte-level BPE
vocabulary trained with `tokenizers` (as `build_tiny` does). Each test model is hidden size 32-64, 1-2 layers and a
vocabulary under 1,000 tokens, so a whole self-training run on one takes seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# --------------------------------------------------------------------------------- the families' chat templates
# Verbatim from the checkpoints (chat_template.json of Qwen/Qwen2-VL-2B-Instruct = Qwen2.5-VL's,
# llava-hf/llava-1.5-7b-hf = llava-v1.6-vicuna, HuggingFaceTB/SmolVLM-256M-Instruct).
QWEN_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == "
    "'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}{% for content in "
    "message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{% generation %}"
    "{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "{{ 'ASSISTANT:' }}{% endif %}"
)
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'][0]['type'] == "
    "'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}"
    "{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "llava", "llava_next", "idefics3")
IMAGE_PLACEHOLDER = {"qwen2_vl": "<|image_pad|>", "qwen2_5_vl": "<|image_pad|>", "llava": "<image>",
                     "llava_next": "<image>", "idefics3": "<image>"}
END_OF_TURN = {"qwen2_vl": "<|im_end|>", "qwen2_5_vl": "<|im_end|>", "llava": "</s>", "llava_next": "</s>",
               "idefics3": "<end_of_utterance>"}
# Each preset in conf/model/ that loads a hub checkpoint, and its family (a new preset must be added here).
PRESET_FAMILY = {"qwen2_vl_2b": "qwen2_vl", "qwen2_vl_7b": "qwen2_vl", "qwen2_5_vl_3b": "qwen2_5_vl",
                 "qwen2_5_vl_7b": "qwen2_5_vl", "llava_1_5_7b": "llava", "smolvlm_256m": "idefics3",
                 "smolvlm_500m": "idefics3"}
BUILDERS_SOURCES = ("tiny", "smolvlm_offline")  # model.source values built by code, not loaded from a folder


# ----------------------------------------------------------------------------------------- tiny checkpoints


def _tokenizer(special: list[str], *, eos: str, pad: str, bos: str | None = None, unk: str | None = None,
               vocab_size: int = 480):
    """A byte-level BPE tokenizer trained on the project's prompt words (build_tiny's approach), `special` kept
    whole; `bos` is prepended to every encoded text, as Llama tokenizers do."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from agent.offline_models import _tiny_corpus

    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_tiny_corpus(), trainer=trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=pad, bos_token=bos,
                                        unk_token=unk)
    named = {eos, pad, bos, unk}
    tokenizer.add_special_tokens({"additional_special_tokens": [t for t in special if t not in named]})
    assert len(tokenizer) <= 1000
    return tokenizer


def _llama_text_config(tokenizer, hidden: int = 64) -> dict:
    return dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)


def _save_model(model, tokenizer, out: Path) -> None:
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)


def _qwen_text_config(tokenizer, ids: dict[str, int], hidden: int = 64, heads: int = 4) -> dict:
    head_dim = hidden // heads
    return dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                num_attention_heads=heads, num_key_value_heads=heads // 2, max_position_embeddings=4096,
                tie_word_embeddings=True, bos_token_id=None, eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"],
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                 "mrope_section": [head_dim // 8, head_dim // 8 * 3 // 2, head_dim // 8 * 3 // 2]})


QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                "<|video_pad|>"]


def _save_qwen(model, tokenizer, out: Path, processor_class: str, layout: str) -> None:
    """A Qwen2-VL-family folder. `hub`: the files the hub serves (preprocessor_config.json naming the torchvision
    image processor and the processor class, min/max pixels, chat_template.json). `v5`: what
    `Qwen2VLProcessor.save_pretrained` writes in transformers 5 where torchvision exists (processor_config.json
    holding the image and the video processor, chat_template.jinja)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    _save_model(model, tokenizer, out)
    tokenizer.save_pretrained(out)
    image = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=2 * 56 * 56).to_dict()
    image.update(image_processor_type="Qwen2VLImageProcessor", min_pixels=56 * 56, max_pixels=2 * 56 * 56)
    if layout == "hub":
        (out / "preprocessor_config.json").write_text(json.dumps({**image, "processor_class": processor_class}))
        (out / "chat_template.json").write_text(json.dumps({"chat_template": QWEN_TEMPLATE}))
    else:
        video = {"video_processor_type": "Qwen2VLVideoProcessor", "size": dict(image["size"]), "patch_size": 14,
                 "temporal_patch_size": 2, "merge_size": 2, "min_frames": 4, "max_frames": 768, "fps": 2.0,
                 "do_sample_frames": False, "image_mean": image["image_mean"], "image_std": image["image_std"]}
        (out / "processor_config.json").write_text(json.dumps(
            {"image_processor": image, "video_processor": video, "processor_class": processor_class}))
        (out / "chat_template.jinja").write_text(QWEN_TEMPLATE)


def build_qwen2_vl(out: Path, layout: str = "hub") -> Path:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tokenizer = _tokenizer(QWEN_SPECIAL, eos="<|im_end|>", pad="<|endoftext|>")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    config = Qwen2VLConfig(
        text_config=_qwen_text_config(tokenizer, ids),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True)
    torch.manual_seed(0)
    _save_qwen(Qwen2VLForConditionalGeneration(config), tokenizer, out, "Qwen2VLProcessor", layout)
    return out


def build_qwen2_5_vl(out: Path, layout: str = "v5") -> Path:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = _tokenizer(QWEN_SPECIAL, eos="<|im_end|>", pad="<|endoftext|>")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    config = Qwen2_5_VLConfig(
        text_config=_qwen_text_config(tokenizer, ids),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True)
    torch.manual_seed(0)
    _save_qwen(Qwen2_5_VLForConditionalGeneration(config), tokenizer, out, "Qwen2_5_VLProcessor", layout)
    return out


LLAMA_SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
CLIP_TINY = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=2, image_size=28, patch_size=14, projection_dim=32)


def build_llava(out: Path) -> Path:
    """llava-hf/llava-1.5-7b-hf in miniature: CLIP tower (28x28 -> 4 image tokens), Llama LM, LlavaProcessor."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = _tokenizer(LLAMA_SPECIAL, eos="</s>", pad="<pad>", bos="<s>", unk="<unk>")
    config = LlavaConfig(vision_config=CLIP_TINY, text_config=_llama_text_config(tokenizer),
                         image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
                         vision_feature_select_strategy="default", projector_hidden_act="gelu")
    torch.manual_seed(0)
    _save_model(LlavaForConditionalGeneration(config), tokenizer, out)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    LlavaProcessor(image_processor, tokenizer, patch_size=14, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1, image_token="<image>",
                   chat_template=LLAVA_TEMPLATE).save_pretrained(out)
    return out


def build_llava_next(out: Path) -> Path:
    """llava-hf/llava-v1.6-vicuna-7b-hf in miniature: any-resolution tiles of 28x28 over a CLIP tower."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tokenizer = _tokenizer(LLAMA_SPECIAL, eos="</s>", pad="<pad>", bos="<s>", unk="<unk>")
    pinpoints = [[28, 56], [56, 28], [56, 56]]
    config = LlavaNextConfig(vision_config=CLIP_TINY, text_config=_llama_text_config(tokenizer),
                             image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
                             vision_feature_select_strategy="default", image_grid_pinpoints=pinpoints)
    torch.manual_seed(0)
    _save_model(LlavaNextForConditionalGeneration(config), tokenizer, out)
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                                 image_grid_pinpoints=pinpoints)
    LlavaNextProcessor(image_processor, tokenizer, patch_size=14, vision_feature_select_strategy="default",
                       num_additional_image_tokens=1, image_token="<image>",
                       chat_template=LLAVA_TEMPLATE).save_pretrained(out)
    return out


def build_idefics3(out: Path) -> Path:
    """HuggingFaceTB/SmolVLM-256M-Instruct in miniature: Idefics3 with image splitting (64 px images cut into
    32 px tiles + a global view, 4 tokens each), SmolLM2's special tokens (eos <end_of_utterance>, pad <|im_end|>)."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<fake_token_around_image>", "<image>",
               "<end_of_utterance>", "<global-img>"]
    tokenizer = _tokenizer(special, eos="<end_of_utterance>", pad="<|im_end|>", bos="<|im_start|>",
                           unk="<|endoftext|>")
    config = Idefics3Config(text_config=_llama_text_config(tokenizer),
                            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                               num_attention_heads=2, patch_size=8, image_size=32),
                            scale_factor=2, image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    _save_model(Idefics3ForConditionalGeneration(config), tokenizer, out)
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": 64}, max_image_size={"longest_edge": 32},
                                                do_image_splitting=True)
    Idefics3Processor(image_processor, tokenizer, image_seq_len=4, chat_template=SMOLVLM_TEMPLATE).save_pretrained(out)
    return out


BUILDERS = {"qwen2_vl": build_qwen2_vl, "qwen2_5_vl": build_qwen2_5_vl, "llava": build_llava,
            "llava_next": build_llava_next, "idefics3": build_idefics3}


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(autouse=True)
def no_torchvision(monkeypatch):
    """These tests mean "without torchvision": where it is installed, it is hidden (transformers caches the check)."""
    from transformers.utils import import_utils

    hidden = importlib.util.find_spec("torchvision") is not None
    if hidden:
        monkeypatch.setitem(sys.modules, "torchvision", None)  # find_spec() -> None, import -> ImportError
        import_utils.is_torchvision_available.cache_clear()
    assert importlib.util.find_spec("torchvision") is None and not import_utils.is_torchvision_available()
    yield
    if hidden:
        monkeypatch.undo()
        import_utils.is_torchvision_available.cache_clear()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {family: build(root / family) for family, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def table_dir(tmp_path_factory) -> Path:
    from envs.synthetic import build_dataset

    return build_dataset("synth_table", tmp_path_factory.mktemp("table"), n_train=4, n_test=2, seed=0)


def _load(path: Path, **kwargs):
    from agent.models import load_pretrained

    return load_pretrained(str(path), torch.float32, **kwargs)


def _messages(image: Path, text: str = "How many rows? Answer: <n>") -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "path": str(image)}, {"type": "text", "text": text}]}]


def _lora_names(model, pattern: str) -> list[str]:
    import re

    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and re.fullmatch(pattern, n)]


def _decoder_prefix(model) -> str:
    """The name of the model's language model (found from `get_decoder()`, not from names)."""
    decoder = model.get_decoder()
    return next(n for n, m in model.named_modules() if m is decoder)


def _language_projections(model) -> list[str]:
    """The modules LoRA belongs on: the language model's attention + MLP projections."""
    prefix = _decoder_prefix(model)
    wanted = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    return [n for n, _ in model.named_modules() if n.startswith(prefix + ".") and n.split(".")[-1] in wanted]


def _vision_and_projector(model) -> list[str]:
    """Every other linear layer but the output head: the vision tower's and the projector's."""
    prefix = _decoder_prefix(model)
    return [n for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and not n.startswith(prefix + ".") and n != "lm_head"]


# ------------------------------------------------------------------------------------------------ the tests


def test_these_tests_run_without_torchvision():
    from transformers.utils import is_torchvision_available

    assert importlib.util.find_spec("torchvision") is None and not is_torchvision_available()
    with pytest.raises(ImportError):
        import torchvision  # noqa: F401


def test_model_tiny_keeps_its_image_only_qwen2_vl_processor(table_dir):
    """build_tiny (model=tiny) builds its processor the same way: Qwen2VLProcessor's own __init__, no video half."""
    import pickle

    from PIL import Image

    from agent.offline_models import build_tiny
    from envs.qa import read_items

    _, processor = build_tiny()
    assert type(processor).__name__ == "ImageOnlyQwen2VLProcessor" and not hasattr(processor, "video_processor")
    assert processor.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    text = processor.apply_chat_template(_messages(Path("x.png")), add_generation_prompt=True)
    image = Image.open(table_dir / read_items(table_dir / "train.jsonl")[0].image).convert("RGB")
    enc = processor(text=[text], images=[[image]], return_tensors="pt")
    assert int((enc["input_ids"] == processor.image_token_id).sum()) == 2  # resized to 28 x 56 px: 2 tokens
    assert enc["mm_token_type_ids"].sum() == 2
    assert type(pickle.loads(pickle.dumps(processor))) is type(processor)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_loads_renders_its_template_generates_and_trains(family, checkpoints, table_dir):
    """A hub-format folder loads (Qwen: an image-only processor from the checkpoint's own files); the checkpoint's
    chat template renders the project's multimodal messages; both generation engines complete them alike; and a
    LoRA step on the language model trains (gradient checkpointing on)."""
    from agent.models import add_adapter, end_of_turn_token_id
    from envs.qa import read_items
    from helpers import make_policy
    from reflection.examples import Sample
    from reflection.train import collate, target_loss

    model, processor = _load(checkpoints[family])
    model.eval()
    assert model.config.model_type == family
    assert hasattr(processor, "image_processor") and hasattr(processor, "tokenizer")
    assert type(processor.image_processor).__name__.endswith("Pil")  # no torchvision: the PIL image processor
    if family.startswith("qwen"):
        assert type(processor).__name__ == {"qwen2_vl": "ImageOnlyQwen2VLProcessor",
                                            "qwen2_5_vl": "ImageOnlyQwen2_5_VLProcessor"}[family]
        assert not hasattr(processor, "video_processor")
    image = table_dir / read_items(table_dir / "train.jsonl")[0].image
    messages = _messages(image)
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    expected = {"qwen2_vl": "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>How many rows?",
                "qwen2_5_vl": "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>How many rows?",
                "llava": "USER: <image>\nHow many rows? Answer: <n> ASSISTANT:",
                "llava_next": "USER: <image>\nHow many rows? Answer: <n> ASSISTANT:",
                "idefics3": "<|im_start|>User:<image>How many rows? Answer: <n><end_of_utterance>\nAssistant:"}[family]
    assert expected in text
    assert processor.tokenizer.convert_ids_to_tokens(end_of_turn_token_id(processor)) == END_OF_TURN[family]

    prompts = [messages, _messages(image, "Which is larger?")]
    fast = make_policy(model, processor, engine="fast").generate(prompts, n=1, greedy=True)
    assert make_policy(model, processor, engine="hf").generate(prompts, n=1, greedy=True) == fast
    sampled = make_policy(model, processor).generate(prompts, n=[2, 1])
    assert [len(s) for s in sampled] == [2, 1]

    cfg = OmegaConf.load(CONF / "model" / "hub.yaml")
    cfg.gradient_checkpointing = True
    peft_model = add_adapter(model, cfg)
    assert peft_model.get_base_model().is_gradient_checkpointing
    peft_model.train()
    collated = collate(processor, [Sample(messages, "There are 3 rows. Answer: 3", "sft"),
                                   Sample(prompts[1], "Answer: 7", "qa")], max_length=512)
    assert collated.kept == [0, 1] and collated.truncated == []
    loss = target_loss(peft_model, collated.batch)
    loss.backward()
    grads = {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
    assert grads and all("lora_" in n for n in grads)
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "lora_A" in n or "lora_B" in n)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_presets_target_the_language_model_only(family, checkpoints):
    """`auto` (the family's LORA_TARGETS) and every preset in conf/model/ of the family: exactly the language
    model's attention + MLP projections, none of the vision tower's or the projector's."""
    from agent.models import LORA_TARGETS, lora_targets

    model, _ = _load(checkpoints[family])
    wanted = _language_projections(model)
    assert len(wanted) == 7 * model.config.get_text_config().num_hidden_layers
    patterns = {"auto": lora_targets(model, "auto")}
    patterns |= {name: OmegaConf.load(CONF / "model" / f"{name}.yaml").lora.target_modules
                 for name, fam in PRESET_FAMILY.items() if fam == family}
    assert patterns["auto"] == LORA_TARGETS[family]
    vision = _vision_and_projector(model)
    assert vision  # the tiny model has a vision tower and a projector to stay clear of
    for name, pattern in patterns.items():
        matched = _lora_names(model, pattern)
        assert sorted(matched) == sorted(wanted), name
        assert not set(matched) & set(vision), name
    # the broad regex hub.yaml used to have would be right here too, but a preset must not match the vision tower:
    # Qwen2.5-VL's vision blocks have gate/up/down_proj, LLaVA's CLIP tower q/k/v_proj
    broad = r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    if family in ("qwen2_5_vl", "llava", "llava_next", "idefics3"):
        assert set(_lora_names(model, broad)) & set(vision)


def test_every_preset_has_a_family_and_the_keys_of_hub():
    """Each preset in conf/model/ that loads a checkpoint carries every key model=hub has (other code reads them
    from cfg.model), a hub id as its source, bf16, and its family's regex."""
    hub = OmegaConf.load(CONF / "model" / "hub.yaml")
    presets = {p.stem: OmegaConf.load(p) for p in sorted((CONF / "model").glob("*.yaml"))}
    loading = {n for n, c in presets.items() if n != "hub" and c.source not in BUILDERS_SOURCES}
    assert loading == set(PRESET_FAMILY)
    for name in loading:
        cfg = presets[name]
        assert set(hub) <= set(cfg) and set(hub.lora) <= set(cfg.lora), name
        assert cfg.name == name and "/" in cfg.source and cfg.dtype == "bf16" and cfg.text_context is False, name
        assert cfg.lora.target_modules != "auto", name  # spelled out, so a user sees what LoRA trains
    for name in ("tiny", "smolvlm_offline"):
        assert "gradient_checkpointing" in presets[name]


@pytest.mark.parametrize("layout", ["hub", "v5"])
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_pixel_budget_comes_from_the_config(family, layout, tmp_path, table_dir):
    """model.min_pixels / max_pixels cap the image size (null keeps the checkpoint's), in both folder layouts."""
    from envs.qa import read_items
    from PIL import Image

    path = BUILDERS[family](tmp_path / family, layout=layout)
    image = Image.open(table_dir / read_items(table_dir / "train.jsonl")[0].image).convert("RGB")  # 240 x 124

    def image_tokens(**budget) -> int:
        _, processor = _load(path, **budget)
        return int(processor.image_processor(images=[image], return_tensors="pt")["image_grid_thw"].prod()) // 4

    # one image token per 28 x 28 pixels after the resize
    assert image_tokens() == 6  # the checkpoint's max_pixels = 2 x 56 x 56: 56 x 84 px
    assert image_tokens(max_pixels=56 * 56) == 2  # 28 x 56 px
    assert image_tokens(max_pixels=28 * 28 * 64) == 36  # 112 x 252 px: the image's own size, rounded to 28
    assert image_tokens(min_pixels=28 * 28 * 100, max_pixels=28 * 28 * 200) == 112  # upscaled to 224 x 392 px
    with pytest.raises(ValueError, match="min_pixels"):
        _load(path, min_pixels=28 * 28 * 80, max_pixels=28 * 28 * 64)


def test_a_pixel_budget_on_a_family_without_one_is_an_error(checkpoints):
    with pytest.raises(ValueError, match=r"LlavaForConditionalGeneration.*CLIPImageProcessorPil.*no pixel budget"):
        _load(checkpoints["llava"], max_pixels=28 * 28 * 64)


def test_without_the_image_only_processor_qwen_cannot_load(checkpoints, monkeypatch):
    """The fallback is what makes Qwen load here: without it the error names the architecture and the cause."""
    def refuse(*args, **kwargs):
        raise ImportError("no image-only processor")

    monkeypatch.setattr("agent.offline_models.image_only_processor", refuse)
    for family in ("qwen2_vl", "qwen2_5_vl"):
        with pytest.raises(RuntimeError, match=r"ForConditionalGeneration.*(Torchvision|torchvision)"):
            _load(checkpoints[family])


def test_unsupported_architectures_are_named(tmp_path, checkpoints, monkeypatch):
    """A checkpoint that is not an image-text-to-text model, a family with no LoRA preset, and a checkpoint without
    a chat template each fail with an error naming the architecture."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from agent.models import lora_targets

    text_only = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(**{k: v for k, v in _llama_text_config(_tokenizer(LLAMA_SPECIAL, eos="</s>",
                     pad="<pad>")).items() if k != "model_type"})).save_pretrained(text_only)
    with pytest.raises(ValueError, match=r"LlamaForCausalLM.*not an image-text-to-text model"):
        _load(text_only)

    model, _ = _load(checkpoints["llava"])
    monkeypatch.setattr(model.config, "model_type", "some_new_vlm")  # a family with no preset: its language model's
    assert sorted(_lora_names(model, lora_targets(model, "auto"))) == sorted(_language_projections(model))
    monkeypatch.setattr(model, "get_decoder", lambda: model.model.vision_tower)  # ... when it has such projections
    with pytest.raises(ValueError, match=r"no LoRA preset for LlavaForConditionalGeneration"):
        lora_targets(model, "auto")
    assert lora_targets(model, r".*q_proj") == r".*q_proj"

    no_template = tmp_path / "no_template"
    build_llava(no_template)
    for f in ("chat_template.jinja", "chat_template.json"):
        (no_template / f).unlink(missing_ok=True)
    config = json.loads((no_template / "processor_config.json").read_text())
    config.pop("chat_template", None)
    (no_template / "processor_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"LlavaForConditionalGeneration.*no chat template"):
        _load(no_template)


def _run(source: Path, run_dir: Path, tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    """experiments/run.py in a fresh process, with torchvision hidden (a no-op where it is not installed)."""
    hide = ("import runpy, sys; sys.modules['torchvision'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    args = ["experiments/run.py", "env=synth_table", "model=hub", f"model.source={source}", "iterations=1",
            "env.n_train=8", "env.n_test=4", "env.max_new_tokens=8", "eval.ns=[1,2]", "sample.n=2",
            "train.batch_size=4", "warmup.teacher_examples=4", "eval.select_max_new_tokens=4", "model.dtype=fp32",
            f"run_dir={run_dir}", *overrides]
    env = {k: v for k, v in os.environ.items() if k != "R3V_CACHE"}
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-c", hide, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_self_training_run_on_each_family(family, checkpoints, tmp_path):
    """`python experiments/run.py env=synth_table model=hub model.source=DIR iterations=1` exits 0 and writes test@1
    for iterations 0 and 1."""
    run_dir = tmp_path / "run"
    out = _run(checkpoints[family], run_dir, tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {r["iteration"] for r in rows if r["metric"] == "test@1"} == {0, 1}
    assert (run_dir / "iter_1" / "adapter" / "adapter_config.json").exists()


@pytest.mark.parametrize("family", FAMILIES)
def test_fsdp_makes_each_decoder_layer_a_unit_with_lora_on(family, checkpoints):
    """Under an FSDP config file train.py picks the wrap classes from the model: every decoder layer of the
    language model becomes a unit. FSDP2's policy is built by accelerate's own code from the class names set;
    FSDP1's also makes each LoRA A/B layer a unit, so no unit mixes frozen and trained weights."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    from agent.models import add_adapter
    from reflection.train import configure_backend

    model, _ = _load(checkpoints[family])
    layers = list(model.get_decoder().layers)
    peft_model = add_adapter(model, OmegaConf.load(CONF / "model" / "hub.yaml"))

    def configured(version: int) -> FullyShardedDataParallelPlugin:
        plugin = FullyShardedDataParallelPlugin(fsdp_version=version, auto_wrap_policy="transformer_based_wrap")
        accelerator = SimpleNamespace(distributed_type=DistributedType.FSDP, state=SimpleNamespace(fsdp_plugin=plugin))
        configure_backend(accelerator, peft_model, None)
        return plugin

    two = configured(2)
    assert type(layers[0]).__name__ in two.transformer_cls_names_to_wrap
    policy = fsdp2_prepare_auto_wrap_policy(two, peft_model)
    units = [m for m in peft_model.modules() if policy(m)]
    assert all(any(layer is u for u in units) for layer in layers)
    assert not any(policy(m) for m in peft_model.modules() if isinstance(m, torch.nn.Linear))  # layers, not leaves

    one = configured(1).auto_wrap_policy
    units = [m for m in peft_model.modules() if one(module=m, recurse=False, nonwrapped_numel=0)]
    assert all(any(layer is u for u in units) for layer in layers)
    leaves = [m for n, m in peft_model.named_modules() if n.split(".")[-2:-1] in (["lora_A"], ["lora_B"])]
    frozen = [m for m in peft_model.modules()
              if isinstance(m, torch.nn.Linear) and not any(p.requires_grad for p in m.parameters())]
    assert leaves and frozen
    assert all(any(m is u for u in units) for m in leaves)  # each LoRA A/B is a unit of its own
    assert not any(m is u for m in frozen for u in units)  # a frozen projection stays in its layer's unit
