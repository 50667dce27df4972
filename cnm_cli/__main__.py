"""``python -m cnm_cli``: the same as the ``cnm`` console script."""

from cnm_cli.main import main

if __name__ == "__main__":
    main()
