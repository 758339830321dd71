"""Distillation of transformer encoders: attention maps, embedding mode, dual-encoder caches."""

import copy

import pytest
import torch
from torch import nn

from mmcompress.distill import DistillConfig, distill
from mmcompress.distill.losses import attention_kd
from mmcompress.distill.task import captured_attention
from mmcompress.errors import ConfigError, ModelError
from mmcompress.models.minilm import load_minilm_tokenizer
from mmcompress.recipe.runner import compress
from mmcompress.train.config import TrainConfig
from mmcompress.train.embedding_task import EmbeddingTask, Sentences

SENTENCES = [
    "a red coat with buttons",
    "a pair of white sneakers",
    "a striped shirt for summer",
    "the bag is made of leather",
    "a warm wool pullover",
    "ankle boots with a low heel",
    "a long evening dress",
    "open sandals for the beach",
] * 8


class TinyBert(nn.Module):
    """A small random BERT with mean pooling (the MiniLM recipe at test size)."""

    def __init__(self, layers: int = 4, heads: int = 4) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        config = BertConfig(
            vocab_size=30522, hidden_size=32, num_hidden_layers=layers, num_attention_heads=heads,
            intermediate_size=64, max_position_embeddings=64, attn_implementation="eager",
        )  # fmt: skip
        self.bert = BertModel(config, add_pooling_layer=False)

    def forward(self, input_ids, attention_mask):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask[..., None].float()
        return (hidden * mask).sum(1) / mask.sum(1)


def test_captured_attention_equals_the_models_own_attention_maps():
    torch.manual_seed(0)
    model = TinyBert().eval()
    enc = load_minilm_tokenizer()(SENTENCES[:3], padding=True, return_tensors="pt")
    with torch.no_grad(), captured_attention(model, ["bert.encoder.layer.1.attention"], enc["attention_mask"]) as maps:
        out = model.bert(**enc, output_attentions=True)
        got = maps("bert.encoder.layer.1.attention")
    assert got.shape == out.attentions[1].shape
    assert torch.allclose(got, out.attentions[1], atol=1e-5)


def _attention_gap(teacher, student, pair, data):
    enc = load_minilm_tokenizer()(list(data[:16]), padding=True, return_tensors="pt")
    enc = {k: enc[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad(), captured_attention(teacher, [pair[1]], enc["attention_mask"]) as t_maps:
        teacher(**enc)
        with captured_attention(student, [pair[0]], enc["attention_mask"]) as s_maps:
            student(**enc)
            return float(attention_kd(s_maps(pair[0]), t_maps(pair[1])))


def test_embedding_and_attention_distillation_teach_a_fresh_student():
    torch.manual_seed(0)
    teacher = TinyBert().eval()
    torch.manual_seed(1)
    student = TinyBert(layers=2)  # random weights: starts far from the teacher
    task = EmbeddingTask(load_minilm_tokenizer(), reference=teacher, max_length=16)
    data = Sentences(SENTENCES)
    pair = ("bert.encoder.layer.1.attention", "bert.encoder.layer.3.attention")
    before, gap_before = task.evaluate(student, data)["cosine"], _attention_gap(teacher, student, pair, data)
    config = DistillConfig(
        mode="embedding", attentions=dict([pair]), train=TrainConfig(epochs=3, batch_size=16, lr=3e-3)
    )
    result = distill(teacher, student, data, config, task=task, val_data=data, progress=False)
    assert before < 0.0 and result.metrics["cosine"] > 0.85, (before, result.metrics)
    assert _attention_gap(teacher, student, pair, data) < 0.5 * gap_before


def test_attention_pairs_with_different_heads_are_named():
    teacher, student = TinyBert(heads=4), TinyBert(layers=2, heads=2)
    task = EmbeddingTask(load_minilm_tokenizer(), reference=teacher)
    pair = {"bert.encoder.layer.0.attention": "bert.encoder.layer.0.attention"}
    config = DistillConfig(mode="embedding", attentions=pair)
    with pytest.raises(ConfigError, match=r"heads"):
        distill(teacher, student, Sentences(SENTENCES), config, task=task, progress=False)
    with pytest.raises(ConfigError, match="not an attention module"):
        config = DistillConfig(mode="embedding", attentions={"bert.encoder": "bert.encoder"})
        distill(teacher, student, Sentences(SENTENCES), config, task=task, progress=False)
    with pytest.raises(ConfigError, match="mode 'embedding'"):
        distill(teacher, student, Sentences(SENTENCES), {"mode": "logits"}, task=task, progress=False)


def test_dual_encoder_batches_encode_each_distinct_caption_once(captions_small):
    from mmcompress.models.clip import DualEncoder
    from mmcompress.models.zoo_tasks import ContrastiveTask

    torch.manual_seed(0)
    model = DualEncoder(pretrained_text=False).eval()
    train = captions_small[0]
    task = ContrastiveTask(model, train)
    inputs, targets = task.batch(train, torch.arange(64))
    assert len(torch.unique(targets)) < 64  # captions repeat within a batch
    with torch.no_grad():
        img, txt = task.embeddings(model, inputs, targets)
        want = model(**inputs)
    assert torch.allclose(img, want[0], atol=1e-6) and torch.allclose(txt, want[1], atol=1e-5)


def test_contrastive_distillation_of_a_smaller_dual_encoder_reads_the_teachers_caption_cache(captions_small):
    from mmcompress.distill.students import drop_layers
    from mmcompress.distill.task import DistillationTask
    from mmcompress.models.clip import DualEncoder
    from mmcompress.models.zoo_tasks import ContrastiveTask
    from mmcompress.prune.structured import prune_structured

    torch.manual_seed(0)
    teacher = DualEncoder(pretrained_text=False).eval()
    drop_layers(teacher, [0, 1], "text_tower.bert.encoder.layer")  # a 2-layer teacher keeps the test fast
    student = copy.deepcopy(teacher)
    prune_structured(student, {"modality:image": {"ratio": 0.5}})
    drop_layers(student, [1], "text_tower.bert.encoder.layer")
    train = captions_small[0]
    task = ContrastiveTask(teacher, train)
    config = DistillConfig(
        mode="contrastive", alpha=0.5, train=TrainConfig(epochs=1, batch_size=64, max_steps_per_epoch=3)
    )
    kd_task = DistillationTask(task, teacher, config)
    kd_task.prepare(student)
    assert kd_task.teacher_embed is not None  # the task cached the teacher's caption features once
    inputs, targets = kd_task.batch(train, torch.arange(32))
    with torch.no_grad():
        cached = kd_task._forward(teacher, inputs, targets, teacher=True)
        direct = teacher(**inputs)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(cached, direct, strict=True))
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    result = distill(teacher, student, train, config, task=task, progress=False)
    assert torch.isfinite(torch.tensor(result.history[-1]["loss"]))
    changed = [n for n, p in student.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith("text_tower") for n in changed) and any(n.startswith("image_tower") for n in changed)


def test_embedding_distillation_of_a_pruned_encoder_keeps_its_sparsity():
    from mmcompress.prune.api import prune

    torch.manual_seed(0)
    teacher = TinyBert().eval()
    student = copy.deepcopy(teacher)
    prune(student, {"re:.*encoder.*": {"sparsity": 0.6, "scope": "layer"}})
    masked = [m for m in student.modules() if hasattr(m, "weight_mask")]
    zeros = [m.weight == 0 for m in masked]
    task = EmbeddingTask(load_minilm_tokenizer(), reference=teacher, max_length=16)
    data = Sentences(SENTENCES)
    config = DistillConfig(mode="embedding", train=TrainConfig(epochs=3, batch_size=16, lr=1e-3))
    history = distill(teacher, student, data, config, task=task, val_data=data, progress=False).history
    assert history[-1]["loss"] < history[0]["loss"]
    assert all(torch.equal(m.weight == 0, z) for m, z in zip(masked, zeros, strict=True))


# `compress` on a sentence encoder with plain strings as data: the encoder's own tokenizer makes the
# batches (an EmbeddingTask against the float model); without a tokenizer the error says so.
TEXT_RECIPE = {
    "stages": [
        {"name": "baseline", "pass": "evaluate", "config": {"latency_repeats": 1}},
        {"pass": "quantize", "config": {"activations": "dynamic"}},
        {"name": "compressed", "pass": "evaluate", "config": {"latency_repeats": 1}},
    ]
}


def test_plain_strings_use_the_encoders_tokenizer_and_compare_with_the_float_model(tmp_path):
    torch.manual_seed(0)
    model = TinyBert().eval()
    model.mmcompress_tokenizer = load_minilm_tokenizer()
    res = compress(model, TEXT_RECIPE, data=(SENTENCES, SENTENCES[:16]), output_dir=tmp_path, progress=False)
    assert res.metrics("baseline")["cosine"] == pytest.approx(1.0, abs=1e-5)  # the float model is the reference
    assert 0.9 < res.metrics("compressed")["cosine"] < 1.0


def test_plain_strings_without_a_tokenizer_name_the_problem(tmp_path):
    with pytest.raises(ModelError, match="plain strings.*no tokenizer.*EmbeddingTask"):
        compress(TinyBert().eval(), TEXT_RECIPE, data=(SENTENCES, SENTENCES), output_dir=tmp_path, progress=False)


def test_sentence_embedding_fine_tuning_distils_from_the_reference():
    """Fine-tuning a pruned sentence encoder on plain strings (`mmcompress prune minilm --data texts`)
    failed with 'no labels to train on': the task's loss is 1 - cosine to its reference encoder."""
    teacher = TinyBert().eval()
    task = EmbeddingTask(load_minilm_tokenizer(), reference=teacher, max_length=16)
    inputs, _ = task.batch(Sentences(SENTENCES), torch.arange(4))
    assert float(task.loss(copy.deepcopy(teacher), inputs, None)) < 1e-6  # the reference itself: nothing to learn
    torch.manual_seed(1)
    student = TinyBert(layers=2)
    loss = task.loss(student, inputs, None)
    loss.backward()
    assert 0.0 < float(loss) <= 2.0 and all(p.grad is not None for p in student.parameters() if p.requires_grad)
    with pytest.raises(ConfigError, match="no labels to train on; give the task a reference encoder"):
        EmbeddingTask(load_minilm_tokenizer()).loss(student, inputs, None)


def test_task_cosine_on_plain_strings_tokenizes_them_with_the_model():
    """`--task cosine` with plain-string data failed at the baseline ('cannot take this batch (100
    positional inputs)'); it now means the sentence-embedding task of the model's own tokenizer."""
    from mmcompress.recipe.specs import resolve_task

    model = TinyBert().eval()
    model.mmcompress_tokenizer = load_minilm_tokenizer()
    task = resolve_task("cosine", model, Sentences(SENTENCES))
    assert isinstance(task, EmbeddingTask) and task.evaluate(model, Sentences(SENTENCES))["cosine"] > 0.9999
