"""`trainer train` stops, checkpoints and resumes where it stopped; and the trainer's command line.

The runs train a reader-shaped network of four layers (a convolution, BatchNorm, a per-column
classifier) on 28 random crops: the trainer's code paths are those of the real reader — CTC loss, the
plate-accuracy callback, BatchNorm statistics, Adam with its cosine schedule — in seconds on a CPU.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import ROOT
from trainer.cli import build_parser, drop_tf_start_noise, gpu_wanted, main

H, W = 16, 48  # crop size of the small reader
#: The run's own arguments; a resumed session is given none of them and must keep these.
RUN_ARGS = {"epochs": 2, "batch": 8, "lr": 3e-3, "seed": 5, "val_fraction": 0.1}
#: 28 samples, 2 held out: 26 to train on, 4 steps per epoch (8, 8, 8, 2), 8 steps in the 2 epochs.
STEPS_PER_EPOCH = 4
STOP_AT = 5  # epoch 2, step 1: a stop inside an epoch, the harder case to resume


def _small_reader(kind: str, fine: int | None = None):
    import keras

    from edge.plates import READER_CLASSES

    assert kind == "reader"
    inp = keras.Input((H, W, 1))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(len(READER_CLASSES), (H // 2, 1))(x)  # (1, W/2, classes): a column sequence
    x = keras.layers.Reshape((W // 2, len(READER_CLASSES)))(x)
    return keras.Model(inp, keras.layers.Softmax()(x))


def _checkpoint(run: Path) -> tuple[dict, list[np.ndarray], list[np.ndarray]]:
    """State, model weights and optimizer variables of ``run``'s checkpoint (optimizer variable 0: the step)."""
    with np.load(run / "checkpoint.npz", allow_pickle=False) as z:
        state = json.loads(str(z["state"]))
        return (state, [z[f"w{i}"] for i in range(state["n_weights"])],
                [z[f"o{i}"] for i in range(state["n_opt_vars"])])


def _log(run: Path) -> list[dict]:
    lines = (run / "log.csv").read_text().splitlines()
    keys = lines[0].split(",")
    return [dict(zip(keys, line.split(","), strict=True)) for line in lines[1:]]


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edge.plates import BLANK, MAX_CHARS, READER_CLASSES
    from edge.recognize import encode_label
    from trainer.data import save_set

    rng = np.random.default_rng(0)
    labels = [np.concatenate([encode_label("".join(rng.choice(list("AB12"), 3)), READER_CLASSES, MAX_CHARS, BLANK),
                              encode_label("", READER_CLASSES, MAX_CHARS, BLANK)]) for _ in range(28)]
    path = tmp_path_factory.mktemp("resume_data") / "reader.npz"
    save_set(path, {"x": rng.integers(0, 256, (28, H, W), np.uint8), "y": np.stack(labels)}, {"kind": "reader"})
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_set: Path) -> SimpleNamespace:
    """An uninterrupted run, and the same run stopped at step 5 and resumed: what each session left."""
    import keras

    import trainer.train as T

    work = tmp_path_factory.mktemp("resume_runs")
    out = SimpleNamespace(whole=work / "whole", parts=work / "parts")
    restored: dict = {}
    real_restore = T._Run.restore

    def spy(self, model) -> None:  # what the resumed model holds the moment the checkpoint is restored
        real_restore(self, model)
        restored["weights"] = model.get_weights()
        restored["opt_vars"] = [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables]
        restored["iterations"] = int(keras.ops.convert_to_numpy(model.optimizer.iterations))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(T, "build_for", _small_reader)
        mp.setattr(T._Run, "restore", spy)
        out.whole_info = T.train("reader", tiny_set, out.whole, threads=1, verbose=0, **RUN_ARGS)
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            out.stopped_info = T.train("reader", tiny_set, out.parts, threads=1, verbose=0, max_steps=STOP_AT,
                                       **RUN_ARGS)
        out.stopped_stdout = stdout.getvalue()
        out.at_stop = _checkpoint(out.parts)
        out.model_after_stop = (out.parts / "model.keras").is_file()
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            out.resumed_info = T.train("reader", tiny_set, out.parts, threads=1, verbose=0)
        out.resume_stderr = stderr.getvalue()
    out.restored = restored
    return out


def test_a_stop_checkpoints_the_epoch_and_step_it_stopped_at(runs: SimpleNamespace) -> None:
    info = runs.stopped_info
    assert not info["finished"] and info["stopped_by"] == "max-steps"
    assert (info["epochs_run"], info["step_in_epoch"], info["global_step"]) == (1, 1, STOP_AT)
    state, _, opt_vars = runs.at_stop
    assert (state["epoch"], state["step"], state["global_step"]) == (1, 1, STOP_AT)
    assert int(opt_vars[0]) == STOP_AT  # the optimizer's own step counter, which the schedule reads
    assert runs.model_after_stop  # a stopped session still leaves a model to export
    assert f"step limit ({STOP_AT}) reached at epoch 2 step 1/{STEPS_PER_EPOCH}" in runs.stopped_stdout
    # Epochs are counted from 1 in every line (the final scoring used to print "epoch 0").
    assert "epoch 1: val plate accuracy" in runs.stopped_stdout and "epoch 0" not in runs.stopped_stdout


def test_resume_restores_weights_optimizer_state_epoch_and_step(runs: SimpleNamespace) -> None:
    _, weights, opt_vars = runs.at_stop
    assert f"resuming {runs.parts} at epoch 2 step 1" in runs.resume_stderr
    assert runs.restored["iterations"] == STOP_AT
    assert len(runs.restored["weights"]) == len(weights)
    for got, want in zip(runs.restored["weights"], weights, strict=True):  # BatchNorm's moving statistics included
        np.testing.assert_array_equal(got, want)
    for got, want in zip(runs.restored["opt_vars"], opt_vars, strict=True):  # Adam's moments and its step
        np.testing.assert_array_equal(got, want)
    info = runs.resumed_info
    assert info["finished"] and (info["epochs_run"], info["global_step"]) == (2, 2 * STEPS_PER_EPOCH)
    # The epoch counter went on from the stop: epoch 2's first step, then its rest, logged 1-based.
    rows = _log(runs.parts)
    assert [(r["epoch"], r["complete"], r["global_step"]) for r in rows] == [
        ("1", "1", "4"), ("2", "0", "5"), ("2", "1", "8")]


def test_stopped_and_resumed_run_ends_like_an_uninterrupted_one(runs: SimpleNamespace) -> None:
    whole_state, whole_w, whole_opt = _checkpoint(runs.whole)
    parts_state, parts_w, parts_opt = _checkpoint(runs.parts)
    assert whole_state["global_step"] == parts_state["global_step"] == 2 * STEPS_PER_EPOCH
    assert int(whole_opt[0]) == int(parts_opt[0]) == 2 * STEPS_PER_EPOCH
    # Same weights, same optimizer state, same batches in the same order (each epoch's order comes from
    # the seed and the epoch, not from what ran before): on a CPU the two runs compute the same numbers
    # and agree to the bit. The tolerance only leaves room for a multi-threaded reduction summing in
    # another order; a resume that loses anything (a batch order, Adam's moments, the schedule's step)
    # ends 0.1 or more apart on these weights.
    for a, b in zip(whole_w + whole_opt, parts_w + parts_opt, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_each_session_records_its_own_wall_time(runs: SimpleNamespace) -> None:
    info = runs.resumed_info
    sessions = info["sessions"]
    assert [s["ended"] for s in sessions] == ["max-steps", "finished"]
    assert [s["epochs"] for s in sessions] == [[1, 2], [2, 2]]
    assert [(s["start_step"], s["end_step"], s["steps"]) for s in sessions] == [(0, 5, 5), (5, 8, 3)]
    assert all(s["wall_s"] > 0 for s in sessions)
    assert info["wall_s_this_session"] == sessions[-1]["wall_s"]
    assert info["wall_s_total"] == pytest.approx(sum(s["wall_s"] for s in sessions), abs=0.11)
    assert json.loads((runs.parts / "train.json").read_text()) == info


def test_a_finished_run_is_left_alone_unless_asked_for_more_epochs(
        runs: SimpleNamespace, tiny_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import trainer.train as T

    monkeypatch.setattr(T, "build_for", _small_reader)
    run = tmp_path / "run"
    shutil.copytree(runs.whole, run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    info = T.train("reader", tiny_set, run, threads=1, verbose=0)
    assert "finished, 2 epochs done" in capsys.readouterr().err
    assert info["finished"] and info["global_step"] == 2 * STEPS_PER_EPOCH
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing retrained, nothing rewritten
    # A resumed run keeps its own arguments: another batch size is refused before anything changes.
    with pytest.raises(ValueError, match="--batch 16 differs from the run's own 8"):
        T.train("reader", tiny_set, run, batch=16, threads=1, verbose=0)
    more = T.train("reader", tiny_set, run, epochs=3, threads=1, verbose=0)
    assert "resuming" in capsys.readouterr().err
    assert more["finished"] and (more["epochs_run"], more["global_step"]) == (3, 3 * STEPS_PER_EPOCH)
    assert more["lr_decay_steps"] == 2 * STEPS_PER_EPOCH  # the schedule planned at the start: on at its floor
    assert [r["epoch"] for r in _log(run)][-1] == "3"
    assert len(more["sessions"]) == 2


def test_an_unresumable_run_folder_is_refused_and_fresh_starts_over(
        tiny_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trainer.train as T

    monkeypatch.setattr(T, "build_for", _small_reader)
    run = tmp_path / "old_run"
    run.mkdir()
    (run / "model.keras").write_bytes(b"a model of an older trainer")
    with pytest.raises(ValueError, match=r"no checkpoint\.npz to resume from.*--fresh"):
        T.train("reader", tiny_set, run, threads=1, verbose=0, **RUN_ARGS)
    assert (run / "model.keras").read_bytes() == b"a model of an older trainer"
    info = T.train("reader", tiny_set, run, threads=1, verbose=0, max_steps=1, fresh=True, **RUN_ARGS)
    assert (info["global_step"], len(info["sessions"])) == (1, 1)
    assert (run / "model.keras").read_bytes() != b"a model of an older trainer"
    # A damaged checkpoint is named, not taken for a fresh start.
    (run / "checkpoint.npz").write_bytes(b"half a checkpoint")
    with pytest.raises(ValueError, match=r"checkpoint\.npz: unreadable checkpoint"):
        T.train("reader", tiny_set, run, threads=1, verbose=0)


def test_cli_reports_a_finished_run_and_refuses_other_arguments(
        runs: SimpleNamespace, tiny_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(runs.whole, run)
    base = ["train", "--kind", "reader", "--data", str(tiny_set), "--run", str(run), "--threads", "1",
            "--verbose", "0"]
    assert main(base) == 0
    out = capsys.readouterr()
    assert "finished" in out.err and json.loads(out.out)["epochs_run"] == 2
    assert main([*base, "--lr", "0.1"]) == 2
    assert "error:" in capsys.readouterr().err


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))
    yield path, parser


def test_every_trainer_option_has_help_and_shows_its_default() -> None:
    seen = {}
    for path, parser in _parsers(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            text = formatter._expand_help(action)
            seen[(*path, action.option_strings[0])] = text
            assert action.help, f"{' '.join(path)} {action.option_strings[0]}: no help"
            if not action.required:
                assert "default" in text, f"{' '.join(path)} {action.option_strings[0]}: no default in {text!r}"
    assert "(default: 32 for a new run" in seen[("train", "--batch")]
    assert "(default: 20 for a new run" in seen[("train", "--epochs")]
    assert "(default: 55.0)" in seen[("train", "--minutes")]
    assert "(default: 2)" in seen[("synth", "data", "--workers")]
    assert {("train", "--max-steps"), ("train", "--fresh")} <= set(seen)


def test_train_help_runs_without_tensorflow() -> None:
    proc = subprocess.run([sys.executable, "-m", "trainer", "train", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "--max-steps N" in proc.stdout and "checkpoint.npz" in proc.stdout
    assert proc.stderr == ""


#: What TensorFlow 2.21 printed on this project's CPU-only workstation before training began.
TF_START = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796138428.508076   15246 port.cc:153] oneDNN custom operations are on.
I0000 00:00:1796138428.508391   15246 cudart_stub.cc:31] Could not find cuda drivers on your machine.
I0000 00:00:1796138428.583004   15246 cpu_feature_guard.cc:227] This TensorFlow binary is optimized.
To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the right flags.
E0000 00:00:1796138431.180554   15246 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)
"""
REAL = ("E0000 00:00:1796138431.2   15246 op_kernel.cc:1] OP_REQUIRES failed: out of memory\n"
        "W0000 00:00:1796138431.3   15246 loader.cc:9] a warning of substance\n"
        "UserWarning: something to read\n")


def test_tensorflow_start_noise_is_dropped_and_everything_else_kept() -> None:
    assert drop_tf_start_noise(TF_START) == ""
    assert drop_tf_start_noise(TF_START + REAL) == REAL


@pytest.mark.parametrize("visible, wanted", [("0", True), ("1,2", True), ("", False), ("-1", False)])
def test_gpu_wanted_follows_cuda_visible_devices(visible: str, wanted: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert gpu_wanted() is wanted


def test_trainer_starts_tensorflow_without_cuinit_lines_where_no_gpu_is_wanted() -> None:
    script = ("import os\n"
              "from trainer.cli import _stderr_filtered, start_tensorflow_quietly\n"
              "start_tensorflow_quietly()\n"
              "import tensorflow as tf\n"
              "tf.config.list_physical_devices()\n"
              "with _stderr_filtered():\n"
              f"    os.write(2, {(TF_START + REAL).encode()!r})\n")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"} | {"CUDA_VISIBLE_DEVICES": "-1"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    assert "cuInit" not in proc.stderr and "absl::InitializeLog" not in proc.stderr
    assert REAL in proc.stderr  # errors and warnings written through the filter still reach stderr


@pytest.mark.parametrize(("kind", "fine", "why"), [("reader", 16, "the detector's, not the reader's"),
                                                   ("detector", 0, "at least 1")])
def test_fine_channels_out_of_place_is_refused_before_the_data_is_read(tmp_path: Path, kind: str, fine: int,
                                                                       why: str) -> None:
    import trainer.train as T

    with pytest.raises(ValueError, match=f"--fine-channels {fine}: {why}"):
        T.train(kind, tmp_path / "no-such-set.npz", tmp_path / "run", fine=fine, threads=1, verbose=0)


def test_the_schedule_is_keras_cosine_decay_with_an_end_that_can_move() -> None:
    import keras

    from trainer.train import LR_FLOOR, _Cosine

    ours, keras_own = _Cosine(1e-3, 400, LR_FLOOR), keras.optimizers.schedules.CosineDecay(1e-3, 400, alpha=LR_FLOOR)
    for step in (0, 1, 150, 399, 400, 900):
        assert float(ours(step)) == pytest.approx(float(keras_own(step)), rel=1e-5)
    ours.steps.assign(200.0)
    assert float(ours(200)) == pytest.approx(1e-3 * LR_FLOOR)  # at the floor where the end moved to


@pytest.mark.parametrize(("seconds_per_step", "planned", "want"), [
    (1.0, 1000, 100),  # 1 step a second, 70 s left at step 30: the schedule ends at step 100
    (1.0, 60, 60),  # never past the plan
    (0.01, 1000, 1000),  # fast enough for the plan: it stands
])
def test_the_schedule_ends_when_the_time_does_at_the_rate_seen(seconds_per_step: float, planned: int,
                                                                want: int) -> None:
    from trainer.train import LR_FLOOR, _Cosine, _EndWithTime

    clock = [0.0]
    state = {"global_step": 0}
    schedule = _Cosine(1e-3, planned, LR_FLOOR)
    fit = _EndWithTime(schedule, state, deadline=100.0, planned=planned, clock=lambda: clock[0])
    for _ in range(_EndWithTime.WARMUP + _EndWithTime.EVERY):
        clock[0] += seconds_per_step
        state["global_step"] += 1
        fit.on_train_batch_end(0)
    assert int(schedule.steps.numpy()) == state["decay_steps_fitted"] == want


def test_a_run_fitted_to_its_time_ends_its_schedule_where_the_time_ran_out(tmp_path: Path, tiny_set: Path) -> None:
    import trainer.train as T

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(T, "build_for", _small_reader)
        info = T.train("reader", tiny_set, tmp_path / "run", threads=1, verbose=0, minutes=0.15,
                       end_with_time=True, **(RUN_ARGS | {"epochs": 100_000}))
    assert info["stopped_by"] == "minutes" and info["lr_decay_steps"] == 100_000 * STEPS_PER_EPOCH
    fitted = info["lr_decay_steps_fitted"]
    assert fitted is not None and fitted < info["lr_decay_steps"] / 100
    assert fitted <= 2 * info["global_step"] + 40  # the rate at its floor by about where the session stopped
