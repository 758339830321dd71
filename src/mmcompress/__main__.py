"""`python -m mmcompress` (also what `torchrun -m mmcompress` runs)."""

from mmcompress.cli import main

if __name__ == "__main__":
    main()
