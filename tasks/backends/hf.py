"""transformers backends: a causal LM (generate + label probabilities) and an image captioner.

Both load once (inside a Ray actor or in-process), pick CUDA when present, batch with left
padding and record `model@revision` as their `name`. Generation is greedy unless a
temperature is set.
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

Prompt = str | list[dict]


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was configured but torch sees no CUDA device; set device: auto or cpu")
    return device


def torch_dtype(dtype: str, device: str):
    """`auto` is bfloat16 on a GPU that supports it and float32 elsewhere (CPU half is slow)."""
    import torch

    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, float32, float16 or bfloat16") from None


def model_name(model: str, revision: str | None, loaded=None) -> str:
    """model@revision; a hub model without a pinned revision records the commit it resolved to."""
    rev = revision or getattr(getattr(loaded, "config", None), "_commit_hash", None)
    if not rev:
        rev = "local" if os.path.isdir(model) else "main"
    return f"{model.rstrip('/')}@{rev}"


def as_messages(prompt: Prompt, system: str | None = None) -> list[dict]:
    if isinstance(prompt, str):
        msgs = [{"role": "user", "content": prompt}]
    else:
        msgs = list(prompt)
    if system and not any(m.get("role") == "system" for m in msgs):
        msgs = [{"role": "system", "content": system}] + msgs
    return msgs


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") == "1"


class _Generator:
    """What the HF generators share: device, batching, sampling and the loading options."""

    def _setup(self, device: str, batch_size: int, max_new_tokens: int, temperature: float,
               revision: str | None, trust_remote_code: bool) -> dict:
        import torch

        self.torch = torch
        self.device = pick_device(device)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        return dict(revision=revision, trust_remote_code=trust_remote_code, local_files_only=_offline())


class HFCausalLM(_Generator):
    """Chat-templated text generation and one-pass label scoring with a causal LM."""

    def __init__(self, model: str, revision: str | None = None, *, dtype: str = "auto", device: str = "auto",
                 batch_size: int = 8, max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
                 system_prompt: str | None = None, trust_remote_code: bool = False):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kw = self._setup(device, batch_size, max_new_tokens, temperature, revision, trust_remote_code)
        self.top_p = top_p
        self.system_prompt = system_prompt
        self.tokenizer = AutoTokenizer.from_pretrained(model, **kw)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(
            model, dtype=torch_dtype(dtype, self.device), **kw).to(self.device).eval()
        self.name = model_name(model, revision, self.model)
        self._label_ids: dict[tuple[str, ...], list[int]] = {}

    # ---- prompts ----
    def render(self, prompts: Sequence[Prompt]) -> list[str]:
        """Prompts as the model sees them: chat template with the generation prompt appended."""
        if getattr(self.tokenizer, "chat_template", None):
            return [self.tokenizer.apply_chat_template(as_messages(p, self.system_prompt), tokenize=False,
                                                       add_generation_prompt=True) for p in prompts]
        return [p if isinstance(p, str) else "\n".join(m["content"] for m in p) for p in prompts]

    def _encode(self, texts: list[str]):
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not has_template)
        return enc.to(self.device)

    def _batches(self, n: int):
        for i in range(0, n, self.batch_size):
            yield slice(i, min(i + self.batch_size, n))

    # ---- Generator ----
    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int | None = None) -> list[str]:
        texts = self.render(prompts)
        out: list[str] = []
        sample = self.temperature > 0
        params = dict(max_new_tokens=max_new_tokens or self.max_new_tokens, do_sample=sample,
                      pad_token_id=self.tokenizer.pad_token_id)
        if sample:
            params |= dict(temperature=self.temperature, top_p=self.top_p)
        else:
            params |= dict(temperature=None, top_p=None, top_k=None)
        for sl in self._batches(len(texts)):
            enc = self._encode(texts[sl])
            with self.torch.inference_mode():
                ids = self.model.generate(**enc, **params)
            new = ids[:, enc["input_ids"].shape[1]:]
            out += [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
        return out

    # ---- LabelScorer ----
    def label_token_ids(self, labels: Sequence[str]) -> list[int]:
        """The token each label starts with, as it would follow the generation prompt.

        A tokenizer that marks word starts (sentencepiece's "▁") may split "0" into a marker and
        the digit; the marker is skipped. Labels that share their first token cannot be told
        apart in one forward pass and are refused.
        """
        key = tuple(labels)
        if key in self._label_ids:
            return self._label_ids[key]
        ids = []
        for label in labels:
            toks = self.tokenizer.encode(label, add_special_tokens=False)
            while len(toks) > 1 and not self.tokenizer.decode(toks[:1]).strip():
                toks = toks[1:]
            if not toks:
                raise ValueError(f"label {label!r} encodes to no tokens with {self.name}")
            if len(toks) > 1:
                log.warning("label %r is %d tokens for %s; scoring its first token", label, len(toks), self.name)
            ids.append(toks[0])
        if len(set(ids)) != len(ids):
            raise ValueError(f"labels {list(labels)} do not start with distinct tokens for {self.name}: {ids}; "
                             "choose labels that are single tokens (digits usually are)")
        self._label_ids[key] = ids
        return ids

    def label_probabilities(self, prompts: Sequence[Prompt], labels: Sequence[str]) -> np.ndarray:
        """P(label | prompt) at the answer position, renormalised over the labels; one forward pass per batch."""
        ids = self.label_token_ids(labels)
        texts = self.render(prompts)
        out = np.zeros((len(texts), len(ids)), np.float32)
        torch = self.torch
        for sl in self._batches(len(texts)):
            enc = self._encode(texts[sl])
            mask = enc["attention_mask"]
            positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits = self.model(input_ids=enc["input_ids"], attention_mask=mask, position_ids=positions,
                                    use_cache=False, logits_to_keep=1).logits[:, -1, :]
            out[sl] = torch.softmax(logits.float()[:, ids], dim=-1).cpu().numpy()
        return out


class HFCaptioner(_Generator):
    """Image captions with an image-to-text / image-text-to-text model.

    Covers chat VLMs (their chat template gets an image placeholder and the prompt), BLIP and
    VisionEncoderDecoder models. Models without a chat template caption unconditionally: an
    instruction is not a caption prefix; `text_prefix=True` feeds the prompt to BLIP as one
    (e.g. "a photography of").
    """

    def __init__(self, model: str, revision: str | None = None, *, dtype: str = "auto", device: str = "auto",
                 batch_size: int = 8, max_new_tokens: int = 40, temperature: float = 0.0,
                 trust_remote_code: bool = False, text_prefix: bool = False):
        from transformers import AutoModelForImageTextToText

        kw = self._setup(device, batch_size, max_new_tokens, temperature, revision, trust_remote_code)
        self.text_prefix = text_prefix
        self.image_processor, self.tokenizer, self.processor = self._load_processor(model, kw)
        if getattr(self.tokenizer, "padding_side", None) is not None:
            self.tokenizer.padding_side = "left"
        self.dtype = torch_dtype(dtype, self.device)
        self.model = AutoModelForImageTextToText.from_pretrained(model, dtype=self.dtype, **kw).to(self.device).eval()
        self.chat = bool(self.processor is not None and getattr(self.processor, "chat_template", None))
        self.name = model_name(model, revision, self.model)

    @staticmethod
    def _load_processor(model: str, kw: dict):
        """AutoProcessor when the model has one; else image processor + tokenizer (VisionEncoderDecoder)."""
        from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

        proc = AutoProcessor.from_pretrained(model, **kw)
        if hasattr(proc, "image_processor") and hasattr(proc, "tokenizer"):
            return proc.image_processor, proc.tokenizer, proc
        return AutoImageProcessor.from_pretrained(model, **kw), AutoTokenizer.from_pretrained(model, **kw), None

    def _inputs(self, images, prompt: str | None):
        if self.processor is None:
            return self.image_processor(images=images, return_tensors="pt"), None
        if self.chat:
            msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt or "Describe this image."}]}]
            text = self.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            return self.processor(images=images, text=[text] * len(images), return_tensors="pt", padding=True), text
        if prompt and self.text_prefix:
            return self.processor(images=images, text=[prompt] * len(images), return_tensors="pt", padding=True), prompt
        return self.processor(images=images, return_tensors="pt"), None

    def caption(self, images: Sequence, prompt: str | None = None, max_new_tokens: int | None = None) -> list[str]:
        torch = self.torch
        out: list[str] = []
        sample = self.temperature > 0
        params = dict(max_new_tokens=max_new_tokens or self.max_new_tokens, do_sample=sample)
        params |= dict(temperature=self.temperature) if sample else dict(temperature=None, top_p=None, top_k=None)
        for i in range(0, len(images), self.batch_size):
            batch = [im.convert("RGB") for im in images[i:i + self.batch_size]]
            inputs, text_prompt = self._inputs(batch, prompt)
            inputs = {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                      for k, v in inputs.items() if hasattr(v, "to")}
            with torch.inference_mode():
                ids = self.model.generate(**inputs, **params)
            given = inputs.get("input_ids")
            if given is not None and ids.shape[1] >= given.shape[1] and torch.equal(ids[:, :given.shape[1]], given):
                ids = ids[:, given.shape[1]:]
            texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
            if text_prompt and not self.chat:
                texts = [t[len(text_prompt):] if t.lower().startswith(text_prompt.lower()) else t for t in texts]
            out += [t.strip() for t in texts]
        return out
