"""``npgrad train``: the main job."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ..errors import ConfigError, Interrupted, RankLost, TrainingDiverged
from ..ops.device import DEVICES
from .common import INTERRUPTED, formatter, int_between, nonempty, print_error

TRAIN_EPILOG = """\
examples:
  npgrad train --dataset digits                      first run: embedded data, no download
  npgrad train                                       MNIST with the default preset (96%+)
  npgrad train --dataset ../shared/data/mnist-10k    any directory with the four IDX files
  npgrad train --dataset fashion-mnist --epochs 15 --plot
  npgrad train --preset exercise --dataset DIR       the exercise, exactly (50 full-batch epochs)
  npgrad train --hidden 512,256 --optimizer sgd --lr 0.05 --schedule cosine --seed 3
  npgrad train --out runs/a --resume                 continue an interrupted run exactly
  npgrad train --json --quiet                        one JSON summary line on stdout

output: OUT/metrics.jsonl (one JSON line per epoch), OUT/checkpoint.npz (after every
epoch, atomically), and with --plot OUT/curves.png and OUT/confusion.png."""

LAUNCHER_GRACE = 5.0  # seconds a rank that lost another waits for mpiexec to end it


def run(args: argparse.Namespace) -> int:
    from ..distributed import launched_by_mpi, world

    if args.workers is not None:
        if args.device != "cpu":
            raise ConfigError(
                "--workers trains data-parallel on the CPU: drop --device, or train on one GPU "
                "without --workers"
            )
        if launched_by_mpi():
            raise ConfigError("--workers starts mpiexec itself: drop it when running under mpiexec")
        from .workers import launch

        return launch(args.workers, args.argv)
    comm = world()  # several ranks under mpiexec/srun: data-parallel training
    if comm is None:
        return _train(args, None)
    from .workers import note_pid

    note_pid(comm.rank)
    try:
        return _train(args, comm)
    except (Interrupted, TrainingDiverged) as exc:
        if comm.root:  # every rank reached it at the same step; rank 0 says it
            raise
        return INTERRUPTED if isinstance(exc, Interrupted) else 2
    except RankLost as exc:
        # The rank that stopped is the news, and mpiexec saw it stop too: it ends this rank
        # within moments and --workers names that one in a line. Only if no end comes (an
        # MPI failure without a dead rank) does this rank say what it saw and end the run.
        try:
            time.sleep(LAUNCHER_GRACE)
        except KeyboardInterrupt:
            pass  # ending the run is what Ctrl-C asks for too
        return _end_every_rank(comm, str(exc))
    except BaseException as exc:  # this rank alone: say it once, end every rank now
        return _end_every_rank(
            comm, f"rank {comm.rank}: {exc}" if str(exc) else f"rank {comm.rank}: {exc!r}"
        )


def _end_every_rank(comm: Any, message: str) -> int:
    """Say ``message`` in one line and end every rank (none may wait in a collective)."""
    from .workers import note_said

    print_error(message)
    sys.stderr.flush()
    note_said(f"npgrad: error: {message}")
    comm.abort(2)
    return 2  # were MPI_Abort ever to return, main must not say it all again


def _train(args: argparse.Namespace, comm: Any) -> int:
    import json

    from ..app.allocator import keep_freed_memory
    from ..app.config import explicit_options
    from ..app.trainer import open_run, summary

    keep_freed_memory()  # this process is ours: reuse freed activations instead of page-faulting

    def log(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    t0 = time.perf_counter()
    trainer = open_run(
        args.preset,
        explicit_options(args),
        args.out,
        resume=args.resume,
        force=args.force,
        log=log,
        progress=False if args.quiet else None,
        compile=args.compile,
        comm=comm,
        device=args.device,
    )
    if comm is not None and not comm.root:
        trainer.fit(force=args.force)  # trains its shards; rank 0 reports
        return 0
    final = trainer.fit(force=args.force)
    if comm is not None:
        from .workers import note_finished

        note_finished()
    result = summary(trainer, final, time.perf_counter() - t0)
    if args.plot:
        log("plots: " + ", ".join(str(p) for p in _plot_run(trainer)))
    if args.json:
        print(json.dumps(result))
    else:
        log(
            f"done: test accuracy {result['test_accuracy']:.2%} after {result['epochs']} "
            f"epoch{'' if result['epochs'] == 1 else 's'} "
            f"({result['train_seconds']:.1f}s training); checkpoint {result['checkpoint']}"
        )
    return 0


def _plot_run(trainer: Any) -> list[Any]:
    from ..app import plots
    from ..app.trainer import evaluate

    data, out = trainer.data, trainer.out
    written = []
    if trainer.history:
        title = f"{data.dataset.name}: {trainer.model.describe()}"
        written.append(plots.curves(trainer.history, out / "curves.png", title=title))
    ev = evaluate(trainer.model, data.x_test, data.y_test)
    cm = ev.confusion(data.dataset.num_classes)
    written.append(plots.confusion(cm, data.dataset.classes, out / "confusion.png"))
    return written


def register(sub: argparse._SubParsersAction) -> None:
    from ..app.config import PRESETS, add_arguments, preset_summary

    p = sub.add_parser(
        "train",
        help="train a network on MNIST-like data (the main job)",
        description="Train a network on MNIST-like data, evaluating on the test set after\n"
        "every epoch, with checkpoints you can resume exactly.",
        epilog=TRAIN_EPILOG + "\n\n" + preset_summary(),
        formatter_class=formatter,
    )
    groups = add_arguments(p)
    groups["model"].add_argument(
        "--preset",
        choices=PRESETS,
        metavar="NAME",
        help=f"{', '.join(PRESETS)}: see below (default: default)",
    )
    g = p.add_argument_group("output")
    g.add_argument(
        "--out",
        "-o",
        metavar="DIR",
        type=nonempty("give a directory, e.g. runs/a"),
        help="output directory (default runs/DATASET-PRESET)",
    )
    g.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    g.add_argument("--force", action="store_true", help="start over even if OUT holds a checkpoint")
    g.add_argument(
        "--json", action="store_true", help="print one JSON summary line on stdout at the end"
    )
    g.add_argument("--plot", action="store_true", help="write OUT/curves.png and OUT/confusion.png")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress or epoch lines")
    g.add_argument(
        "--workers",
        type=int_between(1, 1024),
        metavar="K",
        help="train data-parallel in K processes on MPI (starts mpiexec; needs "
        "'pip install \"npgrad[mpi]\"'); or start 'mpiexec -n K npgrad train ...' yourself",
    )
    g.add_argument(
        "--no-compile",
        dest="compile",
        action="store_false",
        help="run every training step eagerly instead of replaying the recorded step "
        "(the same numbers, slower; see docs/compile.md)",
    )
    g.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="where to train: cpu, or cuda (an NVIDIA GPU, through CuPy: "
        "pip install 'npgrad[cuda12]'); checkpoints are the same either way",
    )
    p.set_defaults(func=run)
