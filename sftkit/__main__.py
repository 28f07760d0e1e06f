"""`python -m sftkit`: what `torchrun -m sftkit train ...` and `accelerate launch -m sftkit` run."""

from sftkit.cli import main

if __name__ == "__main__":
    main()
