"""Activation checkpointing (MODEL.MIT / MODEL.SEM_SEG_HEAD .CHECKPOINT_ACTIVATIONS) is exact: the same loss,
gradients, dropout / drop-path masks and BatchNorm running statistics as the plain training forward."""
import copy

import pytest
import torch
from detectron2.modeling import build_model
from tests.helpers.tiny_configs import small_input_hrda_cfg

import hrda_d2.modeling.activation_checkpointing as ac


def tiny_model(**overrides):
    # drop-path and Dropout2d on: the recomputation must reuse the masks
    cfg = small_input_hrda_cfg(**{"MODEL.MIT.DROP_PATH_RATE": 0.3, "MODEL.SEM_SEG_HEAD.DROPOUT": 0.3, **overrides})
    return build_model(cfg).train()


def train_step(model, images, labels, seed):
    torch.manual_seed(seed)
    losses = model.forward_train(images, labels, crop_box=(32, 96, 0, 64)).losses
    sum(losses.values()).backward()
    return {k: v.detach() for k, v in losses.items()}


@pytest.mark.parametrize("head", [False, True])
def test_checkpointed_training_step_equals_plain(head):
    plain = tiny_model()
    ckpt = copy.deepcopy(plain)
    ckpt.backbone.checkpoint_activations = True
    ckpt.sem_seg_head.head.checkpoint_activations = head
    ckpt.sem_seg_head.scale_attention.checkpoint_activations = head
    images, labels = torch.randn(2, 3, 128, 128), torch.randint(0, 19, (2, 128, 128))
    labels[:, :8] = 255
    calls = []
    original = ac.checkpoint

    def counting(*args, **kwargs):
        calls.append(kwargs.get("preserve_rng_state"))
        return original(*args, **kwargs)

    ac.checkpoint = counting
    try:
        got = train_step(ckpt, images, labels, seed=7)
        rng_after_ckpt = torch.rand(3)
    finally:
        ac.checkpoint = original
    want = train_step(plain, images, labels, seed=7)
    rng_after_plain = torch.rand(3)
    blocks = sum(ckpt.backbone.depths) * 2  # context + detail forward
    assert len(calls) == blocks + (3 if head else 0) and all(calls)  # heads: context, detail, attention
    # the recomputation restores, and does not consume, the RNG: the stream after the step is the same
    assert torch.equal(rng_after_ckpt, rng_after_plain)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    worst = 0.0
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            worst = max(worst, (p.grad - q.grad).abs().max().item())
    assert worst <= 1e-6, f"max |grad difference| {worst:.3g}"
    for (name, b), c in zip(plain.named_buffers(), ckpt.buffers()):
        assert torch.equal(b, c), f"buffer {name} differs (BatchNorm statistics updated twice?)"


def test_no_checkpointing_without_autograd_or_in_eval():
    model = tiny_model(**{"MODEL.MIT.CHECKPOINT_ACTIVATIONS": True, "MODEL.SEM_SEG_HEAD.CHECKPOINT_ACTIVATIONS": True})
    assert model.backbone.checkpoint_activations and model.sem_seg_head.scale_attention.checkpoint_activations
    original, calls = ac.checkpoint, []
    ac.checkpoint = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        with torch.no_grad():  # the teacher's pseudo-labels: train mode, no autograd
            model.generate_pseudo_label(torch.randn(1, 3, 128, 128))
        model.eval()
        model.inference(torch.randn(1, 3, 128, 128))
    finally:
        ac.checkpoint = original
    assert calls == []
