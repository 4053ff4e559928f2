"""What stage 1 writes to VisualDL, and reading it back (tests, reports, `paddle-asr show-log`).

`visualdl --logdir exp` shows every run of a recipe side by side: each run logs to
exp/<name>/visualdl, a resumed run adds a new record file there.
"""

from __future__ import annotations

from pathlib import Path

# Per optimizer update, and per epoch.
STEP_SCALARS = ("train/loss", "train/loss_ctc", "train/loss_att", "train/lr", "train/grad_norm",
                "train/frames_per_second")
EPOCH_SCALARS = ("dev/loss", "dev/loss_ctc", "dev/loss_att", "dev/error_rate", "train/epoch_loss")


def read_visualdl(logdir: Path) -> tuple[dict[str, list[tuple[int, float]]], list[str]]:
    """({tag: [(step, value)] over every record file in order}, hyper-parameter names)."""
    from visualdl import LogReader

    scalars: dict[str, list[tuple[int, float]]] = {}
    hparams: list[str] = []
    for path in sorted(Path(logdir).glob("vdlrecords.*.log")):
        reader = LogReader(file_path=str(path))
        tags = reader.get_tags()
        for tag in tags.get("scalar", []):
            scalars.setdefault(tag, []).extend((int(v.id), float(v.value)) for v in reader.get_data("scalar", tag))
        for record in reader.get_data("hyper_parameters", "hparam") if "hyper_parameters" in tags else []:
            hparams += [h.name for h in record.hparam.hparamInfos if h.name not in hparams]
    return scalars, hparams
