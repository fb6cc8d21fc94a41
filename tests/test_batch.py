"""reconstruct_many(): every engine gives the same images; failures, Ctrl-C and checks first.

The fits are tiny (32×32 crops, 12 iterations, 8 channels): what costs time is starting worker
processes and Ray, so the local pool and the Ray cluster each run one batch that covers the
good items, a corrupt file, a fit that raises and a worker that dies.
"""

import concurrent.futures as cf
import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
import torch

from deepprior import (
    BatchResult,
    GaussianSensing,
    Mask,
    add_gaussian_noise,
    item_seed,
    reconstruct,
    reconstruct_many,
    register_net,
    sample_image,
    save_image,
)
from deepprior import batch as batch_module
from deepprior.nets import DeepDecoder

pytestmark = pytest.mark.filterwarnings("ignore:image size .* is below:UserWarning")

NET = "batch_test_decoder"  # registered by the `registered` fixture, in this process only
FIT = {"net": NET, "max_num_iter": 12, "stop": "fixed:12", "net_options": {"channels": 8}}
BRIGHT = np.full((16, 16), 0.95, dtype=np.float32)  # the item the callbacks below act on


def small_decoder(image_shape, norm="channel", **options):
    """A network registered under NET: workers must learn it from the batch."""
    return DeepDecoder(image_shape, norm=norm, **options)


def _is_bright(state) -> bool:
    return float(state.y.mean()) > 0.9


class InterruptOnBright:
    """A callback that raises KeyboardInterrupt in the fit of the bright item.

    The other fits sleep ``delay`` seconds per iteration, so that they cannot all finish while
    the bright one waits for a worker.
    """

    def __init__(self, delay: float = 0.0):
        self.delay = delay

    def __call__(self, state):
        if _is_bright(state):
            raise KeyboardInterrupt
        time.sleep(self.delay)


class CrashOnBright:
    """A callback that kills its worker process in the fit of the bright item."""

    def __call__(self, state):
        if _is_bright(state):
            os._exit(3)


@pytest.fixture(scope="module", autouse=True)
def registered(module_registry):
    register_net(NET, small_decoder, replace=True)


@pytest.fixture(scope="module")
def clean():
    camera, astronaut = sample_image("camera", size=64), sample_image("astronaut", size=64)
    crops = [camera[:32, :32], camera[:32, 32:], camera[32:, :32], camera[32:, 32:],
             astronaut[:32, 16:48], astronaut[32:, 16:48]]
    return {f"crop{i}": crop for i, crop in enumerate(crops)}


@pytest.fixture(scope="module")
def noisy(clean):
    return {name: np.clip(add_gaussian_noise(image, 0.1, seed=i), 0, 1)  # as files hold them
            for i, (name, image) in enumerate(clean.items())}


@pytest.fixture(scope="module")
def folder(tmp_path_factory, noisy):
    """The noisy crops as .npy files, and a corrupt PNG."""
    root = tmp_path_factory.mktemp("batch")
    for name, image in noisy.items():
        save_image(root / f"{name}.npy", image)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    return root


def _mixed_batch(folder, noisy):
    """Six good files, a corrupt file, a fit that raises, a worker that dies (last)."""
    items = [folder / f"{name}.npy" for name in noisy]
    items += [folder / "broken.png", ("bad_truth", noisy["crop0"]), ("crash", BRIGHT)]
    return items


def _run_mixed(folder, noisy, clean, **engine):
    truth = {**clean, "bad_truth": np.zeros((5, 5), np.float32)}
    results = list(reconstruct_many(_mixed_batch(folder, noisy), ground_truth=truth,
                                    callback=CrashOnBright(), **FIT, **engine))
    return {r.name: r for r in results}, [r.name for r in results]


@pytest.fixture(scope="module")
def pool_run(folder, noisy, clean):
    return _run_mixed(folder, noisy, clean, workers=2)


@pytest.fixture(scope="module")
def in_process(noisy, clean):
    return {r.name: r for r in reconstruct_many(list(noisy.items()), workers=1,
                                                ground_truth=clean, **FIT)}


def _check_failures(results):
    broken, bad_truth, crash = results["broken"], results["bad_truth"], results["crash"]
    for failed in (broken, bad_truth, crash):
        assert failed.result is None and not failed.ok and "\n" not in failed.error
    assert broken.error.startswith("ImageError:") and "broken.png" in broken.error
    assert bad_truth.error.startswith("ValueError: ground_truth must have shape")
    return crash


# --------------------------------------------------------------------------- results


def test_item_seeds_are_a_stable_hash_of_the_name():
    assert item_seed(0, "camera") == 1373970249  # the same on every machine and run
    assert item_seed(0, "camera") != item_seed(1, "camera") != item_seed(1, "camera2")
    assert 0 <= item_seed(7, "é/ü") < 2**31


def test_local_pool_yields_every_item_and_goes_on_after_failures(pool_run, noisy):
    results, order = pool_run
    assert sorted(order) == sorted([*noisy, "broken", "bad_truth", "crash"])
    for name in noisy:
        item = results[name]
        assert isinstance(item, BatchResult) and item.ok and item.error is None
        assert item.result.image.shape == noisy[name].shape
        assert item.seed == item_seed(0, name) == item.result.config["seed"]
        assert item.result.psnr is not None and item.seconds > 0
        assert item.result.config["net"] == NET  # the workers learnt the registered network
    crash = _check_failures(results)
    assert "died twice" in crash.error


def test_one_worker_in_process_gives_the_same_images_and_restores_threads(
        pool_run, in_process, noisy):
    results, _ = pool_run
    assert torch.get_num_threads() >= 1
    for name in noisy:
        np.testing.assert_array_equal(in_process[name].result.image, results[name].result.image)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        list(reconstruct_many([noisy["crop0"]], workers=1, **FIT))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_seeds_come_from_names_not_from_order(noisy, in_process):
    items = list(noisy.items())[::-1]
    backwards = {r.name: r for r in reconstruct_many(items, workers=1, **FIT)}
    assert list(backwards) == [name for name, _ in items]  # one worker: the items' order
    for name in noisy:
        np.testing.assert_array_equal(backwards[name].result.image,
                                      in_process[name].result.image)
    renamed = next(reconstruct_many([("other", noisy["crop0"])], workers=1, **FIT))
    assert not np.array_equal(renamed.result.image, in_process["crop0"].result.image)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the batch fits: one thread (cpus_per_fit=1)
    try:
        alone = reconstruct(noisy["crop0"], seed=in_process["crop0"].seed, **FIT)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(alone.image, in_process["crop0"].result.image)


def test_ground_truth_as_a_function_and_operators_per_item(noisy, clean, tmp_path):
    save_image(tmp_path / "clean0.npy", clean["crop0"])
    mask = Mask((32, 32), keep=0.7, seed=0)

    def truth(name):
        if name == "missing":
            raise KeyError(name)
        return tmp_path / "clean0.npy" if name == "crop0" else None

    items = [("crop0", noisy["crop0"]), ("crop1", noisy["crop1"]), ("missing", noisy["crop2"]),
             ("masked", (noisy["crop3"] * mask.mask.numpy()[0, 0], mask))]
    results = {r.name: r for r in reconstruct_many(items, workers=1, ground_truth=truth, **FIT)}
    assert results["crop0"].result.psnr is not None and results["crop1"].result.psnr is None
    assert results["missing"].error == "KeyError: 'missing'"
    assert results["masked"].ok and results["masked"].result.config["problem"] == "inpainting"


def test_a_file_of_noise_simulated_without_clipping_is_fitted_as_it_is(clean, tmp_path):
    """Float samples outside [0, 1] in a path item: the observation, fitted as the array is
    (the item failed: "values lie in [...], outside [0, 1]")."""
    noisy = add_gaussian_noise(clean["crop0"], 0.1, seed=0)
    assert noisy.min() < 0
    np.save(tmp_path / "crop0.npy", noisy)
    [from_file] = reconstruct_many([tmp_path / "crop0.npy"], workers=1, **FIT)
    [from_array] = reconstruct_many([("crop0", noisy)], workers=1, **FIT)
    assert from_file.ok, from_file.error
    np.testing.assert_array_equal(from_file.result.image, from_array.result.image)


def test_path_items_of_measurements_are_read_as_arrays_of_any_shape(tmp_path):
    """A flat vector in a .npy path item, with operator=..., failed every item ("unsupported
    .npy shape (100,)"): a file of measurements is now read with load_array."""
    operator = GaussianSensing(100, (1, 16, 16), seed=0)
    y = operator.A(torch.from_numpy(sample_image("camera", size=16))[None, None])[0].numpy()
    np.save(tmp_path / "flat.npy", y)
    np.savetxt(tmp_path / "column.txt", y.reshape(-1, 1))
    done = {r.name: r for r in reconstruct_many([tmp_path / "flat.npy", tmp_path / "column.txt"],
                                                operator=operator, workers=1, **FIT)}
    in_memory = {r.name: r for r in reconstruct_many([("flat", y), ("column", y)],
                                                     operator=operator, workers=1, **FIT)}
    assert done["flat"].ok and done["column"].ok, [r.error for r in done.values()]
    for name in ("flat", "column"):  # the text file's decimals round y: equal to 1e-4
        np.testing.assert_allclose(done[name].result.image, in_memory[name].result.image,
                                   atol=1e-4 if name == "column" else 0)


def test_each_item_its_own_noise_level(noisy):
    items = [("crop0", noisy["crop0"]), ("crop1", noisy["crop1"]), ("crop2", noisy["crop2"])]
    results = {r.name: r.result for r in reconstruct_many(
        items, workers=1, sigma={"crop0": 0.1, "crop1": None}, **FIT)}
    assert results["crop0"].config["sigma"] == pytest.approx(0.1)
    assert results["crop1"].config["sigma"] is None is results["crop2"].config["sigma"]


def test_a_module_and_a_policy_start_afresh_for_each_fit(noisy):
    net = DeepDecoder((1, 32, 32), channels=8)
    weights = [p.detach().clone() for p in net.parameters()]
    items = [("a", noisy["crop0"]), ("b", noisy["crop1"])]
    results = list(reconstruct_many(items, workers=1, net=net, max_num_iter=5, stop="fixed:5"))
    assert all(r.ok for r in results)
    assert all(torch.equal(p, w) for p, w in zip(net.parameters(), weights, strict=True))


# --------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_yields_the_finished_items_then_raises(noisy):
    items = [("first", noisy["crop0"]), ("bright", BRIGHT), ("never", noisy["crop1"])]
    seen = []
    with pytest.raises(KeyboardInterrupt):
        for item in reconstruct_many(items, workers=1, callback=InterruptOnBright(), **FIT):
            seen.append(item.name)
    assert seen == ["first"]


def test_ctrl_c_in_a_terminal_stops_the_workers_at_once(tmp_path):
    """SIGINT to the whole process group, as a terminal sends it; and Ray is never imported."""
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent("""
        import multiprocessing, signal, sys, time
        import numpy as np
        from deepprior import reconstruct_many

        # Ctrl-C raises KeyboardInterrupt, as in a terminal, even when the test runner was
        # started in the background of a script (which makes SIGINT ignored, and inherited so)
        signal.signal(signal.SIGINT, signal.default_int_handler)

        class SlowOnDark:  # the dark items would take 20 s each
            def __call__(self, state):
                if float(state.y.mean()) < 0.5:
                    time.sleep(0.05)

        if __name__ == "__main__":
            rng = np.random.default_rng(0)  # textured: a constant image can end a fit early
            items = [("fast", 0.8 + 0.2 * rng.random((16, 16), np.float32))]
            items += [(f"slow{i}", 0.2 * rng.random((16, 16), np.float32)) for i in range(4)]
            try:
                for r in reconstruct_many(items, workers=2, net="deep_decoder", max_num_iter=400,
                                          stop="fixed:400", net_options={"channels": 4},
                                          callback=SlowOnDark()):
                    print("result", r.name, r.ok, flush=True)
            except KeyboardInterrupt:
                print("interrupted", flush=True)
            print("children", len(multiprocessing.active_children()))
            print("ray imported", "ray" in sys.modules, flush=True)
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    try:
        first = process.stdout.readline()
        os.killpg(process.pid, signal.SIGINT)
        sent = time.perf_counter()
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert first == "result fast True\n", err
    assert out.splitlines() == ["interrupted", "children 0", "ray imported False"], err
    assert time.perf_counter() - sent < 15  # not the 20 s a slow fit takes
    assert process.returncode == 0 and "Traceback" not in err, err


# --------------------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    # Ray's workers cannot import this test file: send its callbacks and network by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="error")
    yield ray
    ray.shutdown()
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_ray_gives_the_same_images_and_failures(ray_cluster, folder, noisy, clean, pool_run):
    results, _ = _run_mixed(folder, noisy, clean, engine="ray")
    local, _ = pool_run
    for name in noisy:
        assert results[name].ok and results[name].seed == local[name].seed
        np.testing.assert_array_equal(results[name].result.image, local[name].result.image)
    assert results["broken"].error == local["broken"].error
    assert results["bad_truth"].error == local["bad_truth"].error
    crash = _check_failures(results)
    assert crash.error.startswith("the Ray task failed")
    assert ray_cluster.is_initialized()  # the caller's connection is left open


def test_ray_ctrl_c_yields_the_finished_items_then_raises(ray_cluster, noisy):
    items = [("first", noisy["crop0"]), ("bright", BRIGHT), *noisy.items()]
    seen = []
    with pytest.raises(KeyboardInterrupt):
        for item in reconstruct_many(items, engine="ray", workers=1,
                                     callback=InterruptOnBright(delay=0.2), **FIT):
            assert item.ok
            seen.append(item.name)
    assert "bright" not in seen and len(seen) < len(items) - 1  # the last ones never ran


# --------------------------------------------------------------------------- checks first


@pytest.mark.parametrize(("items", "options", "error", "match"), [
    ([("a", BRIGHT), ("a", BRIGHT)], {}, ValueError, "names must be unique.*'a' .items 0, 1"),
    ([BRIGHT, ("item0", BRIGHT)], {}, ValueError, "names must be unique"),
    (["/no/such/file.png", BRIGHT], {}, ValueError, "1 of 2 items name no file: /no/such"),
    ([np.full((8, 8), np.nan)], {}, ValueError, "NaN"),
    ([np.zeros((8, 8, 5))], {}, ValueError, r"must be an image \(H, W\)"),
    ([(np.zeros(7), Mask((4, 4), keep=1.0))], {}, ValueError, "measurements of shape"),
    ([(BRIGHT, Mask((16, 16), keep=1.0))], {"operator": Mask((16, 16), keep=1.0)},
     ValueError, "either per item or for the batch"),
    ([("a", "not an item", 3)], {}, TypeError, "must be a path, an array"),
    ("one.png", {}, TypeError, "wrap it in a list"),
    ([BRIGHT], {"learning_rat": 0.1}, TypeError, "unexpected keyword argument 'learning_rat'"),
    ([BRIGHT], {"progress": True}, ValueError, "progress"),
    ([BRIGHT], {"net": "resnet"}, ValueError, "unknown network"),
    ([BRIGHT], {"net": DeepDecoder((1, 64, 64), channels=4), "net_options": {"channels": 8}},
     ValueError, "net_options apply to named networks"),
    ([BRIGHT], {"sigma": -0.1}, ValueError, "sigma must satisfy"),
    ([BRIGHT], {"lr_decay": (2.0, 10)}, ValueError, "lr_decay factor must satisfy"),
    ([BRIGHT], {"stop": object()}, TypeError, "stop must be a spec or a policy"),
    ([BRIGHT], {"stop": "sometimes"}, ValueError, "unknown stopping rule"),
    ([BRIGHT], {"engine": "spark"}, ValueError, "engine must be one of local, ray"),
    ([BRIGHT], {"workers": 0}, ValueError, "workers must be an integer >= 1"),
    ([BRIGHT], {"gpus_per_fit": 1.5}, ValueError, "gpus_per_fit"),
    ([BRIGHT], {"gpus_per_fit": 0.5, "device": "cpu"}, ValueError, "needs a CUDA device"),
    ([BRIGHT], {"address": "auto"}, ValueError, "address='auto' is for engine='ray'"),
    ([BRIGHT], {"ground_truth": {"nope": BRIGHT}}, ValueError, "not in the batch: nope"),
    ([BRIGHT], {"sigma": {"nope": 0.1}}, ValueError, "sigma names 1 items that are not in"),
    ([BRIGHT], {"sigma": {"item0": -1.0}}, ValueError, "sigma of 'item0' must satisfy"),
    ([BRIGHT], {"ground_truth": BRIGHT}, TypeError, "ground_truth must map item names"),
    ([BRIGHT, BRIGHT[::-1]], {"workers": 2, "callback": lambda state: None}, ValueError,
     "option callback cannot be sent to worker processes"),
    ([BRIGHT], {"engine": "ray", "device": "cuda:1"}, ValueError, "Ray assigns the GPU"),
])
def test_bad_batches_are_refused_before_any_fit(items, options, error, match):
    if options.get("engine") == "ray":
        pytest.importorskip("ray")
    with pytest.raises(error, match=match):
        reconstruct_many(items, **options)  # raises at the call: nothing ran


def test_a_missing_cuda_device_is_an_error_and_ray_a_named_extra(monkeypatch):
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            reconstruct_many([BRIGHT], device="cuda")
    monkeypatch.setattr(batch_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r'pip install "deepprior\[ray\]"'):
        reconstruct_many([BRIGHT], engine="ray")


# --------------------------------------------------------------------------- scheduling


@pytest.fixture()
def three_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)


@pytest.mark.parametrize(("device", "workers", "gpus_per_fit", "slots"), [
    ("auto", None, None, [("cuda:0", 1), ("cuda:1", 1), ("cuda:2", 1)]),
    ("cuda", None, 0.5, [("cuda:0", 2), ("cuda:1", 2), ("cuda:2", 2)]),
    ("cuda", None, 0.3, [("cuda:0", 3), ("cuda:1", 3), ("cuda:2", 3)]),
    ("cuda", 4, 0.5, [("cuda:0", 2), ("cuda:1", 1), ("cuda:2", 1)]),
    ("cuda", 2, None, [("cuda:0", 1), ("cuda:1", 1)]),
    ("cuda:1", None, 0.25, [("cuda:1", 4)]),
])
def test_fits_per_gpu(three_gpus, device, workers, gpus_per_fit, slots):
    assert batch_module._local_slots(device, workers, gpus_per_fit, 1) == slots


def test_more_workers_than_the_gpus_hold_is_an_error(three_gpus):
    with pytest.raises(ValueError, match="workers=7 is more fits than 3 CUDA device"):
        batch_module._local_slots("cuda", 7, 0.5, 1)


def test_cpu_workers_default_to_the_cpus(monkeypatch):
    monkeypatch.setattr(batch_module, "_usable_cpus", lambda: 8)
    assert batch_module._local_slots("cpu", None, None, 1) == [("cpu", 8)]
    assert batch_module._local_slots("cpu", None, None, 2) == [("cpu", 4)]
    assert batch_module._local_slots("cpu", 3, None, 1) == [("cpu", 3)]


class _Recorder:
    """A stand-in for a process pool: records the tasks, finishes them at once."""

    def __init__(self):
        self.tasks = []

    def submit(self, function, task):
        self.tasks.append(task)
        future = cf.Future()
        future.set_result(batch_module._Outcome(seconds=0.0))
        return future

    def shutdown(self, **options):
        pass


def test_each_device_gets_its_own_pool_and_the_least_loaded_one_the_next_fit(monkeypatch):
    pools = {}
    engine = batch_module._LocalPool(None, [("cuda:0", 2), ("cuda:1", 1)])
    monkeypatch.setattr(engine, "_executor",
                        lambda slot, alone: pools.setdefault(slot.device, _Recorder()))
    task = batch_module._Task("x", 0, BRIGHT, None, None, 0.0)
    for name in "abc":
        engine.submit(dataclasses.replace(task, name=name))
    assert [t.device for t in pools["cuda:0"].tasks] == ["cuda:0", "cuda:0"]
    assert [t.device for t in pools["cuda:1"].tasks] == ["cuda:1"]
    assert sorted(t.name for t, _ in engine.wait()) == ["a", "b", "c"]
    assert [s.load for s in engine.slots] == [0, 0]


@pytest.mark.parametrize(("device", "gpus_per_fit", "request_"), [
    ("auto", None, None), ("auto", 0.25, 0.25), ("cuda", None, 1.0), ("cpu", None, 0.0)])
def test_ray_gpu_requests(device, gpus_per_fit, request_):
    assert batch_module._ray_gpu_request(device, gpus_per_fit) == request_


# --------------------------------------------------------------------------- as users call it


def test_results_come_back_writable_and_warnings_once_and_as_errors_fail_the_item(registered):
    """Ray's results come read-only from its object store; each warning is re-issued once per
    batch; a warnings filter that makes one an error fails that item, not the batch."""
    image = np.zeros((8, 8), np.float32)
    image.flags.writeable = False
    members = np.zeros((2, 8, 8), np.float32)
    members.flags.writeable = False
    result = dataclasses.replace(reconstruct(BRIGHT, **FIT), image=image, members=members)
    task = batch_module._Task("a", 0, BRIGHT, None, None, 0.0)
    outcome = batch_module._Outcome(result, warnings=(("odd size", UserWarning),))
    shown: set = set()
    with pytest.warns(UserWarning, match="odd size") as caught:
        first = batch_module._result(task, outcome, shown)
        second = batch_module._result(task, outcome, shown)
    assert len(caught) == 1 and first.ok and second.warnings == ("odd size",)
    first.result.image[0, 0] = first.result.members[0, 0, 0] = 1  # copies, writable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        failed = batch_module._result(task, outcome, set())
    assert failed.result is None and "a warning the warnings filter makes an error: " \
        "UserWarning: odd size" in failed.error


def test_a_replaced_default_network_goes_to_the_workers(registry):
    register_net("dip", small_decoder, replace=True)
    [(name, factory, rows)] = batch_module._registration(None)
    assert (name, factory, rows) == ("dip", small_decoder, {})
    assert batch_module._registration(DeepDecoder((1, 8, 8))) == ()


def test_items_as_a_mapping_a_reused_buffer_and_bfloat16_tensors(registered):
    def frames():
        buffer = np.empty((16, 16), np.float32)
        for k in range(2):
            buffer[:] = 0.2 + 0.5 * k  # one buffer, refilled: each item keeps its own frame
            yield f"frame{k}", buffer

    parsed = batch_module._parse_items(frames(), None, None, False)
    assert [float(item.array.mean()) for item in parsed] == pytest.approx([0.2, 0.7])
    # a list's arrays are the caller's: no second copy of every image before the first fit
    frames = [np.full((16, 16), 0.5, np.float32) for _ in range(2)]
    for items in (frames, {"a": frames[0], "b": frames[1]}):
        parsed = batch_module._parse_items(items, None, None, False)
        assert all(item.array is frame for item, frame in zip(parsed, frames, strict=True))
    items = {"bf16": torch.from_numpy(BRIGHT).bfloat16(), "plain": BRIGHT}
    done = {r.name: r for r in reconstruct_many(items, workers=1, **FIT)}
    assert done["bf16"].ok and done["plain"].ok, [r.error for r in done.values()]


@pytest.mark.parametrize(("options", "error", "message"), [
    ({"norm": "bogus"}, ValueError, "norm must be one of"),
    ({"precision": "bogus"}, ValueError, "precision"),
    ({"net_options": {"bogus": 1}}, TypeError, "keyword argument 'bogus'"),
    ({"ensemble": 0}, ValueError, "ensemble must be an integer >= 1"),
])
def test_options_only_data_can_check_are_refused_before_any_fit(registered, monkeypatch, options,
                                                                error, message):
    monkeypatch.setattr(batch_module, "_fit_one", lambda *a, **k: pytest.fail("a fit began"))
    with pytest.raises(error, match=f"checked on item 'a': .*{message}"):
        reconstruct_many([("a", BRIGHT)], workers=1, **{**FIT, **options})


def test_options_are_checked_before_any_fit_with_ground_truths_too(registered, monkeypatch):
    """The check used to be skipped with ground truths and an operator, or an oracle stop: a bad
    option then failed every item in its fit (every CLI inpaint without --mask, --simulate,
    --clean)."""
    monkeypatch.setattr(batch_module, "_fit_one", lambda *a, **k: pytest.fail("a fit began"))
    mask = Mask((16, 16), keep=0.5, seed=0)
    masked = [(f"m{k}", (mask.A(torch.from_numpy(BRIGHT)[None, None])[0].numpy(), mask))
              for k in range(2)]
    truths = {"m0": BRIGHT, "m1": BRIGHT}
    bogus = {**FIT, "net_options": {"bogus": 1}}
    with pytest.raises(TypeError, match=r"checked on item 'm0' \(and on the next 1 items "
                                        r"tried\): .*'bogus'"):
        reconstruct_many(masked, workers=1, ground_truth=truths, **bogus)
    with pytest.raises(TypeError, match="checked on item 'a': .*'bogus'"):
        reconstruct_many([("a", BRIGHT)], workers=1, ground_truth={"a": BRIGHT},
                         **{**bogus, "stop": "oracle"})


def test_an_image_on_the_0_255_scale_or_too_small_is_refused_by_name():
    with pytest.raises(ValueError, match="item 'a': observation values go up to 242.2"):
        reconstruct_many([("a", BRIGHT * 255)])
    with pytest.raises(ValueError, match="item 'b': the image is 3x3 pixels"):
        reconstruct_many([("b", BRIGHT[:3, :3])])


def test_what_belongs_to_an_item_fails_it_alone_and_a_sigma_scale_is_checked_up_front(
        registered, monkeypatch):
    """The check before any fit leaves an item's ground truth to its fit (stop='oracle' runs;
    a wrong one fails that item only, see _run_mixed); σ in 0-255 units is refused at once."""
    items = reconstruct_many([("a", BRIGHT)], workers=1, ground_truth={"a": BRIGHT},
                             **{**FIT, "stop": "oracle"})
    assert next(items).ok
    monkeypatch.setattr(batch_module, "_fit_one", lambda *a, **k: pytest.fail("a fit began"))
    for sigma, label in ((25, "sigma"), ({"a": 25}, "sigma of 'a'")):
        with pytest.raises(ValueError, match=f"{label} must be on the \\[0, 1\\] intensity "
                                             "scale for denoising, got 25"):
            reconstruct_many([("a", BRIGHT)], workers=1, sigma=sigma, **FIT)


def test_the_check_before_any_fit_leaves_an_items_own_failure_to_it_and_uses_its_sigma(
        registered, tmp_path):
    """An image too small for the network, first in the batch, stopped the whole batch; a σ
    mapping was dropped from the check (which then asked for σ), on_start refused, and a batch
    of files went unchecked."""
    tiny, fine = np.full((6, 6), 0.5, np.float32), np.full((32, 32), 0.5, np.float32)
    options = {**FIT, "net": "conv_decoder", "net_options": {"channels": 4}}
    done = {r.name: r for r in reconstruct_many([("a", tiny), ("b", fine)], workers=1,
                                                **options)}
    assert done["b"].ok and "smaller than ConvDecoder's" in done["a"].error
    with pytest.raises(ValueError, match=r"checked on item 'a' \(and on the next 1 items tried\)"):
        reconstruct_many([("a", tiny), ("b", tiny[:5])], workers=1, **options)
    mask = Mask((16, 16), keep=0.5, seed=0)
    items = [(f"f{k}", (mask.A(torch.from_numpy(BRIGHT)[None, None])[0].numpy(), mask))
             for k in range(2)]
    plans = []
    done = list(reconstruct_many(items, workers=1, sigma={"f0": 0.05, "f1": 0.1},
                                 on_start=plans.append, **{**FIT, "stop": "discrepancy"}))
    assert all(r.ok for r in done) and len(plans) == 2, [r.error for r in done]
    save_image(tmp_path / "p.png", BRIGHT)
    with pytest.raises(TypeError, match="checked on item 'p': .*'chanels'"):
        reconstruct_many([tmp_path / "p.png"], workers=1, **{**FIT, "net_options": {"chanels": 4}})
