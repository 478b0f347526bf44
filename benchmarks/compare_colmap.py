"""flowmap vs COLMAP on the same frames: a shortcut for ``flowmap bench`` (same options).

    python benchmarks/compare_colmap.py ../shared/data/*/ -o bench-out
    python benchmarks/compare_colmap.py ../shared/data/fox --steps 200 --no-global
    python benchmarks/compare_colmap.py ../shared/data/*/ --no-flowmap   # COLMAP only

See ``flowmap bench --help`` and :func:`flowmap.bench.run_bench`.
"""

from __future__ import annotations

import sys

import typer

from flowmap.cli import app


def main(argv: list[str] | None = None) -> int:
    """Run ``flowmap bench ARGV``; return its exit code (2 on bad input)."""
    args = ["bench", *(sys.argv[1:] if argv is None else argv)]
    code = typer.main.get_command(app).main(args=args, prog_name="compare_colmap.py", standalone_mode=False)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
