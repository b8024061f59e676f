"""SAM (core/sam.py): one step on a quadratic computed by hand, the edge cases, and the detection-model
training it drives. Float64 throughout the hand checks: the tolerance 1e-6 is far above float64 rounding
on any CPU and thread count, far below the size of the ascent being checked."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from burn_plugin.core.sam import SAM, reinitialise, train_detection_model


def quadratic(a: torch.Tensor, w0):
    w = nn.Parameter(torch.tensor(w0, dtype=torch.float64))

    def closure():
        return 0.5 * w @ a @ w          # L(w) = 1/2 w^T A w, grad = A w (A symmetric)
    return w, closure


def test_sam_step_on_a_diagonal_quadratic_by_hand():
    # A = diag(2, 1), w = (3, 4): g = A w = (6, 4), ||g|| = sqrt(52)
    # rho = 0.5: e = rho g / ||g|| = (3, 2) / sqrt(52); w + e = (3 + 3/sqrt52, 4 + 2/sqrt52)
    # g_sam = A (w + e) = (6 + 6/sqrt52, 4 + 2/sqrt52); SGD lr 0.1 from w: w - 0.1 g_sam
    a = torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64))
    w, closure = quadratic(a, [3.0, 4.0])
    opt = SAM([w], torch.optim.SGD([w], lr=0.1), rho=0.5)
    loss = opt.step(closure)
    r = math.sqrt(52.0)
    expected = [3.0 - 0.1 * (6.0 + 6.0 / r), 4.0 - 0.1 * (4.0 + 2.0 / r)]
    assert abs(float(loss) - 0.5 * (2 * 9 + 16)) < 1e-12          # the loss reported is the one at w
    assert torch.allclose(w.detach(), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-6)
    assert abs(expected[0] - 2.3167949706) < 1e-9 and abs(expected[1] - 3.5722649902) < 1e-9


def test_sam_step_on_a_full_quadratic_matches_the_formula():
    a = torch.tensor([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]], dtype=torch.float64)
    w0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    rho, lr = 0.3, 0.05
    g = a @ w0
    e = rho * g / torch.linalg.vector_norm(g)        # the ascent of Foret et al.'s Algorithm 1 (p = 2)
    expected = w0 - lr * (a @ (w0 + e))
    w, closure = quadratic(a, w0.tolist())
    SAM([w], torch.optim.SGD([w], lr=lr), rho=rho).step(closure)
    assert torch.allclose(w.detach(), expected, rtol=0, atol=1e-6)
    # the ascent is a real one: plain SGD lands elsewhere by more than the tolerance
    assert (w.detach() - (w0 - lr * g)).abs().max() > 1e-3


def test_norm_is_taken_over_all_parameters_together():
    a1, a2 = torch.tensor([[2.0]], dtype=torch.float64), torch.tensor([[1.0]], dtype=torch.float64)
    w1, w2 = nn.Parameter(torch.tensor([3.0], dtype=torch.float64)), nn.Parameter(torch.tensor([4.0], dtype=torch.float64))

    def closure():
        return 0.5 * (w1 @ a1 @ w1) + 0.5 * (w2 @ a2 @ w2)
    SAM([w1, w2], torch.optim.SGD([w1, w2], lr=0.1), rho=0.5).step(closure)
    r = math.sqrt(52.0)        # the same numbers as the diagonal case: one norm for both tensors
    assert abs(float(w1.detach()) - (3.0 - 0.1 * (6.0 + 6.0 / r))) < 1e-6
    assert abs(float(w2.detach()) - (4.0 - 0.1 * (4.0 + 2.0 / r))) < 1e-6


def test_rho_zero_and_zero_gradient_are_the_plain_step_bit_for_bit():
    a = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    w, closure = quadratic(a, [1.0, -1.0])
    v, closure_v = quadratic(a, [1.0, -1.0])
    SAM([w], torch.optim.SGD([w], lr=0.1, momentum=0.9), rho=0.0).step(closure)
    opt = torch.optim.SGD([v], lr=0.1, momentum=0.9)
    closure_v().backward()
    opt.step()
    assert torch.equal(w.detach(), v.detach())
    z, closure_z = quadratic(a, [0.0, 0.0])           # the minimum: g = 0, no ascent, no move
    SAM([z], torch.optim.SGD([z], lr=0.1), rho=1.0).step(closure_z)
    assert torch.equal(z.detach(), torch.zeros(2, dtype=torch.float64))


def test_weights_come_back_exactly_and_bn_statistics_move_once():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    bn = model[1]
    # a base optimiser that does nothing: what SAM leaves behind is its own doing
    opt = SAM(list(model.parameters()), torch.optim.SGD(model.parameters(), lr=0.0), rho=0.5, bn_modules=[bn])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    opt.step(lambda: F.cross_entropy(model(x), y))
    after = model.state_dict()
    for k, v in before.items():
        if "running" in k or "num_batches" in k:
            continue
        assert torch.equal(v, after[k]), k                      # ascent undone exactly
    # running statistics: one update from the first pass at w (momentum 0.1), none from the second
    with torch.no_grad():
        h = model[0](x)
    expected = 0.9 * before["1.running_mean"] + 0.1 * h.mean(0)
    assert torch.allclose(after["1.running_mean"], expected, rtol=0, atol=1e-12)
    assert bn.momentum == 0.1


def test_bad_rho_is_refused():
    w = nn.Parameter(torch.zeros(1))
    for rho in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            SAM([w], torch.optim.SGD([w], lr=0.1), rho=rho)


def _blobs(n=120, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    centres = torch.tensor([[0.2, 0.2], [0.8, 0.2], [0.5, 0.8]])
    x = (centres[y] + 0.05 * torch.randn(n, 2, generator=g)).clamp(0, 1)
    return x.view(n, 1, 1, 2), y


@pytest.mark.parametrize("method", ["sgd", "sam", "sam_scratch"])
def test_train_detection_model_fits_separable_blobs(method):
    x, y = _blobs()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    hist = train_detection_model(model, x, y, method=method, epochs=15, lr=0.1, rho=0.05, batch_size=32,
                                 generator=torch.Generator().manual_seed(1))
    assert [h["epoch"] for h in hist] == list(range(15)) and not model.training
    assert hist[-1]["loss"] < hist[0]["loss"] and hist[-1]["train_acc"] >= 0.95
    with pytest.raises(ValueError):
        train_detection_model(model, x, y, method="adam", epochs=1, lr=0.1, rho=0.1)


def test_train_detection_model_is_deterministic_for_a_seed():
    x, y = _blobs()

    def run():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Flatten(), nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3))
        train_detection_model(m, x, y, method="sam", epochs=2, lr=0.1, rho=0.1, batch_size=16,
                              generator=torch.Generator().manual_seed(5))
        return m.state_dict()
    a, b = run(), run()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_reinitialise_is_seeded_and_leaves_the_global_random_state_alone():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Linear(7, 2))
    base[1].running_mean.fill_(3.0)
    import copy

    state = torch.get_rng_state()
    a = reinitialise(copy.deepcopy(base), 11)
    assert torch.equal(torch.get_rng_state(), state)
    b = reinitialise(copy.deepcopy(base), 11)
    c = reinitialise(copy.deepcopy(base), 12)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a[0].weight, base[0].weight) and not torch.equal(a[0].weight, c[0].weight)
    assert torch.equal(a[1].running_mean, torch.zeros(7))
