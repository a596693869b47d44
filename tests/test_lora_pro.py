"""LoRA-Pro: the closed form against an independent float64 derivation, and the optimizers' contracts."""

import copy

import pytest
import torch
from torch import nn

import lowrank_lab as lrl
from lowrank_lab.methods.lora_pro import (
    LoRAProAdamW,
    LoRAProSGD,
    adjusted_gradients,
    equivalent_gradient,
    solve_sylvester,
)

SHAPES = [(7, 5, 1), (20, 12, 3), (5, 9, 2), (64, 48, 8), (96, 160, 16)]  # (out m, in n, r): r=1, m≠n both ways
SCALINGS = [2.0, 16 / 8**0.5]  # alpha/r with (16, 8) and rsLoRA's alpha/sqrt(r)


def problem(m, n, r, seed=0):
    gen = torch.Generator().manual_seed(seed)
    A, B, g = (torch.randn(shape, generator=gen) for shape in ((r, n), (m, r), (m, n)))
    return A, B, g


def reference(A, B, g, s):
    """Float64, written from the paper's formulas with explicit inverses, projectors and a Kronecker
    solve of the Sylvester equation (a different route from the library's eigendecompositions)."""
    A, B, g = A.double(), B.double(), g.double()
    m, r = B.shape
    grad_A, grad_B = s * B.T @ g, s * g @ A.T
    BtB_inv, AAt_inv = torch.linalg.inv(B.T @ B), torch.linalg.inv(A @ A.T)
    P_B = B @ BtB_inv @ B.T
    C = -(1 / s**2) * BtB_inv @ grad_A @ A.T
    eye = torch.eye(r, dtype=torch.float64)
    K = torch.kron(eye, B.T @ B) + torch.kron((A @ A.T).T.contiguous(), eye)  # column-major vec
    X = torch.linalg.solve(K, C.T.reshape(-1)).reshape(r, r).T
    new_A = (1 / s**2) * BtB_inv @ grad_A + X @ A
    new_B = (1 / s**2) * (torch.eye(m, dtype=torch.float64) - P_B) @ grad_B @ AAt_inv - B @ X
    P_A = A.T @ AAt_inv @ A
    projected = P_B @ g + (torch.eye(m, dtype=torch.float64) - P_B) @ g @ P_A
    return new_A, new_B, projected


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("m, n, r", SHAPES)
@pytest.mark.parametrize("s", SCALINGS)
def test_adjusted_gradients_match_float64_derivation(m, n, r, s):
    A, B, g = problem(m, n, r)
    new_A, new_B = adjusted_gradients(A, B, s * B.T @ g, s * g @ A.T, s)
    ref_A, ref_B, projected = reference(A, B, g, s)
    assert new_A.dtype == torch.float32
    assert rel(new_A, ref_A) <= 1e-6 and rel(new_B, ref_B) <= 1e-6
    assert rel(equivalent_gradient(A, B, new_A, new_B, s), projected) <= 1e-6


@pytest.mark.parametrize("m, n, r", SHAPES)
def test_equivalent_gradient_independent_of_X_and_a_descent_direction(m, n, r):
    A, B, g = problem(m, n, r, seed=1)
    s = 2.0
    _, _, projected = reference(A, B, g, s)
    for x_mode in ("sylvester", "zero", "symmetric"):
        new_A, new_B = adjusted_gradients(A, B, s * B.T @ g, s * g @ A.T, s, x_mode=x_mode)
        g_tilde = equivalent_gradient(A, B, new_A, new_B, s)
        assert rel(g_tilde, projected) <= 1e-6, x_mode
        assert (g * g_tilde).sum() >= 0  # ⟨g, g̃⟩ = ‖P_B g‖² + ‖(I−P_B) g P_A‖²


def test_sylvester_residual_and_optimality_of_X():
    gen = torch.Generator().manual_seed(2)
    for r in (1, 3, 8):
        M1, M2 = torch.randn(r, r, generator=gen), torch.randn(r, r, generator=gen)
        P, Q, C = M1 @ M1.T + 0.1 * torch.eye(r), M2 @ M2.T + 0.1 * torch.eye(r), torch.randn(r, r, generator=gen)
        X = solve_sylvester(P, Q, C)
        assert (P @ X + X @ Q - C).norm() <= 1e-5 * C.norm()
    # X* minimises ‖g_A − g_A^lora‖² + ‖g_B − g_B^lora‖²: any perturbation of X makes it worse.
    A, B, g = (t.double() for t in problem(12, 10, 3, seed=3))
    s = 2.0
    grad_A, grad_B = s * B.T @ g, s * g @ A.T
    base_A, base_B = adjusted_gradients(A, B, grad_A, grad_B, s, x_mode="zero")
    best_A, best_B = adjusted_gradients(A, B, grad_A, grad_B, s)
    X_star = torch.linalg.lstsq(A.T, (best_A - base_A).T).solution.T  # recover X from new_A = base_A + X A

    def objective(X):
        return ((base_A + X @ A - grad_A) ** 2).sum() + ((base_B - B @ X - grad_B) ** 2).sum()

    f_star = objective(X_star)
    for _ in range(20):
        E = torch.randn(3, 3, dtype=torch.float64, generator=gen)
        assert objective(X_star + 1e-3 * E) > f_star
        assert objective(X_star - 1e-3 * E) > f_star


def test_B_zero_rule_is_the_exact_column_space_projection():
    A, _, g = problem(6, 9, 3, seed=4)
    B = torch.zeros(6, 3)
    s = 2.0
    new_A, new_B = adjusted_gradients(A, B, s * B.T @ g, s * g @ A.T, s)
    assert torch.count_nonzero(new_A) == 0
    P_A = A.double().T @ torch.linalg.inv(A.double() @ A.double().T) @ A.double()
    assert rel(equivalent_gradient(A, B, new_A, new_B, s), g.double() @ P_A) <= 1e-6


def test_bad_math_input():
    A, B, g = problem(5, 4, 2)
    with pytest.raises(ValueError, match="x_mode must be one of .*got 'fancy'"):
        adjusted_gradients(A, B, B.T @ g, g @ A.T, 2.0, x_mode="fancy")
    with pytest.raises(ValueError, match="scaling must be a positive finite number, got 0"):
        adjusted_gradients(A, B, B.T @ g, g @ A.T, 0)
    with pytest.raises(ValueError, match="same r"):
        adjusted_gradients(A, B[:, :1], B.T @ g, g @ A.T, 2.0)


# ----------------------------------------------------------------------------------------------
# Optimizers
# ----------------------------------------------------------------------------------------------
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin0, self.lin1, self.head = nn.Linear(6, 8), nn.Linear(8, 5), nn.Linear(5, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.lin1(torch.tanh(self.lin0(x)))))


def lora_net(seed=0, nonzero_B=False, **kwargs):
    torch.manual_seed(seed)
    config = lrl.LoRAConfig(r=2, alpha=4, target_modules=("lin0", "lin1"), modules_to_save=("head",), **kwargs)
    model = lrl.inject(Net(), config)
    if nonzero_B:
        gen = torch.Generator().manual_seed(seed + 100)
        with torch.no_grad():
            for layer in lrl.adapter_layers(model).values():
                layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.5)
    return model


def data(n=8, seed=5):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=gen), torch.randn(n, 2, generator=gen)


def loss_fn(model, x, y):
    return ((model(x) - y) ** 2).mean()


def projected(A, B, U):
    A, B, U = A.double(), B.double(), U.double()
    P_B = B @ torch.linalg.pinv(B)
    P_A = torch.linalg.pinv(A) @ A
    return P_B @ U + (torch.eye(B.shape[0], dtype=torch.float64) - P_B) @ U @ P_A


@pytest.mark.parametrize("nonzero_B", [False, True])
def test_full_mode_first_step_is_the_projected_adam_direction(nonzero_B):
    model = lora_net(nonzero_B=nonzero_B, rank_pattern={"lin1": 3}, use_rslora=True)
    before = {n: (l.lora_A.detach().clone(), l.lora_B.detach().clone()) for n, l in lrl.adapter_layers(model).items()}
    x, y = data()
    loss_fn(model, x, y).backward()
    opt, lr = LoRAProAdamW(model, lr=1e-3, mode="full"), 1e-3
    # first-step Adam direction of g̃: m̂ = g̃, v̂ = g̃², so U = g̃ / (|g̃| + ε)
    expected = {}
    for name, layer in lrl.adapter_layers(model).items():
        A, B, s = layer.lora_A, layer.lora_B, layer.scaling
        g_tilde = equivalent_gradient(A, B, *adjusted_gradients(A, B, A.grad, B.grad, s), s)
        expected[name] = projected(A.detach(), B.detach(), g_tilde / (g_tilde.abs() + 1e-8))
    opt.step()
    for name, layer in lrl.adapter_layers(model).items():
        A0, B0 = before[name]
        delta_A, delta_B = (A0 - layer.lora_A) / lr, (B0 - layer.lora_B) / lr
        moved = equivalent_gradient(A0, B0, delta_A, delta_B, layer.scaling)
        assert rel(moved, expected[name]) <= 1e-3, name  # the /lr division amplifies fp32 round-off


@pytest.mark.parametrize("make_opt", [
    lambda m: LoRAProAdamW(m, lr=1e-2, mode="full", weight_decay=0.1),
    lambda m: LoRAProAdamW(m, lr=1e-2, mode="efficient"),
    lambda m: LoRAProSGD(m, lr=1e-1),
], ids=["full", "efficient", "sgd"])
def test_gradient_accumulation_equals_full_batch(make_opt):
    x, y = data(8)
    one, two = lora_net(nonzero_B=True), lora_net(nonzero_B=True)
    opt_one, opt_two = make_opt(one), make_opt(two)
    for _ in range(3):
        opt_one.zero_grad()
        loss_fn(one, x, y).backward()
        opt_one.step()
        opt_two.zero_grad()
        for half in (slice(0, 4), slice(4, 8)):
            (loss_fn(two, x[half], y[half]) / 2).backward()
        opt_two.step()
    for (name, p1), (_, p2) in zip(one.named_parameters(), two.named_parameters()):
        torch.testing.assert_close(p1, p2, rtol=1e-5, atol=1e-6, msg=name)


def test_other_parameters_get_plain_adamw_and_base_weights_never_change():
    model = lora_net(nonzero_B=True)
    reference = copy.deepcopy(model.head)
    frozen = {n: l.base_layer.weight.detach().clone() for n, l in lrl.adapter_layers(model).items()}
    opt = LoRAProAdamW(model, lr=1e-2, weight_decay=0.01)
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.01)
    x, y = data()
    for _ in range(3):
        opt.zero_grad()
        loss_fn(model, x, y).backward()
        for p, q in zip(model.head.parameters(), reference.parameters()):
            q.grad = p.grad.clone()
        opt.step()
        ref_opt.step()
    for p, q in zip(model.head.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q)
    for name, layer in lrl.adapter_layers(model).items():
        assert torch.equal(layer.base_layer.weight, frozen[name])


def test_each_layer_uses_its_own_scaling():
    model = lora_net(nonzero_B=True, rank_pattern={"lin1": 3}, use_rslora=True)
    x, y = data()
    loss_fn(model, x, y).backward()
    layers = lrl.adapter_layers(model)
    assert layers["lin0"].scaling != layers["lin1"].scaling
    expected = {n: adjusted_gradients(l.lora_A, l.lora_B, l.lora_A.grad, l.lora_B.grad, l.scaling) for n, l in layers.items()}
    before = {n: (l.lora_A.detach().clone(), l.lora_B.detach().clone()) for n, l in layers.items()}
    LoRAProSGD(model, lr=0.5).step()
    for name, layer in layers.items():
        torch.testing.assert_close(layer.lora_A, before[name][0] - 0.5 * expected[name][0])
        torch.testing.assert_close(layer.lora_B, before[name][1] - 0.5 * expected[name][1])


def test_bad_optimizer_input_changes_nothing():
    with pytest.raises(ValueError, match="needs a model with trainable LoRA layers"):
        LoRAProAdamW(Net(), lr=1e-3)
    model = lora_net(nonzero_B=True)
    with pytest.raises(ValueError, match="mode must be one of .*got 'turbo'"):
        LoRAProAdamW(model, lr=1e-3, mode="turbo")
    with pytest.raises(ValueError, match="x_mode must be one of"):
        LoRAProSGD(model, lr=1e-3, x_mode="nope")
    with pytest.raises(ValueError, match="lr must be a positive number, got 0"):
        LoRAProAdamW(model, lr=0)
    opt = LoRAProAdamW(model, lr=1e-2)
    x, y = data()
    loss_fn(model, x, y).backward()
    layers = lrl.adapter_layers(model)
    layers["lin1"].lora_B.grad[0, 0] = float("nan")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="non-finite gradient in lin1"):
        opt.step()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert not opt.state  # no moment was updated either


def test_usable_in_a_hugging_face_trainer(tmp_path):
    """`Trainer(optimizers=(opt, scheduler))` steps our optimizer: the same parameters as a manual loop."""
    from torch.utils.data import Dataset
    from transformers import Trainer, TrainingArguments

    from lowrank_lab.assets import load_model

    class Fixed(Dataset):  # one full batch per step, so shuffling cannot change what a step sees
        def __init__(self):
            gen = torch.Generator().manual_seed(1)
            self.ids = torch.randint(0, 500, (4, 12), generator=gen)

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, i):
            return {"input_ids": self.ids[i], "labels": self.ids[i]}

    def build():
        torch.manual_seed(0)
        model = load_model("tiny-llama", kind="causal_lm")
        model = lrl.inject(model, lrl.LoRAConfig(r=4, alpha=8, target_modules=("q_proj", "v_proj")))
        lrl.checks.randomize_adapters(model, std=0.05, seed=2)  # non-zero B: the adjustment is non-trivial
        optimizer = LoRAProAdamW(model, lr=1e-3, mode="full")
        return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    model, optimizer, scheduler = build()
    base_before = {n: layer.weight.detach().clone() for n, layer in lrl.adapter_layers(model).items()}
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, num_train_epochs=3,
                             max_grad_norm=0.0, report_to=[], save_strategy="no", logging_strategy="no",
                             use_cpu=True, disable_tqdm=True, dataloader_drop_last=False)
    Trainer(model=model, args=args, train_dataset=Fixed(), optimizers=(optimizer, scheduler)).train()

    manual, manual_opt, _ = build()
    batch = Fixed().ids
    for _ in range(3):
        manual_opt.zero_grad()
        manual(input_ids=batch, labels=batch).loss.backward()
        manual_opt.step()
    trained, reference = lrl.adapter_state_dict(model), lrl.adapter_state_dict(manual)
    assert any(not torch.equal(v, lrl.adapter_state_dict(build()[0])[k]) for k, v in trained.items())
    for key in reference:
        torch.testing.assert_close(trained[key], reference[key], atol=1e-6, rtol=1e-5)
    for name, layer in lrl.adapter_layers(model).items():
        assert torch.equal(layer.weight, base_before[name])
