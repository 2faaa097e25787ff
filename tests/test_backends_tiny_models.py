"""The tiny models load through the Auto classes the backends use, and their tokenizers fit the judge."""
from __future__ import annotations

from PIL import Image


def test_causal_lm_tokenizer_has_single_digit_tokens_and_chat_template(tiny_causal_lm):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_causal_lm)
    assert tok.padding_side == "left"
    assert all(len(tok.encode(str(d), add_special_tokens=False)) == 1 for d in range(10))
    rendered = tok.apply_chat_template([{"role": "user", "content": "q"}], tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|assistant|>\n")


def test_captioner_loads_with_auto_classes(tiny_captioner):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    proc = AutoProcessor.from_pretrained(tiny_captioner)
    model = AutoModelForImageTextToText.from_pretrained(tiny_captioner)
    out = model.generate(**proc(images=[Image.new("RGB", (40, 30), "red")], return_tensors="pt"), max_new_tokens=4)
    assert out.shape[0] == 1


def test_clip_works_with_the_image_embedder(tiny_clip):
    import numpy as np

    from schemas.config import ImageEncoder
    from tasks.backends.embedders import ClipImageEmbedder

    emb = ClipImageEmbedder(ImageEncoder(model=tiny_clip))
    vecs = emb.embed_images([Image.new("RGB", (40, 30), "red"), Image.new("L", (20, 50), 128)])
    assert vecs.shape == (2, emb.dim)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
