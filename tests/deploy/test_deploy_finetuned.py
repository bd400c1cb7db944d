"""A fine-tuned model set (what `trainer finetune --out DIR` writes) installs through update.sh as any model set:
verified against its sha256, switched in, health-checked, and rolled back when the check fails."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from deploytools import install, link, script, write_config
from harness import Broker


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory):
    b = Broker(tmp_path_factory.mktemp("broker")).start()
    yield b
    b.stop()


def finetuned_set(write_model_set: Callable[..., None], models: Path, dest: Path, note: str) -> Path:
    """A model set as `trainer finetune` leaves it: written by its own writer (the reader with its note, the card),
    with the run's work folder inside."""
    write_model_set(dest, models / "detector.tflite", models / "reader.tflite",
                    card=f"# Fine-tuned model set\n\n{note}\n", note=note)
    (dest / "work" / "reader_run").mkdir(parents=True)
    (dest / "work" / "finetune.json").write_text(json.dumps({"format": 1}))
    (dest / "work" / "reader_run" / "checkpoint.npz").write_bytes(b"\0" * 4096)
    return dest


def test_a_fine_tuned_set_installs_and_one_that_fails_its_check_is_rolled_back(
        untrained_models: Path, broker: Broker, tmp_path: Path) -> None:
    from trainer.finetune import write_model_set  # the trainer's: skipped where only the edge is installed

    root = tmp_path / "root"
    proc = install(root, untrained_models)
    assert proc.returncode == 0, proc.stdout
    write_config(root, broker.port)
    shipped = link(root / "opt/edge-anpr/models/current")

    good = finetuned_set(write_model_set, untrained_models, tmp_path / "ft1", "fine-tuned on 40 plates")
    proc = script("update.sh", root, "--models", str(good))
    assert proc.returncode == 0, proc.stdout
    assert "ok    " in proc.stdout and "reader.tflite: sha256" in proc.stdout
    assert "health: 4 of 4 checks passed" in proc.stdout
    current = link(root / "opt/edge-anpr/models/current")
    installed = root / "opt/edge-anpr/models" / current
    assert current != shipped
    assert json.loads((installed / "reader.json").read_text())["note"] == "fine-tuned on 40 plates"
    assert (installed / "MODEL_CARD.md").read_text() == (good / "MODEL_CARD.md").read_text()
    assert not (installed / "work").exists()  # the run's state stays on the workstation

    # A second fine-tuned set whose files match their hashes but whose reader cannot load: switched in, the
    # health check fails, and the first fine-tuned set is current again.
    bad = finetuned_set(write_model_set, untrained_models, tmp_path / "ft2", "fine-tuned again")
    meta = json.loads((bad / "reader.json").read_text())
    meta["input"]["shape"] = [1, 32, 96, 1]
    (bad / "reader.json").write_text(json.dumps(meta))
    proc = script("update.sh", root, "--models", str(bad))
    assert proc.returncode == 3, proc.stdout
    out = proc.stdout
    assert "switching" in out and "FAIL  models:" in out and "input does not match its metadata" in out
    assert out.index("health check failed: rolling back") < out.index("rolled back:")
    assert "health: 4 of 4 checks passed" in out.split("rolling back")[1]
    assert link(root / "opt/edge-anpr/models/current") == current
