"""Command line: ``python -m sgld_tuner demo [--n-train N] [--n-outer K] [--out FILE]``."""
from __future__ import annotations

import sys


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m sgld_tuner demo [--n-train N] [--n-outer K] [--out FILE]\n\n"
              "  demo   per-weight L1 by SGLDHyperTuner next to GridSearchCV on digits")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "demo":
        from .demo import main as demo_main

        demo_main(rest)
        return 0
    print(f"unknown command {command!r}; try 'python -m sgld_tuner demo'", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
