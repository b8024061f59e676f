"""Boundary analysis against closed forms on affine classifiers (paper section 2.3)."""
import pytest
import torch
import torch.nn as nn

from burn_plugin.core.boundary import boundary_distances


def affine(num_classes: int, shape=(3, 4, 4), seed=0) -> nn.Module:
    torch.manual_seed(seed)
    d = int(torch.tensor(shape).prod())
    return nn.Sequential(nn.Flatten(), nn.Linear(d, num_classes)).double()


def closed_form(model: nn.Module, x: torch.Tensor):
    """min_k |f_k - f_k0| / ||w_k - w_k0|| and its argmin, for an affine model."""
    lin = model[1]
    w, b = lin.weight.detach(), lin.bias.detach()
    f = x.flatten(1) @ w.T + b
    k0 = f.argmax(1)
    rows = torch.arange(len(x))
    d = (f - f[rows, k0][:, None]).abs() / (w[None] - w[k0][:, None]).norm(dim=2)
    d[rows, k0] = float("inf")
    return d.min(1).values, d.argmin(1), k0


def test_two_class_distance_is_w_x_plus_b_over_norm_w():
    model = affine(2, seed=1)
    x = torch.randn(300, 3, 4, 4, dtype=torch.float64)
    lin = model[1]
    w = (lin.weight[1] - lin.weight[0]).detach()
    b = (lin.bias[1] - lin.bias[0]).detach()
    expected = (x.flatten(1) @ w + b).abs() / w.norm()
    res = boundary_distances(model, x, clip=None, overshoot=0.0, batch_size=64)
    rel = ((res.distance.double() - expected) / expected).abs()
    assert rel.max() < 0.01
    assert bool((res.adv_label != res.clean_label).all())
    assert bool(res.converged.all())


@pytest.mark.parametrize("grad_mode", ["loop", "batched"])
@pytest.mark.parametrize("overshoot", [0.0, 0.02])
@pytest.mark.parametrize("candidate_mode", ["fixed", "adaptive"])
def test_multiclass_distance_and_class_match_closed_form(grad_mode, overshoot, candidate_mode, device):
    model = affine(7, seed=2)
    x = torch.randn(257, 3, 4, 4, dtype=torch.float64)
    dist, kstar, k0 = closed_form(model, x)
    res = boundary_distances(model.to(device), x, clip=None, overshoot=overshoot, batch_size=50, grad_mode=grad_mode,
                             candidate_mode=candidate_mode, device=device)
    assert res.distance.device.type == "cpu"  # results come back on the CPU whatever the device
    rel = ((res.distance.double() / (1 + overshoot) - dist) / dist).abs()
    assert rel.max() < 0.01
    assert bool((res.adv_label == kstar).all())
    assert bool((res.clean_label == k0).all())
    assert bool((res.iterations == 1).all())  # an affine model is crossed in one step


def test_candidates_restrict_the_search_to_top_classes():
    model = affine(10, seed=3)
    x = torch.randn(200, 3, 4, 4, dtype=torch.float64)
    res = boundary_distances(model, x, clip=None, candidates=2, overshoot=0.0)
    logits = model(x)
    second = logits.topk(2, dim=1).indices[:, 1]
    assert bool((res.adv_label == second).all())
    full = boundary_distances(model, x, clip=None, candidates=10, overshoot=0.0)
    assert bool((full.distance <= res.distance + 1e-6).all())  # more candidates never give a larger distance


class RunnerUpChanges(nn.Module):
    """Three classes on the first input coordinate u: f = (0, -1 + tanh(u)/2, -1.1 + u/2).

    At u = 0 class 1 is the runner-up and its linearisation predicts the boundary at u = 2, but f_1
    saturates there (-0.518) while f_2 has become the runner-up (-0.1); class 2 is crossed at u = 2.2.
    """

    def forward(self, x):
        u = x[:, 0]
        return torch.stack([torch.zeros_like(u), -1 + 0.5 * torch.tanh(u), -1.1 + 0.5 * u], dim=1)


def test_adaptive_candidates_follow_the_runner_up_of_the_current_iterate():
    x = torch.zeros(4, 2, dtype=torch.float64)
    kw = dict(clip=None, overshoot=0.0, max_iter=50)
    full = boundary_distances(RunnerUpChanges(), x, candidates=3, **kw)
    adaptive = boundary_distances(RunnerUpChanges(), x, candidates=2, candidate_mode="adaptive", **kw)
    fixed = boundary_distances(RunnerUpChanges(), x, candidates=2, candidate_mode="fixed", **kw)
    for res in (full, adaptive):
        assert torch.allclose(res.distance.double(), torch.full((4,), 2.2, dtype=torch.float64), rtol=1e-3)
        assert bool((res.adv_label == 2).all()) and bool((res.iterations == 2).all())
    # fixed top-2 keeps chasing the saturating class 1 and lands far beyond class 2's boundary
    assert bool((fixed.distance > 10).all()) and bool((fixed.adv_label == 2).all())
    with pytest.raises(ValueError, match="candidate_mode"):
        boundary_distances(RunnerUpChanges(), x, candidate_mode="top")


class SlowForSome(nn.Module):
    """Logit 0 = exp(2 x_0): linearising a convex logit undershoots, so samples far from the boundary
    need several DeepFool steps and samples near it need one.

    Feature 4 is ignored (zero gradient), so DeepFool never changes it: it tags each sample.
    """

    def __init__(self):
        super().__init__()
        self.seen_tags: list[torch.Tensor] = []

    def forward(self, x):
        f = x.flatten(1)
        self.seen_tags.append(f[:, 4].detach().clone())
        z0 = torch.exp(2 * f[:, 0]) + 0.1 * f[:, 1]
        return torch.stack([z0, torch.ones_like(z0) + 0.1 * f[:, 2], -5 + 0.1 * f[:, 3]], 1)


def tagged(n, seed):
    torch.manual_seed(seed)
    x = torch.randn(n, 1, 1, 5, dtype=torch.float64)
    x[:, 0, 0, 0] = torch.linspace(0.2, 4.0, n)[torch.randperm(n)]  # all start in class 0, at varied depth
    x[:, 0, 0, 4] = torch.arange(n, dtype=torch.float64)
    return x


def test_early_exit_finished_samples_get_no_further_work():
    model = SlowForSome()
    x = tagged(40, 0)
    res = boundary_distances(model, x, clip=None, batch_size=40, max_iter=30)
    assert int(res.iterations.max()) > int(res.iterations.min()) + 2  # samples finish at different times
    tags = torch.cat(model.seen_tags)
    assert torch.equal(tags.unique(), torch.arange(40, dtype=torch.float64))  # the tag survived every step
    counts = torch.bincount(tags.long(), minlength=40)
    k = res.iterations
    # each sample is seen in its k+1 checks plus at most k re-forwards of survivors, never after it left;
    # without early exit every sample would be seen about 2 * max(k) + 1 times
    assert bool((counts >= k + 1).all())
    assert bool((counts <= 2 * k + 1).all())
    assert int(counts.min()) < 2 * int(k.max()) + 1


@pytest.mark.parametrize("method", ["deepfool", "superdeepfool"])
def test_pool_size_does_not_change_results(method):
    inner = SlowForSome()
    x = tagged(64, 1)
    a = boundary_distances(inner, x, clip=None, batch_size=64, max_iter=30, method=method)
    b = boundary_distances(inner, x, clip=None, batch_size=5, max_iter=30, method=method)
    assert torch.allclose(a.distance, b.distance, rtol=1e-6)
    assert torch.equal(a.adv_label, b.adv_label)
    assert torch.equal(a.iterations, b.iterations)


def test_max_iter_reports_not_converged_with_last_norm():
    class Flat(nn.Module):  # logits never change with the input: no boundary to cross
        def forward(self, x):
            return torch.tensor([[2.0, 1.0, 0.0]], dtype=x.dtype).expand(len(x), 3) + 0 * x.flatten(1).sum(1, keepdim=True)

    x = torch.rand(5, 1, 2, 2, dtype=torch.float64)
    res = boundary_distances(Flat(), x, clip=None, max_iter=7)
    assert not bool(res.converged.any())
    assert bool((res.iterations == 7).all())
    assert bool((res.adv_label == 0).all())
    assert torch.isfinite(res.distance).all()


def test_clip_inactive_inside_the_box_and_binding_at_its_edge():
    model = affine(5, shape=(3, 4, 4), seed=4)
    with torch.no_grad():
        model[1].weight.mul_(20)  # short distances: adversarial points stay well inside [0, 1]
    x = 0.4 + 0.2 * torch.rand(100, 3, 4, 4, dtype=torch.float64)
    clipped = boundary_distances(model, x, clip=(0.0, 1.0), box_aware=True)
    free = boundary_distances(model, x, clip=None)
    assert torch.allclose(clipped.distance, free.distance)

    class OnePixel(nn.Module):  # class 1 iff x > 1.005: the boundary lies outside the pixel box
        def forward(self, x):
            v = x.flatten(1)[:, :1]
            return torch.cat([torch.zeros_like(v), v - 1.005], 1)

    x = torch.full((3, 1, 1, 1), 0.9, dtype=torch.float64)
    assert bool(boundary_distances(OnePixel(), x, clip=None).converged.all())
    boxed = boundary_distances(OnePixel(), x, clip=(0.0, 1.0), max_iter=5, box_aware=True)
    assert not bool(boxed.converged.any())
    assert torch.allclose(boxed.distance, torch.full((3,), 0.1, dtype=torch.float32))


def test_uint8_input_is_scaled_to_unit_range():
    model = affine(4, shape=(3, 2, 2), seed=5).float()
    x8 = torch.randint(0, 256, (30, 3, 2, 2), dtype=torch.uint8)
    a = boundary_distances(model, x8, clip=None)
    b = boundary_distances(model, x8.float() / 255, clip=None)
    assert torch.allclose(a.distance, b.distance)


def test_model_parameters_and_mode_are_restored():
    model = affine(3)
    model.train()
    boundary_distances(model, torch.randn(4, 3, 4, 4, dtype=torch.float64), clip=None)
    assert model.training
    assert all(p.requires_grad for p in model.parameters())


def test_box_aware_step_moves_only_free_pixels():
    """f = x_b - x_a - 0.5 with x_a at the lower bound 0: the minimal step within the box moves x_b only.

    Free-space DeepFool would split the step between x_a (out of the box) and x_b; clipping x_a then
    cancels half of every step. Within the box the closed form is 0.5 - x_b.
    """
    class TwoPixel(nn.Module):
        def forward(self, x):
            v = x.flatten(1)
            f = v[:, 1] - v[:, 0] - 0.5
            return torch.stack([torch.zeros_like(f), f], 1)

    x = torch.tensor([[0.0, 0.2], [0.0, 0.1], [0.0, 0.45]], dtype=torch.float64).view(3, 1, 1, 2)
    res = boundary_distances(TwoPixel(), x, clip=(0.0, 1.0), overshoot=0.02, box_aware=True)
    expected = 0.5 - x.flatten(1)[:, 1]
    assert bool(res.converged.all())
    assert bool((res.iterations == 1).all())
    rel = (res.distance.double() / 1.02 - expected).abs() / expected
    assert rel.max() < 0.01


# ------------------------------------------------------------------------------------------------
# SuperDeepFool (method="superdeepfool")

class Parabola(nn.Module):
    """Two classes in the plane: class 1 iff x_2 > a x_1^2 + 1 (a curved boundary, where DeepFool's
    linearisation lands on a boundary point that is not the closest one)."""

    def __init__(self, a: float):
        super().__init__()
        self.a = a

    def forward(self, x):
        u, v = x[:, 0], x[:, 1]
        g = v - self.a * u ** 2 - 1
        return torch.stack([torch.zeros_like(g), g], 1)


def parabola_case(a: float, n: int = 120, seed: int = 0):
    """Points below the parabola and their exact distance to it (dense search along the curve)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.stack([torch.rand(n, generator=gen, dtype=torch.float64) * 3 - 1.5,
                     torch.rand(n, generator=gen, dtype=torch.float64) * 0.8 - 0.5], 1)
    t = torch.linspace(-6, 6, 600_001, dtype=torch.float64)
    exact = torch.cdist(x, torch.stack([t, a * t ** 2 + 1], 1)).min(1).values
    return x, exact


@pytest.mark.parametrize("a", [0.1, 0.3])
def test_superdeepfool_reaches_the_closest_point_of_a_curved_boundary(a):
    x, exact = parabola_case(a)
    model = Parabola(a)
    df = boundary_distances(model, x, clip=None, overshoot=0.02, batch_size=32)
    sdf = boundary_distances(model, x, clip=None, overshoot=0.02, batch_size=32, method="superdeepfool")
    assert bool(sdf.converged.all()) and bool((sdf.adv_label == 1).all())
    rel = (sdf.distance.double() - exact) / exact
    assert rel.min() > -1e-4          # never shorter than the minimum: each reported point is adversarial
    assert rel.max() < 0.01           # and within 1% of it
    # DeepFool (overshoot and all) is farther on this boundary; SDF starts from DeepFool's crossing and
    # only shortens it
    assert float(((df.distance.double() - exact) / exact).mean()) > 0.015
    assert bool((sdf.distance <= df.distance * (1 + 1e-6)).all())


def test_superdeepfool_on_a_strongly_curved_boundary_is_never_worse_than_deepfool():
    x, exact = parabola_case(2.0, n=60, seed=1)
    df = boundary_distances(Parabola(2.0), x, clip=None, batch_size=16)
    sdf = boundary_distances(Parabola(2.0), x, clip=None, batch_size=16, method="superdeepfool", max_iter=30)
    assert bool((sdf.distance <= df.distance * (1 + 1e-6)).all())
    assert float(sdf.distance.double().mean()) < float(df.distance.double().mean())
    assert float(((sdf.distance.double() - exact) / exact).min()) > -1e-4
    assert int(sdf.iterations.max()) <= 30


@pytest.mark.parametrize("candidates", [2, 7])
def test_superdeepfool_on_affine_classifiers_matches_the_closed_form_without_overshoot(candidates):
    """On an affine classifier DeepFool's first step is already normal to the boundary; SDF's line
    search then removes the overshoot, so the distance is the closed form itself."""
    model = affine(7, seed=6)
    x = torch.randn(150, 3, 4, 4, dtype=torch.float64)
    dist, kstar, k0 = closed_form(model, x)
    res = boundary_distances(model, x, clip=None, overshoot=0.02, batch_size=40, method="superdeepfool",
                             candidates=candidates)
    assert bool(res.converged.all())
    assert bool((res.clean_label == k0).all())
    if candidates == 7:
        assert bool((res.adv_label == kstar).all())
        rel = ((res.distance.double() - dist) / dist).abs()
        assert rel.max() < 0.01
    assert bool((res.iterations <= 2).all())   # one DeepFool step, then the aligned perturbation stops it


def test_superdeepfool_leaves_the_input_untouched_and_reports_failures():
    x, _ = parabola_case(0.3, n=20)
    before = x.clone()
    boundary_distances(Parabola(0.3), x, clip=None, method="superdeepfool")
    assert torch.equal(x, before)

    class Flat(nn.Module):
        def forward(self, x):
            return torch.tensor([[2.0, 1.0]], dtype=x.dtype).expand(len(x), 2) + 0 * x.flatten(1).sum(1, keepdim=True)

    res = boundary_distances(Flat(), x, clip=None, method="superdeepfool", max_iter=6)
    assert not bool(res.converged.any()) and bool((res.iterations == 6).all())
    assert torch.isfinite(res.distance).all() and bool((res.adv_label == 0).all())
    with pytest.raises(ValueError, match="method"):
        boundary_distances(Flat(), x, method="cw")


def test_superdeepfool_respects_the_pixel_box():
    model = affine(5, shape=(1, 4, 4), seed=7)
    x = torch.rand(50, 1, 4, 4, dtype=torch.float64)
    exact, _, _ = closed_form(model, x)
    res = boundary_distances(model, x, clip=(0.0, 1.0), method="superdeepfool", box_aware=True)
    assert bool(res.converged.all())
    # every reported point is adversarial and inside the box: never shorter than the free minimum
    assert bool((res.distance.double() >= exact * (1 - 1e-6)).all())
    res_df = boundary_distances(model, x, clip=(0.0, 1.0), box_aware=True)
    assert bool((res.distance <= res_df.distance * (1 + 1e-6)).all())
