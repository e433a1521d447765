"""``python -m hcframe``: the same CLI as the ``hcframe`` command (what torchrun launches)."""

from hcframe.cli import main

if __name__ == "__main__":
    main()
