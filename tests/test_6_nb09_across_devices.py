"""bnlib section 6, notebook 09's block: BN across devices and datasets.

synced_batchnorm runs real worker processes (torch.multiprocessing, spawn) that all-reduce over
torch.distributed with gloo; its results are compared with torch's BN on the whole batch, for
several world sizes and shapes (odd N, 2-D and 4-D). Every worker start costs a torch import
(about a second or more a worker), so the tests share a few groups of workers and check, after
each group and each failure, that no worker process is left running. The torch tools of the
experiments are compared with torch computed another way (per-shard functional BN, autograd,
torch.optim.swa_utils.update_bn) or with closed forms."""
import copy
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import torch.nn.functional as F

import bnlib
from cases import random_case
from torch_reference import torch_batchnorm, torch_grads

ROOT = Path(__file__).resolve().parent.parent
TOL = 1e-10


def worker_processes():
    """pids of the live processes below this one that are not multiprocessing's own helpers
    (the forkserver, which forks the workers, and the resource tracker live on by design)."""
    import multiprocessing.forkserver as forkserver
    import multiprocessing.resource_tracker as tracker
    helpers = {getattr(forkserver._forkserver, "_forkserver_pid", None),
               getattr(tracker._resource_tracker, "_pid", None)}
    found = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if p.pid not in helpers and p.status() != psutil.STATUS_ZOMBIE:
                found.add(p.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def assert_no_worker_left(workers=None, before=frozenset()):
    """No worker process runs but those in `before` (e.g. the module's shared groups)."""
    if workers is not None:
        assert all(not p.is_alive() for p in workers.processes)
        assert not {p.pid for p in workers.processes} & worker_processes()
    assert worker_processes() <= set(before)
    assert {p.pid for p in multiprocessing.active_children()} <= set(before)


def assert_equals_whole_batch_bn(got, x, gamma, beta, dout, eps=1e-5, tol=TOL):
    want = torch_batchnorm(x.astype(np.float64), gamma.astype(np.float64), beta.astype(np.float64),
                           dout.astype(np.float64), eps)
    for name, g, w in zip(("out", "dx", "dgamma", "dbeta"), got, want):
        assert g.shape == w.shape, name
        assert np.max(np.abs(g - w)) < tol * max(1.0, np.max(np.abs(w))), name


@pytest.fixture(scope="module")
def groups():
    """{world_size: SyncedBatchNormWorkers}, started on first use, closed at the end."""
    started = {}

    def get(world_size):
        if world_size not in started:
            started[world_size] = bnlib.SyncedBatchNormWorkers(world_size)
        return started[world_size]
    yield get
    for workers in started.values():
        workers.close()
    assert_no_worker_left()


# --- synchronized BN over real workers equals BN on the whole batch ---------------------------

@pytest.mark.parametrize("world_size, shape", [
    (1, (6, 4)),            # one worker: plain BN
    (3, (31, 5)),           # odd N: shards of 11, 10, 10
    (3, (3, 4)),            # one example a worker: each shard has ONE value a feature
    (3, (7, 3, 4, 4)),      # 4-D, shards of 3, 2, 2 images
    (1, (2, 2, 3, 3)),
])
def test_synced_batchnorm_equals_whole_batch_bn(groups, world_size, shape):
    x, gamma, beta, dout = random_case(shape, seed=sum(shape), loc=5.0, scale=2.0)
    assert_equals_whole_batch_bn(groups(world_size)(x, gamma, beta, dout), x, gamma, beta, dout)


def test_a_group_of_workers_serves_many_calls_and_keeps_running(groups):
    workers = groups(3)
    for seed in range(3):
        x, gamma, beta, dout = random_case((10, 2, 3, 3), seed=seed)
        assert_equals_whole_batch_bn(workers(x, gamma, beta, dout, eps=1e-3), x, gamma, beta, dout, eps=1e-3)
    assert all(p.is_alive() for p in workers.processes) and "running" in repr(workers)


def test_synced_batchnorm_float32_in_float32_out(groups):
    x, gamma, beta, dout = random_case((9, 6), seed=3, dtype=np.float32)
    got = groups(3)(x, gamma, beta, dout)
    assert all(a.dtype == np.float32 for a in got)
    assert_equals_whole_batch_bn(got, x, gamma, beta, dout, tol=1e-5)


def test_the_workers_get_contiguous_shards_as_equal_as_possible():
    assert bnlib._shard_bounds(31, 3) == [(0, 11), (11, 21), (21, 31)]
    for n, k in ((10, 4), (7, 7), (64, 8), (5, 1)):
        sizes = [b - a for a, b in bnlib._shard_bounds(n, k)]
        assert sizes == [len(s) for s in np.array_split(np.arange(n), k)]


def test_torch_syncbatchnorm_refuses_cpu_tensors_inside_a_real_process_group(groups):
    message = groups(3).torch_syncbatchnorm_message(np.ones((6, 2)))
    assert message.startswith("ValueError: SyncBatchNorm expected input tensor to be on GPU")


@pytest.mark.parametrize("start_method, world_size", [(None, 2), ("spawn", 1)])   # spawn: a torch import a worker
def test_one_call_starts_and_stops_its_workers_4d_odd_n(start_method, world_size):
    before = worker_processes()
    x, gamma, beta, dout = random_case((5, 3, 2, 2), seed=11)
    got = bnlib.synced_batchnorm(x, gamma, beta, dout, world_size=world_size, start_method=start_method)
    assert_equals_whole_batch_bn(got, x, gamma, beta, dout)
    assert_no_worker_left(before=before)


# --- failures: a clear error, and no worker left -----------------------------------------------

def test_a_worker_that_dies_is_named_and_every_worker_is_stopped():
    before = worker_processes()
    workers = bnlib.SyncedBatchNormWorkers(2)
    x, gamma, beta, dout = random_case((8, 3), seed=1)
    workers(x, gamma, beta, dout)                       # all joined and working
    workers.processes[1].kill()
    workers.processes[1].join()
    with pytest.raises(RuntimeError, match=r"worker 1 of 2 .*died \(killed by signal 9\)"):
        workers(x, gamma, beta, dout)
    assert_no_worker_left(workers, before)
    with pytest.raises(RuntimeError, match="stopped"):
        workers(x, gamma, beta, dout)


def test_a_worker_that_raises_is_named_with_its_error_and_the_waiting_ones_are_stopped():
    before = worker_processes()
    workers = bnlib.SyncedBatchNormWorkers(2)
    x, gamma, beta, dout = random_case((8, 3), seed=1)
    workers(x, gamma, beta, dout)
    workers._inboxes[0].put(("batchnorm", (x[:4], gamma, beta, dout[:4], 1e-5)))   # waits in all_reduce
    workers._inboxes[1].put(("fault", ("raise",)))
    with pytest.raises(RuntimeError, match="worker 1 of 2 failed: RuntimeError: a fault injected"):
        workers._collect("answer")
    assert_no_worker_left(workers, before)


def test_a_worker_that_never_answers_times_out_and_is_stopped():
    before = worker_processes()
    with bnlib.SyncedBatchNormWorkers(1) as workers:
        x, gamma, beta, dout = random_case((4, 2), seed=2)
        workers(x, gamma, beta, dout)
        workers.timeout = 1.0
        with pytest.raises(RuntimeError, match=r"no answer to 'fault' from worker\(s\) \[0\] of 1 within timeout=1 s"):
            workers._run("fault", [("hang",)])
    assert_no_worker_left(workers, before)


def test_a_script_read_from_stdin_is_refused_before_any_worker_starts():
    script = "import bnlib\nbnlib.SyncedBatchNormWorkers(2)\n"
    run = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert run.returncode != 0 and "stdin" in run.stderr and "python file.py" in run.stderr


@pytest.mark.parametrize("world_size, error, words", [
    (0, ValueError, "at least 1"), (-2, ValueError, "at least 1"), (9, ValueError, "at most the batch's 8"),
    (2.0, TypeError, "whole number"), (True, TypeError, "whole number"), ("2", TypeError, "whole number"),
])
def test_bad_world_sizes_are_refused_before_any_worker_starts(world_size, error, words):
    before = worker_processes()
    x, gamma, beta, dout = random_case((8, 3))
    with pytest.raises(error, match=words):
        bnlib.synced_batchnorm(x, gamma, beta, dout, world_size)
    with pytest.raises(error, match=words):
        bnlib.per_device_batchnorm(x, gamma, beta, dout, world_size)
    assert_no_worker_left(before=before)


def test_bad_inputs_are_refused_before_any_worker_starts():
    before = worker_processes()
    x, gamma, beta, dout = random_case((8, 3))
    nan = x.copy()
    nan[2, 1] = np.nan
    cases = [((x[:, :, None], gamma, beta, dout), "2-D"), ((x, gamma[:2], beta, dout), "gamma must have shape"),
             ((x, gamma, beta[:, None], dout), "beta must have shape"), ((x, gamma, beta, dout[:4]), "dout must have"),
             ((nan, gamma, beta, dout), "NaN"), ((x, gamma, beta, np.where(nan == nan, dout, np.inf)), "NaN or inf"),
             ((x[:1], gamma, beta, dout[:1]), "more than 1 value")]
    for args, words in cases:
        with pytest.raises(ValueError, match=words):
            bnlib.synced_batchnorm(*args, world_size=1)
    with pytest.raises(ValueError, match="eps"):
        bnlib.synced_batchnorm(x, gamma, beta, dout, 1, eps=0)
    with pytest.raises(ValueError, match="timeout"):
        bnlib.synced_batchnorm(x, gamma, beta, dout, 1, timeout=0)
    with pytest.raises(TypeError, match="float16"):
        bnlib.synced_batchnorm(x.astype(np.float16), gamma, beta, dout, 1)
    with pytest.raises(ValueError, match="start_method"):
        bnlib.synced_batchnorm(x, gamma, beta, dout, 1, start_method="fork")
    assert_no_worker_left(before=before)


# --- per-device BN without synchronization ------------------------------------------------------

def torch_per_shard_batchnorm(x, gamma, beta, dout, num_shards, eps=1e-5):
    """(out, dx, dgamma, dbeta) by autograd, each torch.tensor_split chunk normalized by itself."""
    def fn(xt, gt, bt):
        return torch.cat([F.batch_norm(c, None, None, gt, bt, training=True, eps=eps)
                          for c in xt.tensor_split(num_shards)])
    return torch_grads(fn, x, gamma, beta, dout)


@pytest.mark.parametrize("world_size, shape", [(1, (6, 4)), (4, (10, 3)), (3, (7, 2, 3, 3)), (8, (64, 5))])
def test_per_device_batchnorm_normalizes_each_shard_by_itself(world_size, shape):
    x, gamma, beta, dout = random_case(shape, seed=world_size)
    got = bnlib.per_device_batchnorm(x, gamma, beta, dout, world_size)
    for g, w in zip(got, torch_per_shard_batchnorm(x, gamma, beta, dout, world_size)):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10)


def test_per_device_batchnorm_refuses_a_shard_with_one_value_per_feature():
    x, gamma, beta, dout = random_case((5, 3))
    with pytest.raises(ValueError, match="1 value per channel"):
        bnlib.per_device_batchnorm(x, gamma, beta, dout, 3)      # shards of 2, 2, 1
    bnlib.per_device_batchnorm(x[:, :, None, None].repeat(2, 2), gamma, beta,
                               dout[:, :, None, None].repeat(2, 2), 5)   # 1 image, 2 pixels: fine


# --- the torch tools of the experiments -----------------------------------------------------------

RNG = np.random.default_rng(9)
X = RNG.random((24, 784)).astype(np.float32)
Y = RNG.integers(0, 10, 24)


def test_ghost_batchnorm_normalizes_each_shard_and_updates_the_running_stats_from_shard_0():
    net = bnlib.bn_mlp(8, seed=0)
    ref = copy.deepcopy(net)
    bnlib.convert_ghost_batchnorm(net, 3).train()
    out = net(torch.from_numpy(X))
    z = ref[0](torch.from_numpy(X))
    bn = ref[1]
    chunks = z.tensor_split(3)
    want = torch.cat([F.batch_norm(c, None, None, bn.weight, bn.bias, training=True, eps=bn.eps) for c in chunks])
    assert torch.allclose(out, ref[3](torch.relu(want)), atol=1e-6)
    ref_bn = torch.nn.BatchNorm1d(8)
    ref_bn(chunks[0].detach())
    assert torch.allclose(net[1].bn.running_mean, ref_bn.running_mean, atol=1e-7)
    assert torch.allclose(net[1].bn.running_var, ref_bn.running_var, atol=1e-6)
    with torch.no_grad():                                   # eval mode: the running statistics
        r = net[1].bn
        want = F.batch_norm(z, r.running_mean, r.running_var, r.weight, r.bias, training=False, eps=r.eps)
        assert torch.allclose(net.eval()(torch.from_numpy(X)), ref[3](torch.relu(want)), atol=1e-6)


def test_ghost_batchnorm_with_one_shard_is_plain_bn_and_converts_nested_2d_modules():
    net, ref = bnlib.bn_mlp(8, seed=1), bnlib.bn_mlp(8, seed=1)
    bnlib.convert_ghost_batchnorm(net, 1)
    assert torch.equal(net.train()(torch.from_numpy(X)), ref.train()(torch.from_numpy(X)))
    backbone, _ = bnlib.small_cnn(seed=0)
    bnlib.convert_ghost_batchnorm(torch.nn.Sequential(backbone), 2)
    assert sum(type(m).__name__ == "GhostBatchNorm" for m in backbone.modules()) == 2
    with pytest.raises(ValueError, match="num_shards"):
        bnlib.convert_ghost_batchnorm(net, 0)


def test_batch_gradients_are_autograds_and_accumulation_is_ghost_bn():
    net = bnlib.bn_mlp(8, seed=2)
    plain = copy.deepcopy(net).train()
    torch.nn.functional.cross_entropy(plain(torch.from_numpy(X)), torch.from_numpy(Y)).backward()
    got = bnlib.batch_gradients(copy.deepcopy(net), X, Y, micro_batches=1)
    for name, p in plain.named_parameters():
        np.testing.assert_allclose(got[name], p.grad.double().numpy(), rtol=1e-5, atol=1e-7)
    ghost = copy.deepcopy(net).train()                      # the whole batch through per-chunk BN
    z = ghost[0](torch.from_numpy(X))
    bn = ghost[1]
    h = torch.cat([F.batch_norm(c, None, None, bn.weight, bn.bias, training=True) for c in z.tensor_split(4)])
    torch.nn.functional.cross_entropy(ghost[3](torch.relu(h)), torch.from_numpy(Y)).backward()
    accumulated = bnlib.batch_gradients(copy.deepcopy(net), X, Y, micro_batches=4)
    for name, p in ghost.named_parameters():
        np.testing.assert_allclose(accumulated[name], p.grad.double().numpy(), rtol=1e-4, atol=1e-6)
    assert not np.allclose(accumulated["0.weight"], got["0.weight"], rtol=1e-3)


def test_batch_gradients_update_the_running_stats_once_per_micro_batch():
    net = bnlib.bn_mlp(8, seed=3)
    bnlib.batch_gradients(net, X, Y, micro_batches=4)
    assert net[1].num_batches_tracked.item() == 4


def test_train_accumulated_with_one_micro_batch_is_train_torch():
    a, b = bnlib.bn_mlp(8, seed=4), bnlib.bn_mlp(8, seed=4)
    la = bnlib.train_torch(a, torch.optim.SGD(a.parameters(), lr=0.1), X, Y, 5, 8, seed=1)
    lb = bnlib.train_accumulated(b, torch.optim.SGD(b.parameters(), lr=0.1), X, Y, 5, 8, 1, seed=1)
    assert np.array_equal(la, lb)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_train_accumulated_takes_one_step_from_the_summed_micro_batch_gradients():
    net = bnlib.bn_mlp(8, seed=5)
    ref = copy.deepcopy(net)
    idx = np.random.default_rng(2).integers(0, len(X), size=8)           # train_accumulated's draw
    grads = bnlib.batch_gradients(copy.deepcopy(net), X[idx], Y[idx], micro_batches=2)
    bnlib.train_accumulated(net, torch.optim.SGD(net.parameters(), lr=0.5), X, Y, 1, 8, 2, seed=2)
    for name, p in ref.named_parameters():
        np.testing.assert_allclose(dict(net.named_parameters())[name].detach().double().numpy(),
                                   p.detach().double().numpy() - 0.5 * grads[name], rtol=1e-5, atol=1e-6)
    assert net[1].num_batches_tracked.item() == 2


def test_shift_digits_closed_forms():
    x = RNG.random((3, 784)).astype(np.float32)
    np.testing.assert_allclose(bnlib.shift_digits(x, "contrast", 0.4), 0.4 * x, rtol=1e-6)
    np.testing.assert_allclose(bnlib.shift_digits(x, "background", 0.5), 0.5 + 0.5 * x, rtol=1e-6)
    noise = bnlib.shift_digits(x, "noise", 0.3, seed=1) - x
    np.testing.assert_allclose(noise, 0.3 * np.random.default_rng(1).standard_normal(x.shape, dtype=np.float32),
                               atol=1e-6)
    with pytest.raises(ValueError, match="kind"):
        bnlib.shift_digits(x, "blur", 1.0)


def test_adapt_batchnorm_sets_the_population_statistics_and_touches_no_weight():
    net = bnlib.bn_mlp(8, seed=6)
    bnlib.train_torch(net, torch.optim.SGD(net.parameters(), lr=0.1), X, Y, 3, 8)
    weights = [p.detach().clone() for p in net.parameters()]
    net.eval()
    bnlib.adapt_batchnorm(net, 1 - X)
    z = net[0](torch.from_numpy(1 - X)).detach().double()
    np.testing.assert_allclose(net[1].running_mean.double(), z.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net[1].running_var.double(), z.var(0, unbiased=True), rtol=1e-5)
    assert all(torch.equal(p, w) for p, w in zip(net.parameters(), weights))
    assert not net.training and net[1].momentum == 0.1


def test_adapt_batchnorm_in_batches_is_torchs_update_bn_and_the_prior_mixes():
    net = bnlib.bn_mlp(8, seed=7).train()
    net(torch.from_numpy(X))                               # some running statistics to start from
    old_mean, old_var = net[1].running_mean.clone(), net[1].running_var.clone()
    ref = copy.deepcopy(net)
    loader = torch.utils.data.DataLoader(torch.from_numpy(X), batch_size=6)
    torch.optim.swa_utils.update_bn(loader, ref)
    bnlib.adapt_batchnorm(net, X, batch_size=6)
    assert torch.allclose(net[1].running_mean, ref[1].running_mean, atol=1e-6)
    assert torch.allclose(net[1].running_var, ref[1].running_var, atol=1e-6)
    mixed = copy.deepcopy(net)
    mixed[1].running_mean.copy_(old_mean)
    mixed[1].running_var.copy_(old_var)
    bnlib.adapt_batchnorm(mixed, X, batch_size=6, prior=24)     # N = n: half and half
    assert torch.allclose(mixed[1].running_mean, (old_mean + ref[1].running_mean) / 2, atol=1e-6)
    assert torch.allclose(mixed[1].running_var, (old_var + ref[1].running_var) / 2, atol=1e-6)
    assert net.training


def test_accuracy_with_batch_statistics_is_training_mode_bn_at_prior_0_and_eval_mode_at_a_huge_prior():
    net = bnlib.bn_mlp(8, seed=8)
    bnlib.train_torch(net, torch.optim.SGD(net.parameters(), lr=0.1), X, Y, 3, 8)
    state = copy.deepcopy(net.state_dict())
    net.eval()
    with torch.no_grad():
        train_mode = copy.deepcopy(net).train()
        pred = torch.cat([train_mode(torch.from_numpy(X[a:a + 5])) for a in range(0, 24, 5)]).argmax(1).numpy()
        pred_eval = net(torch.from_numpy(X)).argmax(1).numpy()
    assert bnlib.accuracy_with_batch_statistics(net, X, Y, 5) == np.mean(pred == Y)
    assert bnlib.accuracy_with_batch_statistics(net, X, Y, 5, prior=1e12) == np.mean(pred_eval == Y)
    z = net[0](torch.from_numpy(X[:6])).detach()              # one batch, N = n: half and half
    bn = net[1]
    mean, var = (bn.running_mean + z.mean(0)) / 2, (bn.running_var + z.var(0, unbiased=False)) / 2
    want = net[3](torch.relu(F.batch_norm(z, mean, var, bn.weight, bn.bias, False, 0.0, bn.eps))).argmax(1).numpy()
    assert bnlib.accuracy_with_batch_statistics(net, X[:6], Y[:6], 6, prior=6) == np.mean(want == Y[:6])
    assert not net.training and all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert "forward" not in vars(bn)


def test_bad_arguments_of_the_torch_tools_are_refused_clearly():
    net = bnlib.bn_mlp(8)
    with pytest.raises(ValueError, match="batch_size"):
        bnlib.adapt_batchnorm(net, X, batch_size=1)
    with pytest.raises(ValueError, match="no BatchNorm"):
        bnlib.adapt_batchnorm(torch.nn.Linear(784, 3), X)
    with pytest.raises(ValueError, match="at most the batch's 8"):
        bnlib.train_accumulated(net, torch.optim.SGD(net.parameters(), lr=0.1), X, Y, 1, 8, 9)
    with pytest.raises(ValueError, match="width"):
        bnlib.bn_mlp(0)
