"""``python -m bioworld``: the same command line as the ``bioworld`` console script."""

from bioworld.cli import main

if __name__ == "__main__":
    main()
