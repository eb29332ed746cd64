"""Packed training: K models of one architecture, resolution and recipe trained as one (HFTA-style fusion).

Why: at batch 8 a study's steps are bound by kernel launches (``cxr-fast plan``), and the K models of one
resolution have the same layers. Fused horizontally, each kernel does the work of all K, so a step dispatches
about the ops of one model's step (DESIGN.md, "Packed training", has the measurement against ``torch.func.vmap``).

Layout: activations are ``N x (K*C) x H x W``, model k's channels at ``k*C .. (k+1)*C``. A convolution becomes
one grouped convolution (``groups * K``), a BatchNorm one BatchNorm over K*C channels (so each model keeps its
own batch statistics and running buffers, in train and eval mode), a Linear one batched matmul on
``N x K x F``. DenseNet's concatenations stay within a model (``PackedDenseBlock``). Every parameter and buffer
is the K models' own tensors stacked model-major, so the optimizer, elementwise for SGD and Adam, steps each
model as its own run would.

Per model: its batch (images ``K x N x 1 x H x W``, labels ``K x N``), its loss weight (the step minimises
the sum of the K losses, so each model's gradient is its own), its init (packed from K built models), its
dropout stream (one generator per model: on the CPU it draws the masks its own run would), its scores.
Not per model: fp16's GradScaler (one scale; an overflow in one model skips the step of all K).
"""

from cxr_fast.packed.model import (PackedModel, build_packed, pack_optimizer_state, run_generator,
                                   unpack_optimizer_state)
from cxr_fast.packed.training import PackedStep, packed_loss, predict_packed, stack_batches

__all__ = ["PackedModel", "PackedStep", "build_packed", "pack_optimizer_state", "packed_loss", "predict_packed",
           "run_generator", "stack_batches", "unpack_optimizer_state"]
