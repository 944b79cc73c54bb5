"""`python -m maas`: the command line."""

from maas.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
