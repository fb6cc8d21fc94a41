"""The fitting loop on a toy generator (a free image behind a sigmoid) — no real network."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from deepprior.fit import fit, fit_many, resolve_device
from deepprior.operators import Identity
from deepprior.stopping import Fixed, Oracle, Patience


class PixelNet(nn.Module):
    """net(z) = sigmoid(θ + 0·z): fits anything, so it overfits noise like an unstopped DIP."""

    def __init__(self, shape, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.theta = nn.Parameter(0.01 * torch.randn(1, *shape, generator=g))

    def forward(self, z):
        return torch.sigmoid(self.theta + 0 * z.mean())


def _problem(seed=0, shape=(1, 13, 11)):
    g = torch.Generator().manual_seed(seed)
    clean = torch.linspace(0.2, 0.8, shape[1] * shape[2]).reshape(1, 1, shape[1], shape[2])
    clean = clean.expand(1, *shape).contiguous()
    noisy = clean + 0.2 * torch.randn(clean.shape, generator=g)
    return clean, noisy, Identity(shape), torch.zeros(1, 1, 1, 1)


def test_returns_the_selected_iterate_not_the_last():
    clean, noisy, op, z = _problem()
    net = PixelNet(op.image_shape)
    result = fit(net, z, noisy, op, policy=Oracle(clean), max_num_iter=300,
                 learning_rate=0.05, ground_truth=clean, device="cpu")
    assert result.num_steps == 300
    assert 1 <= result.best_step < 300
    best = int(np.argmax(result.psnr)) + 1
    assert result.best_step == best
    final = -10 * np.log10(torch.mean((net(z).detach() - clean) ** 2).item())
    returned = -10 * np.log10(torch.mean((result.output - clean) ** 2).item())
    assert returned == pytest.approx(result.psnr[best - 1], abs=1e-4)
    assert returned > final + 1.0  # overfitting the noise lowered the last iterate


def test_same_seed_same_result_with_input_noise():
    clean, noisy, op, z = _problem()
    runs = [fit(PixelNet(op.image_shape, seed=1), z, noisy, op, policy=Fixed(40),
                max_num_iter=40, reg_noise_std=0.1, ema=0.9, seed=5, device="cpu")
            for _ in range(2)]
    torch.testing.assert_close(runs[0].output, runs[1].output, rtol=0, atol=0)
    np.testing.assert_array_equal(runs[0].loss, runs[1].loss)
    assert runs[0].best_step == 40 and "40" in runs[0].stop_reason


def test_interrupt_returns_best_so_far():
    clean, noisy, op, z = _problem()

    def interrupt(state):
        if state.step == 25:
            raise KeyboardInterrupt

    result = fit(PixelNet(op.image_shape), z, noisy, op, policy=Oracle(clean),
                 max_num_iter=500, learning_rate=0.05, ground_truth=clean,
                 callback=interrupt, device="cpu")
    assert result.stop_reason.startswith("interrupted at iteration 25")
    assert result.num_steps == 25
    assert 1 <= result.best_step <= 25
    assert result.best_step == int(np.argmax(result.psnr)) + 1


def test_callback_can_stop_and_sees_gradients():
    clean, noisy, op, z = _problem()
    seen = []

    def stop_at_7(state):
        seen.append(state.net.theta.grad.norm().item())
        return state.step == 7

    result = fit(PixelNet(op.image_shape), z, noisy, op, policy=Fixed(100), max_num_iter=100,
                 callback=stop_at_7, device="cpu")
    assert result.num_steps == 7 and "callback" in result.stop_reason
    assert len(seen) == 7 and all(g > 0 for g in seen)
    # the reason names the iterate returned, as after Ctrl-C (it named the stop alone)
    assert result.stop_reason.endswith("; returning the last iterate (iteration 7)")


def test_divergence_guard_restores_and_halves_lr():
    clean, noisy, op, z = _problem()

    def poison(state):
        if state.step == 30:
            with torch.no_grad():
                state.net.theta.fill_(float("nan"))

    result = fit(PixelNet(op.image_shape), z, noisy, op, policy=Fixed(60), max_num_iter=60,
                 learning_rate=0.05, callback=poison, snapshot_every=10, device="cpu")
    assert result.num_restarts == 1
    assert result.final_learning_rate == pytest.approx(0.025)
    assert torch.isfinite(result.output).all()
    assert not np.isfinite(result.loss[30])  # the poisoned step is in the history
    assert np.isfinite(result.loss[-1])


def test_a_second_restart_from_one_snapshot_reloads_its_adam_state():
    from deepprior.fit import _Guard

    net = nn.Linear(2, 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)

    def step():
        optimizer.zero_grad()
        net(torch.ones(1, 2)).sum().backward()
        optimizer.step()

    step()
    guard = _Guard(net, optimizer, max_restarts=2)  # the snapshot: after one step
    saved = copy.deepcopy(optimizer.state_dict()["state"])
    for _ in range(2):  # diverging twice before the next snapshot
        assert guard.restore()
        restored = optimizer.state_dict()["state"]
        for index, moments in saved.items():
            for key, value in moments.items():
                torch.testing.assert_close(restored[index][key], value)
        step()
        step()


def test_persistent_divergence_stops_with_reason():
    _, noisy, op, z = _problem()

    class NaNNet(PixelNet):
        def forward(self, z):
            return super().forward(z) * float("nan")

    result = fit(NaNNet(op.image_shape), z, noisy, op, policy=Fixed(50), max_num_iter=50,
                 max_restarts=2, device="cpu")
    assert result.stop_reason.startswith("diverged")
    assert result.num_restarts == 2 and result.num_steps == 3


def test_patience_stops_early():
    clean, noisy, op, z = _problem()
    result = fit(PixelNet(op.image_shape), z, noisy, op,
                 policy=Patience(patience=20, min_delta=1e-3), max_num_iter=5000,
                 learning_rate=0.05, device="cpu")
    assert result.num_steps < 5000
    assert result.best_step <= result.num_steps


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("gpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available here, so device='cuda' "
                                             "cannot be used; use 'cpu' or 'auto'"):
            resolve_device("cuda")


def test_resolve_device_refuses_a_cuda_index_the_machine_lacks(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match=r"device='cuda:2': this machine has 2 CUDA device\(s\), "
                                         "cuda:0 to cuda:1"):
        resolve_device("cuda:2")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fit_on_cuda_matches_shapes():
    clean, noisy, op, z = _problem()
    result = fit(PixelNet(op.image_shape), z, noisy, op, policy=Fixed(20), max_num_iter=20,
                 device="cuda")
    assert result.output.device.type == "cpu" and result.output.shape == clean.shape


def test_small_spikes_near_an_exact_fit_are_not_divergence():
    """Adam's spikes at a loss ~1e-4 of the start are not restored (seen in noiseless CS)."""
    clean, _, op, z = _problem()
    calls = {"n": 0}

    def spike(state):
        # push the fit 10x above its current loss, but still ~1e-3 of the starting loss
        if state.step == 150:
            calls["n"] += 1
            with torch.no_grad():
                state.net.theta.add_(0.02 * torch.sign(torch.randn_like(state.net.theta)))

    result = fit(PixelNet(op.image_shape), z, clean, op, policy=Fixed(200), max_num_iter=200,
                 learning_rate=0.05, callback=spike, device="cpu")
    assert calls["n"] == 1
    assert result.loss[150] > 3.2 * result.loss[149]  # a real relative jump ...
    assert result.loss[150] < 1e-2 * result.loss[0]  # ... that is small in absolute terms
    assert result.num_restarts == 0 and result.stop_reason.startswith("reached")


@pytest.mark.parametrize("at, restarts", [(5, 0), (40, 1)])
def test_a_jump_in_the_first_iterations_is_not_divergence(at, restarts):
    """The same jump is restored after the warm-up (JUMP_WARMUP) and left alone within it."""
    clean, noisy, op, z = _problem()

    def kick(state):
        if state.step == at:
            with torch.no_grad():
                state.net.theta.mul_(-1).add_(3.0)  # far from the data: loss ×5 or more

    result = fit(PixelNet(op.image_shape), z, noisy, op, policy=Fixed(60), max_num_iter=60,
                 learning_rate=0.05, callback=kick, snapshot_every=10, device="cpu")
    assert result.loss[at] > 5 * result.loss[at - 1]
    assert result.num_restarts == restarts and result.stop_reason.startswith("reached")


def test_dip_fitting_a_flat_image_does_not_diverge():
    """Adam's start-up transient on a near-fit start (seen: 0.0076 → 0.063 at iteration 4, at
    the paper's 128 channels per scale)."""
    from deepprior import reconstruct

    result = reconstruct(np.full((64, 64), 0.5, np.float32), net="dip", max_num_iter=25,
                         stop="patience", seed=0, net_options={"channels": 128})
    assert max(result.history["loss"][:8]) > 5 * result.history["loss"][0]
    assert result.config["num_restarts"] == 0
    assert not result.stop_reason.startswith("diverged")


class Recorder:
    """A policy that records the iterations it learns of, in order; stops at ``stop_at``."""

    def __init__(self, stop_at):
        self.stop_at, self.seen, self.best_step, self.reason = stop_at, [], 0, ""

    def update(self, step, loss, output):
        self.seen.append(step)
        if step == 7:  # the iterate it will return, chosen before the stop
            self.best_step = step
        self.reason = f"seen {step}"
        return step >= self.stop_at


@pytest.mark.parametrize("sync_every", [1, 3, 8])
def test_batched_reads_give_the_policy_every_iteration_in_order(sync_every):
    clean, noisy, op, z = _problem()
    policy = Recorder(stop_at=11)
    result = fit(PixelNet(op.image_shape), z, noisy, op, policy=policy, max_num_iter=40,
                 sync_every=sync_every, device="cpu", ground_truth=clean, lr_decay=(0.5, 2))
    reference = fit(PixelNet(op.image_shape), z, noisy, op, policy=Recorder(stop_at=11),
                    max_num_iter=40, sync_every=1, device="cpu", ground_truth=clean,
                    lr_decay=(0.5, 2))
    # the schedule stepped for the discarded iterations 12..16 too (sync_every=8), but the
    # rate reported is the stop's: 5 halvings in the 10 steps before iteration 11
    assert result.final_learning_rate == reference.final_learning_rate == 0.01 / 2 ** 5
    assert policy.seen == list(range(1, 12))  # in order, none skipped, none after the stop
    assert (result.best_step, result.num_steps) == (7, 11)
    assert torch.equal(result.output, reference.output)  # the same iterate, computed late
    np.testing.assert_array_equal(result.loss, reference.loss)
    assert len(result.psnr) == 11


def test_a_callback_needs_every_iteration():
    _, noisy, op, z = _problem()
    with pytest.raises(ValueError, match="callback needs sync_every=1"):
        fit(PixelNet(op.image_shape), z, noisy, op, policy=Fixed(3), max_num_iter=3,
            sync_every=4, callback=lambda state: None, device="cpu")


def test_bf16_runs_the_network_in_bfloat16_and_keeps_float32_outside():
    clean, _, op, _ = _problem(shape=(1, 16, 16))
    seen = []

    class ConvNet(nn.Module):  # a convolution autocast turns to bfloat16
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 1, 3, padding=1)

        def forward(self, z):
            out = self.conv(z)
            seen.append(out.dtype)
            return torch.sigmoid(out)

    z = torch.rand(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    runs = {p: fit(ConvNet(), z, clean, op, policy=Fixed(60), max_num_iter=60,
                   learning_rate=0.05, ground_truth=clean, device="cpu", precision=p)
            for p in ("fp32", "bf16")}
    assert seen[0] == torch.float32 and seen[-1] == torch.bfloat16
    for run in runs.values():
        assert run.output.dtype == torch.float32 and np.isfinite(run.loss).all()
        assert run.loss[-1] < 0.8 * run.loss[0]  # it learns
    assert abs(runs["bf16"].psnr[-1] - runs["fp32"].psnr[-1]) < 1.0  # the same fit, rounded


def test_an_unknown_precision_is_refused_before_fitting():
    _, noisy, op, z = _problem()
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        fit(PixelNet(op.image_shape), z, noisy, op, policy=Fixed(3), max_num_iter=3,
            precision="fp16", device="cpu")


def test_a_penalty_is_added_to_the_loss():
    _, noisy, op, z = _problem()
    runs = [fit(PixelNet(op.image_shape), z, noisy, op, policy=Fixed(5), max_num_iter=5,
                device="cpu", penalty=penalty)
            for penalty in (None, lambda out: 0.0 * out.sum() + 1.0)]
    np.testing.assert_allclose(runs[1].loss, runs[0].loss + 1.0, rtol=1e-6)  # a constant: the
    # same gradients, so the same trajectory


class Reading:
    """A policy that asks for the unperturbed output every ``every`` iterations and records
    what the loop hands it; never stops."""

    needs_unperturbed_output = True

    def __init__(self, every):
        self.every, self.best_step, self.reason, self.seen = every, 0, "", []

    def update(self, step, loss, output):
        self.seen.append((step, None if output is None else output.clone()))
        if output is not None:
            self.best_step = step
        return False


@pytest.mark.parametrize("every", [1, 4])
def test_the_unperturbed_output_is_computed_only_where_the_policy_reads_it(every):
    clean, noisy, op, z = _problem()
    net = PixelNet(op.image_shape, seed=1)
    calls = []
    net.register_forward_hook(lambda module, args, out: calls.append(args[0]))
    policy = Reading(every)
    result = fit(net, z, noisy, op, policy=policy, max_num_iter=40, reg_noise_std=0.1,
                 seed=5, device="cpu")
    read = [step for step, output in policy.seen if output is not None]
    assert read == list(range(every, 41, every))
    assert len(calls) == 40 + len(read)  # one training pass per iteration, one per read
    unperturbed = [x for x in calls if torch.equal(x, z)]
    assert len(unperturbed) == len(read)
    assert result.best_step == 40  # the last read iterate, kept by the loop
    # the trajectory does not depend on where the policy reads
    reference = fit(PixelNet(op.image_shape, seed=1), z, noisy, op, policy=Reading(1),
                    max_num_iter=40, reg_noise_std=0.1, seed=5, device="cpu")
    np.testing.assert_array_equal(result.loss, reference.loss)
    torch.testing.assert_close(result.output, reference.output, rtol=0, atol=0)


class Kept(Reading):
    """The same, reading the output the loop keeps (an Oracle or a WMV does)."""

    needs_unperturbed_output = False


@pytest.mark.parametrize("group", ["FirstOf", "Shadow"])
def test_in_a_group_each_policy_reads_the_output_it_asks_for(group):
    """A rule beside one that asks for the unperturbed output still judges the iterate the
    loop keeps and returns; before, it was handed the unperturbed one, or None."""
    from deepprior.stopping import FirstOf, Shadow

    clean, noisy, op, z = _problem()
    kept, unperturbed, states = Kept(1), Reading(4), []
    policy = FirstOf(kept, unperturbed) if group == "FirstOf" else Shadow(
        {"kept": kept, "unperturbed": unperturbed})
    fit(PixelNet(op.image_shape, seed=1), z, noisy, op, policy=policy, max_num_iter=8,
        reg_noise_std=0.1, ema=0.9, seed=5, device="cpu",
        callback=lambda state: states.append(state.output.clone()))
    assert [step for step, _ in kept.seen] == list(range(1, 9))
    for (_, output), state in zip(kept.seen, states, strict=True):
        torch.testing.assert_close(output, state, rtol=0, atol=0)  # the kept iterate
    assert [step for step, output in unperturbed.seen if output is not None] == [4, 8]


def test_a_budget_that_ends_before_the_policy_reads_returns_the_last_iterate():
    clean, noisy, op, z = _problem()
    policy = Reading(8)  # reads iteration 8, 16, ...: none of a budget of 5
    result = fit(PixelNet(op.image_shape, seed=1), z, noisy, op, policy=policy,
                 max_num_iter=5, reg_noise_std=0.1, ema=0.9, seed=5, device="cpu")
    assert policy.best_step == 0 and result.best_step == 5
    assert result.stop_reason == "reached max_num_iter=5; returning the last iterate (iteration 5)"
    # the same fit run with a budget the policy reads at its end returns the same iterate
    same = fit(PixelNet(op.image_shape, seed=1), z, noisy, op, policy=Reading(5),
               max_num_iter=5, reg_noise_std=0.1, ema=0.9, seed=5, device="cpu")
    assert same.best_step == 5
    torch.testing.assert_close(result.output, same.output, rtol=0, atol=0)


def _members(name, k, shape=(1, 64, 64), **options):
    """K networks of one architecture (seeds 0 … K−1), their inputs and K noisy images."""
    from deepprior.nets import build_net

    built = [build_net(name, shape, seed=s, **options) for s in range(k)]
    problems = [_problem(seed=s, shape=shape) for s in range(k)]
    return [net for net, _ in built], [z for _, z in built], problems


def _solo(nets, zs, problems, policies, budgets, **options):
    """Each member fitted alone by fit, from a copy of its network."""
    import copy

    return [fit(copy.deepcopy(net), z, noisy, op, policy=policy, max_num_iter=budget,
                ground_truth=clean, seed=k, device="cpu", **options)
            for k, (net, z, (clean, noisy, op, _), policy, budget)
            in enumerate(zip(nets, zs, problems, policies, budgets, strict=True))]


def _assert_same_fits(together, alone, atol):
    for a, b in zip(together, alone, strict=True):
        assert (a.num_steps, a.best_step, a.num_restarts) == (b.num_steps, b.best_step,
                                                              b.num_restarts)
        torch.testing.assert_close(a.output, b.output, rtol=0, atol=atol)
        np.testing.assert_allclose(a.loss, b.loss, rtol=1e-3)
        np.testing.assert_allclose(a.psnr, b.psnr, atol=0.01)


@pytest.mark.parametrize(("name", "options"), [
    ("deep_decoder", {"channels": 8, "num_layers": 4}),
    ("dip", {"channels": 8, "skip_channels": 2, "num_scales": 3, "input_channels": 4}),
])
def test_fit_many_gives_each_member_what_fit_gives_it(name, options):
    nets, zs, problems = _members(name, 3, **options)
    budgets = [8, 5, 3]  # each stops on its own; the others go on without it (a few
    # iterations: a fit amplifies any change in the order of float operations, 1e-7 of the
    # weights grows to 1e-3 of the image by iteration 15, like two CPUs running one fit)
    fitting = {"reg_noise_std": 0.05, "ema": 0.9, "learning_rate": 0.01}
    alone = _solo(nets, zs, problems, [Recorder(stop_at=b) for b in budgets], budgets,
                  **fitting)
    seen = [Recorder(stop_at=b) for b in budgets]
    together = fit_many(nets, zs, [p[1] for p in problems], [p[2] for p in problems],
                        policies=seen, max_num_iter=budgets,
                        ground_truths=[p[0] for p in problems], device="cpu", **fitting)
    assert [p.seen for p in seen] == [list(range(1, b + 1)) for b in budgets]
    assert [r.best_step for r in together] == [7, 5, 3]  # chosen, or the last iterate
    _assert_same_fits(together, alone, atol=1e-5)
    assert together[0].elapsed >= together[1].elapsed >= together[2].elapsed  # to its stop


def test_fit_many_gives_each_member_its_penalty():
    from deepprior.metrics import total_variation

    nets, zs, problems = _members("deep_decoder", 2, channels=8, num_layers=4)
    penalties = [None, lambda out: 0.05 * total_variation(out)]
    alone = [fit(net, z, noisy, op, policy=Fixed(8), max_num_iter=8, penalty=penalty,
                 ground_truth=clean, device="cpu")
             for net, z, (clean, noisy, op, _), penalty
             in zip(_members("deep_decoder", 2, channels=8, num_layers=4)[0], zs, problems,
                    penalties, strict=True)]
    together = fit_many(nets, zs, [p[1] for p in problems], [p[2] for p in problems],
                        policies=[Fixed(8), Fixed(8)], max_num_iter=8, penalties=penalties,
                        ground_truths=[p[0] for p in problems], seeds=[0, 0], device="cpu")
    _assert_same_fits(together, alone, atol=1e-5)
    assert together[1].loss[0] > together[0].loss[0] + 0.01  # TV is in member 1's loss only


def test_a_diverging_member_stops_alone():
    clean, noisy, op, z = _problem()
    nets = [PixelNet(op.image_shape, seed=s) for s in range(2)]
    alone = fit(PixelNet(op.image_shape, seed=1), z, noisy, op, policy=Fixed(40),
                max_num_iter=40, learning_rate=0.05, seed=1, device="cpu")
    bad, good = fit_many(nets, [z, z], [noisy, noisy], [op, op],
                         policies=[Fixed(40), Fixed(40)], max_num_iter=40,
                         learning_rate=0.05, max_restarts=2, device="cpu",
                         penalties=[lambda x: x.sum() * float("nan"), None])  # 0 never finite
    assert bad.stop_reason.startswith("diverged") and bad.num_restarts == 2
    assert (good.num_steps, good.num_restarts) == (40, 0)
    torch.testing.assert_close(good.output, alone.output, rtol=0, atol=1e-6)


def test_fit_many_writes_batch_norm_statistics_back():
    nets, zs, problems = _members("deep_decoder", 2, channels=8, num_layers=4, norm="batch")
    alone_nets = _members("deep_decoder", 2, channels=8, num_layers=4, norm="batch")[0]
    for net, z, (_, noisy, op, _) in zip(alone_nets, zs, problems, strict=True):
        fit(net, z, noisy, op, policy=Fixed(5), max_num_iter=5, device="cpu")
    fit_many(nets, zs, [p[1] for p in problems], [p[2] for p in problems],
             policies=[Fixed(5), Fixed(5)], max_num_iter=5, device="cpu")
    for together, alone in zip(nets, alone_nets, strict=True):
        for (name, a), (_, b) in zip(together.named_buffers(), alone.named_buffers(),
                                     strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
        assert together.get_buffer("body.0.3.num_batches_tracked") == 5


def test_fit_many_refuses_mismatched_members_before_fitting():
    nets, zs, problems = _members("deep_decoder", 2, channels=8, num_layers=4)
    ys, ops = [p[1] for p in problems], [p[2] for p in problems]
    wider = _members("deep_decoder", 1, channels=16, num_layers=4)[0][0]
    two = [Fixed(2), Fixed(2)]
    with pytest.raises(ValueError, match="one architecture: network 1"):
        fit_many([nets[0], wider], zs, ys, ops, policies=two, max_num_iter=2)
    with pytest.raises(ValueError, match=r"one entry per network \(2 networks\), got ys: 1"):
        fit_many(nets, zs, ys[:1], ops, policies=two, max_num_iter=2)
    with pytest.raises(ValueError, match="inputs of one shape"):
        fit_many(nets, [zs[0], zs[1][..., :2, :2]], ys, ops, policies=two, max_num_iter=2)
    with pytest.raises(ValueError, match="one policy object per network"):
        fit_many(nets, zs, ys, ops, policies=[Fixed(2)] * 2, max_num_iter=2)
    with pytest.raises(ValueError, match="max_num_iter"):
        fit_many(nets, zs, ys, ops, policies=two, max_num_iter=[2, 0])
    with pytest.raises(ValueError, match=r"one entry per network \(2 networks\), got "
                                         r"max_num_iter: 3"):
        fit_many(nets, zs, ys, ops, policies=two, max_num_iter=np.array([2, 2, 2]))
    with pytest.raises(ValueError, match="at least one network"):
        fit_many([], [], [], [], policies=[], max_num_iter=2)
    # autocast does not reach into vmap: the members trained in float32, said nowhere
    with pytest.raises(ValueError, match="fit_many runs K > 1 members in float32"):
        fit_many(nets, zs, ys, ops, policies=two, max_num_iter=2, precision="bf16")
    with pytest.raises(TypeError, match="seed of fit 1 must be an integer"):
        fit_many(nets, zs, ys, ops, policies=two, max_num_iter=2, seeds=[0, 0.5])


# --------------------------------------------------------------------------- as users call it


def test_each_restart_halves_the_learning_rate_again():
    """Three restarts from one snapshot: 0.01 → 0.005 → 0.0025 → 0.00125 (each halved the
    snapshot's rate before, so all three ran at 0.005)."""
    clean, noisy, op, z = _problem()
    calls = []

    def penalty(out):  # the loss is NaN at calls 12, 13 and 14, then finite again
        calls.append(1)
        return out.sum() * (torch.nan if len(calls) in (12, 13, 14) else 0.0)

    result = fit(PixelNet(op.image_shape), z, noisy, op, policy=Fixed(20), max_num_iter=20,
                 penalty=penalty, snapshot_every=5, device="cpu")
    assert result.num_restarts == 3 and result.final_learning_rate == pytest.approx(0.00125)


def test_arguments_are_checked_before_the_first_iteration():
    clean, noisy, op, z = _problem()
    net = PixelNet(op.image_shape)
    before = [p.detach().clone() for p in net.parameters()]
    cases = [({"snapshot_every": 0}, ValueError, "snapshot_every must be an integer >= 1"),
             ({"penalty": 0.1}, TypeError, "penalty must be a function"),
             ({"policy": "fixed:5"}, TypeError, "a stopping policy needs update"),
             ({"callback": 5}, TypeError, "callback must be callable"),
             ({"ema": 1.5}, ValueError, "ema must"),
             ({"reg_noise_std": -0.05}, ValueError, "reg_noise_std must"),
             ({"learning_rate": 0.0}, ValueError, "learning_rate must"),
             ({"max_num_iter": 2.5}, TypeError, "max_num_iter must be an integer"),
             ({"y": noisy.reshape(-1, 1)}, ValueError, r"y has shape \(143, 1\); the operator "
                                                      r"needs \(1, 1, 13, 11\)"),
             ({"ground_truth": clean[0, 0]}, ValueError, "ground_truth has shape"),
             ({"device": "meta"}, ValueError, "device must be 'auto', 'cpu'"),
             # before: a restart loop blamed on divergence, an image of NaN
             ({"z": torch.full_like(z, torch.nan)}, ValueError, "z holds NaN"),
             # before: AttributeError / TypeError / RuntimeError from inside the loop's set-up
             ({"y": noisy.numpy()}, TypeError, "y must be a floating-point torch.Tensor"),
             ({"z": z.numpy()}, TypeError, "z must be a floating-point torch.Tensor"),
             ({"operator": lambda x: x}, TypeError, "wrap a function or matrix with "
                                                    "deepprior.as_operator"),
             ({"seed": 1.5}, TypeError, "seed must be an integer"),
             ({"seed": -1}, ValueError, "seed must be an integer >= 0"),
             ({"seed": 2**64}, ValueError, "seed must be below 2")]
    net.eval()
    for options, error, message in cases:
        arguments = {"policy": Fixed(5), "max_num_iter": 5, "y": noisy, "z": z, "operator": op,
                     **options}
        with pytest.raises(error, match=message):
            fit(net, arguments.pop("z"), arguments.pop("y"), arguments.pop("operator"),
                **arguments)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    assert not net.training  # a refused call leaves the module as it was
    result = fit(net, z, noisy, op, policy=Fixed(2), max_num_iter=2, seed=np.int64(3))
    assert result.num_steps == 2  # a numpy integer is a seed (it failed in manual_seed)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available here"):
            resolve_device(torch.device("cuda:7"))


def test_a_fit_runs_under_no_grad_and_with_data_that_carries_a_graph():
    clean, noisy, op, z = _problem()
    graph = noisy.clone().requires_grad_() * 1.0  # e.g. y = A(x) of a tensor with a gradient
    with torch.no_grad():
        result = fit(PixelNet(op.image_shape), z, graph, op, policy=Fixed(4), max_num_iter=4,
                     device="cpu")
    assert result.num_steps == 4 and torch.isfinite(torch.as_tensor(result.loss)).all()
    with torch.inference_mode(), pytest.raises(RuntimeError, match="outside "
                                                                   "torch.inference_mode"):
        fit(PixelNet(op.image_shape), z, noisy, op, policy=Fixed(4), max_num_iter=4)


class Silent:
    """The three members a policy needs, and no more: it never stops and says nothing."""

    best_step, reason = 0, ""

    def update(self, step, loss, output):
        self.best_step = step
        return False


def test_the_end_of_the_budget_is_said_and_takes_no_extra_step():
    clean, noisy, op, z = _problem()
    silent = fit(PixelNet(op.image_shape), z, noisy, op, policy=Silent(), max_num_iter=4,
                 device="cpu")
    assert silent.stop_reason == "reached max_num_iter=4"
    assert silent.output.is_contiguous() and silent.output.untyped_storage().nbytes() == \
        silent.output.numel() * 4  # its own storage, not a view of a larger one
    decayed = {"max_num_iter": 5, "lr_decay": (0.5, 5), "device": "cpu"}
    by_rule = fit(PixelNet(op.image_shape), z, noisy, op, policy=Fixed(5), **decayed)
    by_budget = fit(PixelNet(op.image_shape), z, noisy, op, policy=Fixed(10), **decayed)
    assert by_rule.final_learning_rate == by_budget.final_learning_rate == 0.01


def test_fit_many_refuses_what_two_fits_would_share():
    clean, noisy, op, z = _problem()
    net = PixelNet(op.image_shape)
    with pytest.raises(ValueError, match="one network per fit, sharing no parameter"):
        fit_many([net, net], [z, z], [noisy, noisy], [op, op], policies=[Fixed(3), Fixed(3)],
                 max_num_iter=3, device="cpu")
    from deepprior.stopping import FirstOf

    shared = Patience(3)
    with pytest.raises(ValueError, match="a rule appears in the policies of two members"):
        fit_many([PixelNet(op.image_shape), PixelNet(op.image_shape)], [z, z], [noisy, noisy],
                 [op, op], policies=[FirstOf(shared, Fixed(9)), FirstOf(shared, Fixed(9))],
                 max_num_iter=9, device="cpu")


def test_ctrl_c_in_fit_many_keeps_the_reason_of_a_fit_that_had_ended():
    clean, noisy, op, z = _problem()

    class Interrupting(Fixed):
        def update(self, step, loss, output):
            if step == 3:
                raise KeyboardInterrupt
            return super().update(step, loss, output)

    done, cut = fit_many([PixelNet(op.image_shape), PixelNet(op.image_shape)], [z, z],
                         [noisy, noisy], [op, op], policies=[Fixed(3), Interrupting(9)],
                         max_num_iter=9, device="cpu")
    assert done.stop_reason.startswith("reached num_iter=3")
    assert cut.stop_reason.startswith("interrupted at iteration")


def test_a_policy_holding_a_torch_integer_as_best_step_gets_its_iterate():
    class TensorBest:  # a user's policy: the step of the smallest loss, as torch computes it
        reason = ""

        def __init__(self):
            self.losses, self.best_step = [], 0

        def update(self, step, loss, output):
            self.losses.append(loss)
            self.best_step = torch.tensor(self.losses).argmin() + 1
            return False

    clean, noisy, op, z = _problem()
    policy = TensorBest()
    result = fit(PixelNet(op.image_shape, seed=1), z, noisy, op, policy=policy,
                 max_num_iter=12, learning_rate=0.5, seed=0, device="cpu")
    assert result.best_step == int(np.argmin(result.loss)) + 1
    assert "returning the last iterate" not in result.stop_reason


def test_a_rule_used_in_one_fit_is_refused_by_the_next():
    clean, noisy, op, z = _problem()
    policy = Patience(patience=1000)
    fit(PixelNet(op.image_shape, seed=1), z, noisy, op, policy=policy, max_num_iter=5,
        device="cpu")
    with pytest.raises(ValueError, match="Patience has served a fit already"):
        fit(PixelNet(op.image_shape, seed=1), z, noisy, op, policy=policy, max_num_iter=5,
            device="cpu")


@pytest.mark.parametrize(("reason", "expected"), [(42, "42"), ("", "stopped by Third at "
                                                                   "iteration 3")])
def test_a_user_policy_s_reason_of_another_type_or_empty_is_text(reason, expected):
    class Third:  # stops at iteration 3, saying nothing useful
        def __init__(self):
            self.best_step, self.reason = 0, reason

        def update(self, step, loss, output):
            self.best_step = step
            return step >= 3

    clean, noisy, op, z = _problem()
    result = fit(PixelNet(op.image_shape, seed=1), z, noisy, op, policy=Third(),
                 max_num_iter=10, device="cpu")  # 42 failed after the fit in startswith
    assert result.stop_reason == expected and result.best_step == 3


def test_a_network_of_another_shape_than_the_operator_is_refused_before_any_update():
    """A grey network against a colour operator broadcast in the loss and ran to the end."""
    _, noisy, op, z = _problem(shape=(3, 13, 11))
    net = PixelNet((1, 13, 11))
    before = net.theta.detach().clone()
    with pytest.raises(ValueError, match=r"output has shape \(1, 1, 13, 11\); the operator takes "
                                         r"images of \(1, 3, 13, 11\)"):
        fit(net, z, noisy, op, policy=Fixed(3), max_num_iter=3, device="cpu")
    assert torch.equal(net.theta, before)


def test_a_penalty_of_one_element_and_data_that_is_not_finite():
    clean, noisy, op, z = _problem()

    def penalty(x):  # (1,), as per-image regularisers return
        return 1e-3 * x.abs().mean(dim=(1, 2, 3))

    alone = fit(PixelNet((1, 13, 11)), z, noisy, op, policy=Fixed(3), max_num_iter=3, device="cpu",
                penalty=penalty, ground_truth=clean)
    many = fit_many([PixelNet((1, 13, 11)), PixelNet((1, 13, 11))], [z, z], [noisy, noisy],
                    [op, op], policies=[Fixed(3), Fixed(3)], max_num_iter=3, device="cpu",
                    penalties=[penalty, None])
    assert alone.num_steps == 3 and [r.num_steps for r in many] == [3, 3]
    with pytest.raises(ValueError, match=r"the penalty must return one number .* got \(1, 2\)"):
        fit(PixelNet((1, 13, 11)), z, noisy, op, policy=Fixed(3), max_num_iter=3, device="cpu",
            penalty=lambda x: x.mean(dim=(2, 3))[:, :1].repeat(1, 2))
    poisoned = noisy.clone()
    poisoned[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="y holds NaN or infinite values"):
        fit(PixelNet((1, 13, 11)), z, poisoned, op, policy=Fixed(3), max_num_iter=3, device="cpu")
    with pytest.raises(ValueError, match="sync_every must be an integer >= 1, got 0"):
        fit(PixelNet((1, 13, 11)), z, noisy, op, policy=Fixed(3), max_num_iter=3, sync_every=0)


def test_fit_many_refuses_a_rule_shared_inside_nested_policies():
    from deepprior.stopping import FirstOf, Shadow

    _, noisy, op, z = _problem()
    shared = Patience(5)
    for first in (FirstOf(Fixed(3), FirstOf(Fixed(4), shared)), Shadow({"a": shared})):
        with pytest.raises(ValueError, match="its own stopping rules per fit"):
            fit_many([PixelNet((1, 13, 11)), PixelNet((1, 13, 11))], [z, z], [noisy, noisy],
                     [op, op], policies=[first, FirstOf(Fixed(3), shared)], max_num_iter=3,
                     device="cpu")


def test_fit_refuses_a_network_with_nothing_to_train():
    net = nn.Sequential(nn.Conv2d(2, 1, 3, padding=1), nn.Sigmoid()).requires_grad_(False)
    z, y = torch.rand(1, 2, 8, 8), torch.rand(1, 1, 8, 8)
    with pytest.raises(ValueError, match=r"net has no trainable parameters \(all are frozen"):
        fit(net, z, y, Identity((8, 8)), policy=Fixed(2), max_num_iter=2)
