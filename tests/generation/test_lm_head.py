"""The weight-first LM head (lm_head.py): the same logits as `nn.Linear` to rounding, only inside its block,
only without gradient."""

from __future__ import annotations

import pytest
import torch

from ragloop.generation.lm_head import weight_first

pytestmark = pytest.mark.usefixtures("one_thread")


class Tiny(torch.nn.Module):
    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.head = torch.nn.Linear(16, 300, bias=bias)

    def get_output_embeddings(self):
        return self.head


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 5, 40])
def test_same_logits_inside_the_block_and_restored_after(bias, rows):
    torch.manual_seed(rows)
    model = Tiny(bias)
    x = torch.randn(rows, 1, 16)
    with torch.no_grad():
        plain = model.head(x)
        with weight_first(model):
            assert "forward" in vars(model.head)
            swapped = model.head(x)
        assert "forward" not in vars(model.head)
    assert swapped.shape == plain.shape == (rows, 1, 300)
    torch.testing.assert_close(swapped, plain, rtol=1e-5, atol=1e-5)
    assert torch.equal(swapped.argmax(-1), plain.argmax(-1))


def test_left_alone_with_gradient_nested_or_quantized():
    model = Tiny(False)
    with weight_first(model):  # gradient on: training keeps nn.Linear
        assert "forward" not in vars(model.head)
    with torch.no_grad(), weight_first(model):
        inner = model.head.forward
        with weight_first(model):  # an inner block leaves the outer one's swap in place
            assert model.head.forward == inner
        assert "forward" in vars(model.head)
    quantized = Tiny(False)
    quantized.head = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(quantized.head), {torch.nn.Linear},
                                                            dtype=torch.qint8)[0]
    with torch.no_grad(), weight_first(quantized):
        assert "forward" not in vars(quantized.head)
