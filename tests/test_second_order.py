"""The second-order α gradient (docs/method.md, "Search") against the exact unrolled DARTS gradient.

``BilevelSearch`` replaces the Hessian-vector product of the unrolled gradient with a central finite
difference; here the same quantity is computed exactly with double backward (float64, plain autograd),
so the test checks the equation, not only that the step runs. Smooth ops only (no ReLU FFN, mean
pooling): a finite difference across a kink would measure the kink, not the implementation.
"""
import torch

from revsearch.search import BilevelSearch, SearchConfig, Supernet, sequence_loss
from tests.search_fixtures import reversal_batch, tiny_config

SMOOTH = dict(encoder_ops=("conv3", "dynconv3", "self_attn", "glu", "identity", "zero"),
              decoder_ops=("conv3", "self_attn", "glu", "identity", "zero", "cross_attn"),
              pooling="mean", dropout=0.0, mode="plain")


def loss_of(net, batch):
    src, tgt_in, tgt_out = batch
    return sequence_loss(net(src, tgt_in), tgt_out, 0.1)


def exact_unrolled_terms(net, weight_batch, arch_batch, xi):
    """(∇α L_a(θ', α), ∇²_{α,θ} L_w(θ, α) v) with θ' = θ − ξ ∇θ L_w(θ, α) and v = ∇θ' L_a(θ', α)."""
    weights, alphas = net.weight_parameters(), net.arch_parameters()
    theta = [w.detach().clone() for w in weights]
    grads_w = torch.autograd.grad(loss_of(net, weight_batch), weights, allow_unused=True)
    with torch.no_grad():
        for w, g in zip(weights, grads_w):
            if g is not None:
                w.sub_(xi * g)
    grads = torch.autograd.grad(loss_of(net, arch_batch), alphas + weights, allow_unused=True)
    d_alpha = grads[:len(alphas)]
    v = [torch.zeros_like(w) if g is None else g for w, g in zip(weights, grads[len(alphas):])]
    with torch.no_grad():
        for w, t in zip(weights, theta):
            w.copy_(t)
    g_theta = torch.autograd.grad(loss_of(net, weight_batch), weights, create_graph=True, allow_unused=True)
    inner = sum((g * u).sum() for g, u in zip(g_theta, v) if g is not None)
    hvp = torch.autograd.grad(inner, alphas)
    return torch.cat([d.flatten() for d in d_alpha]), torch.cat([h.flatten() for h in hvp])


def test_finite_difference_hessian_vector_product_matches_double_backward():
    torch.manual_seed(0)
    net = Supernet(tiny_config(**SMOOTH)).double()
    with torch.no_grad():   # a decided-looking α, so the mixture weights are not all equal
        for a in net.arch_parameters():
            a.normal_()
    xi = 0.05
    weight_batch, arch_batch = reversal_batch(0), reversal_batch(1)
    d_alpha, hvp = exact_unrolled_terms(net, weight_batch, arch_batch, xi)
    assert hvp.norm() > 1e-3 * d_alpha.norm()   # the second-order term is not negligible here

    search = BilevelSearch(net, SearchConfig(second_order=True, lr=xi, warmup_steps=0))
    search.alpha_optimizer.step = lambda: None   # keep α and θ where they are, read α's gradient
    search.weight_optimizer.step = lambda: None
    search.step(weight_batch, arch_batch)
    got = torch.cat([a.grad.flatten() for a in net.arch_parameters()])
    # g_α = ∇α L_a(θ', α) − ξ · HVP: recover the implementation's HVP estimate and compare
    estimated_hvp = (d_alpha - got) / xi
    rel = ((estimated_hvp - hvp).norm() / hvp.norm()).item()
    assert rel < 1e-3, rel
