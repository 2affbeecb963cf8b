"""ViT: shapes on the supported geometries, input checks, and that it learns digits."""

import pytest
import torch
import torch.nn.functional as F

from fp4train.data import build_datasets
from fp4train.models import ViTConfig, build_model


@pytest.mark.parametrize(
    "overrides, shape",
    [({}, (5, 1, 8, 8)), (dict(image_size=32, patch_size=4, in_channels=3, num_classes=7), (5, 3, 32, 32))],
)
def test_forward_and_backward_shapes(overrides, shape):
    model = build_model("vit", **overrides)
    logits = model(torch.randn(shape))
    assert logits.shape == (shape[0], model.config.num_classes)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_token_count_is_patches_plus_class_token():
    model = build_model("vit", image_size=32, patch_size=4)
    assert model.pos_embed.shape == (1, 64 + 1, 64)


def test_wrong_image_shape_error_names_expected_shape():
    with pytest.raises(ValueError, match=r"expects images \(b, 1, 8, 8\), got \(2, 1, 16, 16\)"):
        build_model("vit")(torch.randn(2, 1, 16, 16))


def test_patch_size_must_divide_image_size():
    with pytest.raises(ValueError, match="image_size 32 is not a multiple of patch_size 5"):
        ViTConfig(image_size=32, patch_size=5)


def test_a_few_steps_of_training_on_digits_reduce_loss():
    torch.manual_seed(0)
    train, _ = build_datasets("digits")
    x = torch.stack([train[i][0] for i in range(128)])
    y = torch.stack([train[i][1] for i in range(128)])
    model = build_model("vit")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0]
