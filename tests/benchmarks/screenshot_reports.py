"""Screenshots of rnnpipe's two HTML pages, rendered by headless Chromium, to look at.

Run (Debian's ``chromium`` package, or ``--chromium PATH``):

    python tests/benchmarks/screenshot_reports.py [--rows 200] [--out DIR]

Builds, with ``bench_explain.py``'s model (the default classifier trained on the
movie-disjoint IMDB split, trained once when absent) and ``--rows`` reviews of its
held-out films drawn at random (seed 0):

* ``explain.html``: ``rnnpipe explain --html`` (every token shaded by its attribution, the
  words and phrases that push toward each class);
* ``evaluate.html``: ``rnnpipe evaluate --html`` (metrics, confusion matrix, ROC curve,
  reliability diagram, training curves, the worst mistakes explained);

and saves a full-width PNG of each (``--window-size``) next to it in ``--out`` (default
``tests/benchmarks/_gen/screenshots/``). Prints the paths and sizes.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_explain  # noqa: E402


def render(chromium: str, page: Path, png: Path, size: str) -> None:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={size}",
               f"--screenshot={png}", page.as_uri()]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    if not png.is_file():
        raise SystemExit(f"Chromium wrote no screenshot of {page}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--out", type=Path, default=HERE / "_gen" / "screenshots")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--window-size", default="1280,2400", help="WIDTH,HEIGHT in pixels")
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    ap.add_argument("--chromium", default=found, help="the browser (default: on PATH)")
    args = ap.parse_args()
    if not args.chromium:
        raise SystemExit("no Chromium found: install Debian's chromium package or pass --chromium")

    import pyarrow as pa
    import pyarrow.parquet as pq

    model = bench_explain.ensure_model(args.threads)
    table = bench_explain.held_out(args.rows, ("review", "label"))
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "reviews.parquet"
        ids = pa.array(range(table.num_rows), pa.int64())
        pq.write_table(table.append_column("id", ids), data)
        pages = {"explain": args.out / "explain.html", "evaluate": args.out / "evaluate.html"}
        common = ["--model", str(model), "--threads", str(args.threads)]
        run = [sys.executable, "-m", "pipeline"]
        subprocess.run([*run, "explain", str(data), "-o", str(Path(tmp) / "explained.parquet"),
                        "--html", str(pages["explain"]), "--rows", str(args.rows), "-q",
                        *common], check=True, env=bench_explain._env())  # fmt: skip
        subprocess.run([*run, "evaluate", str(data), "--html", str(pages["evaluate"]), *common],
                       check=True, env=bench_explain._env(), stdout=subprocess.DEVNULL)  # fmt: skip
    for name, page in pages.items():
        png = page.with_suffix(".png")
        render(args.chromium, page, png, args.window_size)
        print(f"{name}: {page} ({page.stat().st_size / 1e6:.2f} MB), "
              f"{png} ({png.stat().st_size / 1e3:.0f} kB)")  # fmt: skip


if __name__ == "__main__":
    main()
