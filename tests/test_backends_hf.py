"""transformers backends with tiny random-weight models: batching, answer position, provenance."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tasks.backends.hf import HFCaptioner, HFCausalLM

PROMPTS = ["hello there 1", "a much longer prompt about two dogs playing with a frisbee in the park",
           [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "x"}], "two"]
LABELS = ["0", "1", "2", "3"]


@pytest.fixture(scope="module")
def lm(tiny_causal_lm):
    return HFCausalLM(tiny_causal_lm, batch_size=4, max_new_tokens=6)


def test_name_records_model_and_revision(lm, tiny_causal_lm):
    assert lm.name == f"{tiny_causal_lm}@local" and lm.device == "cpu"


def test_batched_generation_equals_one_by_one(lm):
    batched = lm.generate(PROMPTS)
    assert len(batched) == 4 and any(batched)
    assert batched == [lm.generate([p])[0] for p in PROMPTS]


def test_label_probabilities_batched_equal_unbatched_and_renormalised(lm):
    p = lm.label_probabilities(PROMPTS, LABELS)
    assert p.shape == (4, 4) and np.allclose(p.sum(1), 1, atol=1e-5)
    one = np.concatenate([lm.label_probabilities([q], LABELS) for q in PROMPTS])
    np.testing.assert_allclose(p, one, atol=1e-5)
    assert not np.allclose(p[0], p[1])  # the prompt matters


def test_label_probabilities_read_the_answer_position(lm):
    """Same numbers as the first generation step's scores, renormalised over the label tokens."""
    import torch

    ids = lm.label_token_ids(LABELS)
    assert len(set(ids)) == 4
    for prompt, row in zip(PROMPTS, lm.label_probabilities(PROMPTS, LABELS)):
        enc = lm._encode(lm.render([prompt]))
        out = lm.model.generate(**enc, max_new_tokens=1, do_sample=False, output_scores=True,
                                return_dict_in_generate=True, pad_token_id=lm.tokenizer.pad_token_id)
        logits = out.scores[0][0, ids].float()
        np.testing.assert_allclose(row, torch.softmax(logits, -1).numpy(), atol=1e-5)


def test_labels_sharing_a_first_token_are_refused(lm):
    with pytest.raises(ValueError, match="distinct"):
        lm.label_probabilities(["q"], ["10", "12"])


def test_dtype_is_configurable(tiny_causal_lm):
    import torch

    lm16 = HFCausalLM(tiny_causal_lm, dtype="bfloat16", max_new_tokens=3)
    assert lm16.model.dtype == torch.bfloat16 and len(lm16.generate(["hi"])) == 1


def test_blip_captioner_batches_with_and_without_prompt(tiny_captioner):
    cap = HFCaptioner(tiny_captioner, batch_size=2, max_new_tokens=5)
    images = [Image.new("RGB", (60, 40), (200, 10, 10)), Image.new("L", (30, 80), 90), Image.new("RGB", (9, 9))]
    out = cap.caption(images)
    assert len(out) == 3 and all(isinstance(t, str) for t in out)
    assert out == [cap.caption([im])[0] for im in images]
    assert cap.caption(images, prompt="Describe the image in detail, please.") == out  # no chat template: unconditional
    cap.text_prefix = True
    assert len(cap.caption(images, prompt="a photo of")) == 3
    assert cap.name == f"{tiny_captioner}@local"


def test_vision_encoder_decoder_captioner(tmp_path):
    from tests.tiny_models import build_tiny_vit_gpt2

    cap = HFCaptioner(build_tiny_vit_gpt2(tmp_path / "ved"), batch_size=4, max_new_tokens=5)
    assert cap.processor is None
    out = cap.caption([Image.new("RGB", (50, 50), "blue"), Image.new("RGB", (20, 70), "green")])
    assert len(out) == 2 and any(out)
