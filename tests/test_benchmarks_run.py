"""Every script in ``benchmarks/`` runs end to end at a tiny size and prints its table.

Speed ratios are not asserted here (they are measured side by side by the scripts themselves, never in a
timed test); what is asserted is that each script still runs against the current packages, prints the rows
it promises, and that the numbers it checks itself (agreement of two paths, parameter counts) hold.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
SHARED_DATA = Path(os.environ.get("CNNKIT_DATA") or ROOT.parent / "shared" / "data")


def benchmark_process(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``benchmarks/<name>.py args`` run to the end on one thread, its output captured."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )


def run_benchmark(name: str, *args: str) -> str:
    """stdout of ``benchmarks/<name>.py args`` on one thread; fails the test with its stderr if it fails."""
    proc = benchmark_process(name, *args)
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc.stdout


def table_row(out: str, first_cell: str) -> list[str]:
    """The cells of the Markdown table row whose first cell is ``first_cell``."""
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row {first_cell!r} in:\n{out}")


def test_mod_latency_prints_models_ceiling_and_in_model_parts() -> None:
    out = run_benchmark(
        "mod_latency", "--models", "resnet50_mod", "--batches", "1", "--repeats", "1",
        "--min-time", "0.01", "--bound", "--in-model",
    )  # fmt: skip
    assert table_row(out, "resnet50_mod")[1] == "18.11"  # the paper's parameter count (M)
    assert float(table_row(out, "resnet50_mod, MoD blocks = identity (ceiling)")[3]) > 0
    parts = [table_row(out, f"layer{s}.1{p}") for s in (1, 2, 3, 4) for p in ("", ".selector", ".block")]
    assert all(float(cells[3]) > 0 and float(cells[4]) > 0 for cells in parts)
    assert "all MoD blocks:" in out


def test_haste_layer_prints_each_path() -> None:
    out = run_benchmark(
        "haste_layer", "--fractions", "0.5", "--patches", "4,image", "--stages", "3", "--repeats", "1",
        "--min-run-time", "0.01", "--batch", "2", "--stack", "2",
    )  # fmt: skip
    rows = [line for line in out.splitlines() if line.startswith("| 3 | 256@8x8 |")]
    assert len(rows) == 4  # patch 4 and per image, at batch 1 and 2
    assert "| HASTE torch ms | HASTE native ms | speed-up torch | speed-up native |" in out
    # dense, then both kernels' times and speed-ups; b/C = 0.5: ideal 2x
    assert all(re.search(r"(\| \d+\.\d{3} ){3}(\| \d+\.\d+x ){2}\| 2\.00x \|$", row) for row in rows)


@pytest.mark.skipif(
    not (SHARED_DATA / "cifar10-jpeg.tar.gz").exists(), reason=f"no CIFAR-10 JPEG copy in {SHARED_DATA}"
)
def test_haste_cifar_trains_briefly_and_paths_agree_layer_by_layer(tmp_path: Path) -> None:
    out = run_benchmark(
        "haste_cifar", "--model", "resnet20", "--data-root", str(SHARED_DATA), "--cache-dir", str(tmp_path),
        "--threads", "1",
        "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "32", "--test-images", "16",
        "--eval-batch", "16", "--hyperplanes", "12", "--latency-batch", "2", "--latency-images", "2",
        "--min-run-time", "0.01", "--haste-seeds", "0,3", "--split", "test", "--stage-hyperplanes", "3:10",
        "--allocate", "0.01", "--allocate-images", "8", "--allocate-candidates", "4,12",
    )  # fmt: skip
    assert "split test" in out and "L per stage {3: 10}" in out
    per_layer = json.loads(re.search(r"L per layer \(per layer, 1\.0 % predicted\): (\{.*\})", out).group(1))
    assert per_layer and set(per_layer.values()) <= {4, 12}
    assert "per-layer sensitivities on 8 validation images" in out
    assert list(tmp_path.glob("resnet20-*/sensitivity-*.json"))  # cached beside the checkpoint
    for label in ("12, seed 0 (stage 3: 10)", "12, seed 3 (stage 3: 10)", "per layer, 1.0 % predicted"):
        row = table_row(out, label)
        assert float(row[6]) < 1e-4  # simulate vs compressed, every HASTE layer on the same input
        assert 0.0 < float(row[5]) < 1.0  # buckets per channel
        assert float(row[7].rstrip(" %")) > float(row[3].rstrip(" %"))  # without the overhead: a larger cut
        assert len(row[8].split(" / ")) == 6  # dense, tuned, HASTE, tuned HASTE, ceiling, merge bound
        ceiling, bound = (float(v.rstrip("x")) for v in row[10].split(" (")[0].split(" / "))
        assert ceiling > 0 and bound > 0
    assert "tuned dense baseline, batch 1" in out
    assert list(tmp_path.glob("resnet20-*/checkpoint.pt"))  # the trained model is cached


def test_haste_cifar_splits_the_test_images_into_disjoint_halves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from haste_cifar import split_indices

    validation, test = (split_indices(10_000, 10_000, s, seed=0) for s in ("validation", "test"))
    assert len(validation) == len(test) == 5_000 and not set(validation) & set(test)
    assert sorted(validation + test) == list(range(10_000))
    assert split_indices(10_000, 100, "test", seed=0) == test[:100]  # --test-images caps within the half
    assert split_indices(10_000, 10_000, "all", seed=0) != list(range(10_000))  # shuffled


def test_haste_cifar_start_layer_takes_a_stage_or_a_conv_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from haste_cifar import stage_or_conv

    assert stage_or_conv("3") == 3
    assert stage_or_conv("layer4.0.conv2") == "layer4.0.conv2"


def test_haste_cifar_merge_bound_reads_the_full_weight_per_tile(monkeypatch: pytest.MonkeyPatch) -> None:
    import copy

    import torch
    from torch import nn

    from cnnkit.core import Context, create_method

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from haste_cifar import SlicedConv, ceiling_model, merge_bound

    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)).eval()
    x = torch.randn(3, 8, 8, 8)
    method = create_method("haste", start_layer="0", patch=4, hyperplanes=4)
    model = method.apply(copy.deepcopy(dense), Context(example_input=x)).eval()
    with torch.no_grad():
        model(x)
    ceiling = ceiling_model(dense, model)
    bound = merge_bound(ceiling, model)
    sliced = {name: m for name, m in bound.named_modules() if isinstance(m, SlicedConv)}
    assert sorted(sliced) == ["0", "2"]
    assert all(m.reads == 4 for m in sliced.values())  # 8x8 output maps in 4x4 tiles: 4 per image
    assert all(m.reads == 0 for m in ceiling.modules() if isinstance(m, SlicedConv))  # the ceiling is kept
    for name, m in sliced.items():  # the full weight is read, not the sliced one
        assert torch.equal(m.full_weight, dense.get_submodule(name).weight)
    with torch.no_grad():
        assert torch.equal(bound(x), ceiling(x))  # the reads cost time only


def test_haste_cifar_tuning_switches_plain_convs_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tuned HASTE against the tuned dense model: the convs HASTE leaves dense get the backend choice,
    HASTE's own convs are kept (else their saving would be timed on the wrong path)."""
    import copy

    import torch
    from torch import nn

    from cnnkit.core import Context, create_method
    from cnnkit.efficiency.haste import HASTEConv2d

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import haste_cifar

    torch.manual_seed(0)
    dense = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
    ).eval()  # fmt: skip
    x = torch.randn(2, 3, 8, 8)
    method = create_method("haste", start_layer="2", patch=4, hyperplanes=4, mode="compressed")
    model = method.apply(copy.deepcopy(dense), Context(example_input=x)).eval()
    # oneDNN always "faster": every conv the tuning may switch is switched
    monkeypatch.setattr(
        haste_cifar, "seconds", lambda m, *a: 1.0 if isinstance(m, haste_cifar.OneDNNConv) else 2.0
    )
    tuned, switched = haste_cifar.tuned_copy(model, x, clock=None)
    assert switched == 1
    assert isinstance(tuned.get_submodule("0"), haste_cifar.OneDNNConv)
    assert all(isinstance(tuned.get_submodule(n), HASTEConv2d) for n in ("2", "4"))
    assert isinstance(model.get_submodule("0"), nn.Conv2d)  # the original is not touched
    with torch.no_grad():
        torch.testing.assert_close(tuned(x), model(x), rtol=1e-4, atol=1e-5)
    # the benchmark's tuned HASTE: the tuned dense model's choices, applied to the convs HASTE left plain
    tuned_dense, switched = haste_cifar.tuned_copy(dense, x, clock=None)
    assert switched == 3 and sorted(haste_cifar.onednn_names(tuned_dense)) == ["0", "2", "4"]
    tuned_haste = haste_cifar.switch_to_onednn(copy.deepcopy(model), haste_cifar.onednn_names(tuned_dense))
    assert haste_cifar.onednn_names(tuned_haste) == ["0"]
    assert all(isinstance(tuned_haste.get_submodule(n), HASTEConv2d) for n in ("2", "4"))


def test_haste_cifar_refuses_a_cuda_sweep_with_cpu_timings(tmp_path: Path) -> None:
    proc = benchmark_process("haste_cifar", "--eval-device", "cuda", "--cache-dir", str(tmp_path))
    assert proc.returncode != 0
    assert "--eval-device cuda" in proc.stderr and "--no-latency" in proc.stderr
    assert not list(tmp_path.iterdir())  # refused before any training


def test_cops_speed_solves_resnet50_size() -> None:
    out = run_benchmark("cops_speed", "--repeats", "1", "--skip-highs", "--threads", "1")
    assert re.search(r"ResNet-50 \| 25,502,912 \|", out)
    assert "goal ResNet-50 size" in out


def test_dwt_speed_agrees_with_pywavelets_and_compares_paths() -> None:
    out = run_benchmark("dwt_speed", "--repeats", "1", "--threads", "1", "--min-time", "0.01")
    summary = next(line for line in out.splitlines() if line.startswith("SUMMARY:"))
    outputs = re.search(r"max \|Δout\| ([0-9.e+-]+)", summary)  # every contender vs ours
    assert outputs and float(outputs.group(1)) < 1e-5
    coeffs = re.search(r"max \|Δcoeff\| (\S+),", summary)  # "—" without pytorch_wavelets and ptwt
    assert coeffs and (coeffs.group(1) == "—" or float(coeffs.group(1)) < 1e-5)


def test_regularizer_overhead_times_methods_against_the_baseline() -> None:
    out = run_benchmark(
        "regularizer_overhead", "--batch-size", "8", "--steps", "1", "--repeats", "1", "--warmup", "0",
        "--device", "cpu", "--methods", "sr,swd-2d",
    )  # fmt: skip
    for method in ("baseline", "sr", "swd-2d"):
        assert re.search(rf"^{re.escape(method)}\s+\d+\.\d+\s+\d\.\d+", out, re.MULTILINE), method


def test_scoring_time_times_each_score() -> None:
    out = run_benchmark(
        "scoring_time", "--models", "cifar_resnet18", "--scores", "magnitude", "snip", "--repeats", "1",
        "--cifar-batch", "8",
    )  # fmt: skip
    for score in ("magnitude", "snip"):
        assert re.search(rf"cifar_resnet18 \|\s+8 \|\s+{score} \|\s+\d+\.\d+", out), score


def test_trainer_throughput_trains_the_same_as_by_hand() -> None:
    out = run_benchmark(
        "trainer_throughput", "--steps", "2", "--repeats", "1", "--device", "cpu", "--batch-size", "8"
    )
    losses = re.search(r"mean train loss trainer ([0-9.]+), hand-written ([0-9.]+)", out)
    assert losses and losses.group(1) == losses.group(2)
    assert re.search(r"ratio trainer/hand-written: \d+\.\d+", out)


def test_data_on_device_times_both_data_paths() -> None:
    out = run_benchmark(
        "data_on_device", "--dataset", "fashion_mnist_mini", "--model", "lenet5_caffe", "--steps", "2",
        "--repeats", "1", "--batch-size", "16",
    )  # fmt: skip
    for contender in ("loader", "on device"):
        cells = table_row(out, contender)
        assert float(cells[1]) > 0 and float(cells[2]) > 0 and float(cells[3]) >= 0
    assert re.search(r"on device / loader: data alone \d+\.\d+x, training \d+\.\d+x, setup [+-]\d", out)
