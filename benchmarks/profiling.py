"""Where the time goes: torch.profiler over the reference or our paths (not part of `make bench`).

    python -m benchmarks.profiling infer --variant reference --size 512 [--top 15]
    python -m benchmarks.profiling train --variant ours --size 256 [--precision bf16-mixed]

Prints the operators with the most self CPU time (warm-up excluded) for one forward (infer) or
one optimizer step (train). Used to choose the changes recorded in docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

from benchmarks.common import SIZES, make_run, photo


def main(argv: list[str] | None = None) -> int:
    from pipeline.common.memory import reuse_freed_memory

    reuse_freed_memory()  # this worker's entry point (a no-op with $INSTYLE_REUSE_FREED_MEMORY=0: the reference)
    p = argparse.ArgumentParser(prog="python -m benchmarks.profiling")
    p.add_argument("what", choices=("infer", "train"))
    p.add_argument("--variant", default="reference")
    p.add_argument("--size", default="512")
    p.add_argument("--batch", type=int, default=None, help="default: 1 for infer, 4 for train")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--sort", default="self_cpu_time_total")
    p.add_argument("--precision", choices=("32-true", "bf16-mixed"), default="32-true", help="train --variant ours only")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="instyle-profile-") as tmp:
        run = make_run(Path(tmp) / "runs" / "bench")
        if args.what == "infer":
            from benchmarks.infer import build

            model, grad_mode = build(args.variant, run)
            h, w = SIZES[args.size]
            x = photo(args.batch or 1, h, w)

            def once() -> None:
                with grad_mode():
                    model(x)

            once()  # warm-up
        else:
            from benchmarks.common import ROOT
            from benchmarks.train_step import ours_step, reference_step

            style = ROOT.parent / "shared" / "assets" / "styles" / "starry_night.jpg"
            if not style.exists():
                from PIL import Image
                style = Path(tmp) / "style.png"
                Image.fromarray((photo(1, 256, 256)[0].permute(1, 2, 0).numpy() * 255).astype("uint8")).save(style)
            step = reference_step(run, style) if args.variant == "reference" else ours_step(run, style, args.precision)
            size = int(args.size)
            x = photo(args.batch or 4, size, size)
            step(x)  # warm-up

            def once() -> None:
                step(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            once()
    print(prof.key_averages().table(sort_by=args.sort, row_limit=args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
