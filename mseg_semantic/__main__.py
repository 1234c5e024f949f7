"""``python -m mseg_semantic ...`` is the ``mseg`` command (so ``torchrun -m mseg_semantic`` works too)."""

from mseg_semantic.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
